"""Malformed `.tf` files and options at the command line: exactly one `error:` line on stderr and exit code
2, never a traceback; `run` keeps exit code 1 for a numerical FAIL, so scripts can tell the two apart."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from tilefuse.cli import main
from tilefuse.ir.text import MAX_EXPR_DEPTH

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "decoder_mlp.tf")
SMALL = ["--set", "T=4", "--set", "H=64", "--set", "I=96"]
CLI_MAIN = importlib.import_module("tilefuse.cli.main")  # the module; tilefuse.cli.main is the function
HEAD = "graph g(T=4) {\n  %x = input f32[T, 8]\n"


def _one_error(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if "error:" in ln] == [err.splitlines()[0]], err
    assert err.startswith("error: "), err
    for w in words:
        assert w in err, (w, err)
    return err


def _file(tmp_path: Path, text: str | bytes) -> str:
    p = tmp_path / "g.tf"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return str(p)


@pytest.mark.parametrize("body, words", [
    ("  %s = reduce(%x) {op=\"sum\", axes=[1], keepdim=\"false\"}\n  output y = %s\n}\n",
     ["g.tf:3:8:", "keepdim must be true or false, got 'false'"]),
    ("  %s = reduce(%x) {op=\"sum\", axes=[1], keep_dim=true}\n  output y = %s\n}\n",
     ["unknown attribute 'keep_dim'", "reduce accepts: axes, keepdim, op"]),
    ("  %s = reduce(%x) {op=\"sum\", axes=[1.5]}\n  output y = %s\n}\n", ["axes must be an integer"]),
    ("  %s = slice(%x) {starts=[0, 0.5], stops=[4, 8]}\n  output y = %s\n}\n", ["starts must be a list of integers"]),
    ("  %s = pointwise(%x) {expr=(add $0:f32 (load 1.5 f32))}\n  output y = %s\n}\n", ["an operand index"]),
    ("  %s = pointwise(%x) {expr=(neg $0:f32)}\n  output x = %s\n}\n", ["output 'x' has the name of an input"]),
    ("  %s = pointwise(%x) {expr=" + "(neg " * 5000 + "$0:f32" + ")" * 5000 + "}\n  output y = %s\n}\n",
     [f"nested deeper than the limit of {MAX_EXPR_DEPTH} levels"]),
])
def test_malformed_files_give_one_error_line(tmp_path, capsys, body, words):
    path = _file(tmp_path, HEAD + body)
    for cmd in (["show", path], ["run", path, "--target", "cpu"]):
        _one_error(cmd, capsys, *words)


def test_header_float_and_non_utf8_and_endless_files(tmp_path, capsys):
    good = HEAD + "  %s = pointwise(%x) {expr=(neg $0:f32)}\n  output y = %s\n}\n"
    _one_error(["show", _file(tmp_path, good.replace("T=4", "T=1.5"))], capsys, "the size of T", "'1.5'")
    _one_error(["show", _file(tmp_path, good.encode() + b"# \xff\n")], capsys, "g.tf:6:3:", "not UTF-8")
    if os.path.exists("/dev/zero"):
        _one_error(["show", "/dev/zero"], capsys, "64 MiB limit")
    _one_error(["show", str(tmp_path)], capsys, str(tmp_path))  # a directory
    _one_error(["show", str(tmp_path / "missing.tf")], capsys, "no such file")


@pytest.mark.parametrize("opt", ["T=²", "T=1.5", "T", "T=", "=4", "T=0", "T=-1", "T=٣"])
def test_bad_set_options(capsys, opt):
    _one_error(["show", EXAMPLE, "--set", opt], capsys, "--set expects NAME=INT", repr(opt))


def test_set_naming_no_parameter(capsys):
    _one_error(["show", EXAMPLE, "--set", "Q=4"], capsys, "name no header parameter")


def test_empty_out_is_an_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_error(["compile", EXAMPLE, *SMALL, "--target", "cpu", "--db", "none", "--out", ""], capsys,
               "--out needs a directory path")
    _one_error(["compile", EXAMPLE, *SMALL, "--target", "cpu", "--db", "none", "--out", "  "], capsys, "--out")
    assert list(tmp_path.iterdir()) == []


def test_run_fail_is_exit_1_and_bad_input_exit_2(monkeypatch, capsys, tmp_path):
    # A FAIL needs a wrong kernel; the check's verdict is replaced rather than breaking a real kernel.
    monkeypatch.setattr(CLI_MAIN, "check_against_reference", lambda cg, seed=0: [("y", 1.0, 1e-3, False)])
    assert main(["run", EXAMPLE, *SMALL, "--target", "cpu"]) == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and "error:" not in out.err
    _one_error(["run", _file(tmp_path, "graph g {"), "--target", "cpu"], capsys, "g.tf:1:10:")


@pytest.mark.parametrize("cmd", ["run", "compile", "show"])
def test_help_documents_the_exit_codes(capsys, cmd):
    with pytest.raises(SystemExit) as exit_:
        main([cmd, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 ok; 1 a result outside the reference tolerance (run); 2 bad input" in out
