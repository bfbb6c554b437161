"""CLI: show, run (interp; attention on cpu), compile (sm_90 bundle + manifest), and clear errors."""

import json

from tilefuse.cli import main

SMALL = ["--set", "T=3", "--set", "H=32", "--set", "I=48"]


def test_show_prints_every_pass(capsys):
    assert main(["show", "examples/decoder_mlp.tf", *SMALL]) == 0
    out = capsys.readouterr().out
    for stage in ("== source ==", "== canonicalize ==", "== fuse ==", "== partition =="):
        assert stage in out


def test_run_interp_checks_reference(capsys):
    assert main(["run", "examples/decoder_mlp.tf", "--target", "interp", *SMALL]) == 0
    assert "y: max |err| vs reference" in capsys.readouterr().out


def test_run_cpu_attention_example(capsys):
    # the attention forward's TVM template: the LServe-style example runs and checks on cpu
    assert main(["run", "examples/streaming_attention.tf", "--target", "cpu", "--set", "S=64", "--set", "D=32"]) == 0
    assert "out: max |err| vs reference" in capsys.readouterr().out


def test_compile_writes_bundle(tmp_path, capsys):
    assert main(["compile", "examples/decoder_mlp.tf", "--target", "sm_90", "--out", str(tmp_path), *SMALL]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["target"] == "sm_90" and len(m["kernels"]) == 4
    for k in m["kernels"]:
        (b,) = k["binaries"]["sm_90"]
        assert (tmp_path / b["cubin"]).stat().st_size > 0
        assert (tmp_path / k["source"]).read_text().startswith("# tilefuse generated")
        assert k["grid"] and k["config"] and b["resources"]["registers"] > 0


def test_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.tf"
    bad.write_text("graph g {\n  %x = input f16[4]\n  %y = pointwise(%x) {expr=(exp $0:f32)}\n  output y = %y\n}\n")
    assert main(["show", str(bad)]) == 2  # one error line, the same exit code as every other bad input
    err = capsys.readouterr().err
    assert err.startswith("error: ")  # then the offending source line and a caret
    assert "bad.tf:3:" in err and "reads it as f32" in err
    assert main(["run", "examples/decoder_mlp.tf", "--target", "sm_99", *SMALL]) == 2
    assert "unknown target 'sm_99'" in capsys.readouterr().err
