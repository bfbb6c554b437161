"""Dynamic sizes at the command line: --buckets, and the bad inputs (a size out of range, buckets for a static
graph, also in a GPU export, --out of a dynamic graph) each end with one `error:` line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tilefuse.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "decoder_mlp.tf")
SMALL = ["--set", "H=64", "--set", "I=96"]


def _one_error(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    assert [ln for ln in err.splitlines() if "error:" in ln] == [err.splitlines()[0]], err  # a parse error adds a caret
    for w in words:
        assert w in err, (w, err)


def test_run_a_dynamic_graph_with_buckets(capsys):
    assert main(["run", EXAMPLE, *SMALL, "--target", "interp", "--buckets", "4,64"]) == 0
    out = capsys.readouterr().out
    assert "dynamic sizes T=dyn[1..8192, hint=16]: 3 bucket(s)" in out and "y: max |err| vs reference" in out


@pytest.mark.parametrize("argv, words", [
    (["show", EXAMPLE, "--set", "T=9000"], ("T=9000 (size override) is outside its declared range 1..8192",)),
    (["run", EXAMPLE, *SMALL, "--target", "interp", "--buckets", "0,3"], ("--buckets expects positive integers",)),
    (["run", EXAMPLE, *SMALL, "--set", "T=4", "--target", "interp", "--buckets", "4"],
     ("buckets= is for graphs with dynamic sizes",)),
    (["compile", EXAMPLE, *SMALL, "--target", "sm_90", "--out", "OUT"], ("--out writes binaries for static sizes",
                                                                          "T=dyn[1..8192, hint=16]", "--set")),
    (["export", EXAMPLE, *SMALL, "--set", "T=4", "--targets", "sm_90", "--buckets", "4", "--out", "OUT"],
     ("buckets= is for graphs with dynamic sizes",)),
])
def test_bad_dynamic_inputs_end_with_one_error_line(argv, words, capsys, tmp_path):
    _one_error([str(tmp_path / "o") if a == "OUT" else a for a in argv], capsys, *words)
    assert not (tmp_path / "o").exists()
