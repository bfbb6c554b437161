"""Bundles of kernels with more than inputs, outputs and workspace: attention's compile-time block lists
stored as constants (files with sha256, embedded in NAME.c, uploaded by NAME_load), zero-filled workspaces
cleared with cuMemsetD8Async in NAME_run; launch-time block lists and host steps refused with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.cli import main
from tilefuse.export import ExportError, export_bundle, verify_bundle
from tilefuse.export.plan import check_expressible
from tilefuse.ir.text import load_graph
from tilefuse.schedule.config import Config

from test_export import FIXTURES, HAS_DRIVER, cuda_include

ATTN_SIZES = {"S": 1024, "D": 64}


@pytest.fixture(scope="module")
def attention(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("attention_bundle")
    g = load_graph("examples/streaming_attention.tf", ATTN_SIZES)
    export_bundle(g, ["sm_80", "sm_90"], out, name="attn", db=None, cost_model=None, sizes=ATTN_SIZES)
    return out


def test_block_lists_are_stored_as_checked_constants(attention):
    m = verify_bundle(attention)
    g = load_graph("examples/streaming_attention.tf", ATTN_SIZES)
    for v in m["variants"]:
        assert [c["name"] for c in v["constants"]] == ["kv_ptr", "kv_nfull", "kv_idx", "head_pat"]
        cg = tf.compile(g, target=v["arch"], aot=False, db=None, cost_model=None)
        want = cg.kernels[0].spec.constant_aux(cg.kernels[0].config)
        for c, arr in zip(v["constants"], want):
            data = (attention / c["file"]).read_bytes()
            assert c["file"] in m["files"] and data == arr.tobytes() and c["bytes"] == len(data)
            assert c["shape"] == list(arr.shape) and c["dtype"] == "i32"
        args = v["launches"][0]["args"]
        assert [(a["role"], a["index"]) for a in args[-4:]] == [("constant", i) for i in range(4)]
    # two head patterns at S=1024: dense causal heads and streaming heads (sink + window)
    head_pat = np.frombuffer((attention / m["variants"][0]["constants"][3]["file"]).read_bytes(), np.int32)
    assert sorted(set(head_pat.tolist())) == [0, 1]


def test_altered_constant_is_refused(attention, tmp_path):
    b = tmp_path / "copy"
    shutil.copytree(attention, b)
    f = b / "k0_attention.kv_idx.sm_90.bin"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(ExportError, match=r"kv_idx.sm_90.bin: sha256 .* altered after export"):
        verify_bundle(b)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_attention_c_api_builds_with_werror_and_fails_cleanly_without_driver(attention, tmp_path):
    c_source = (attention / "attn.c").read_text()
    assert "tf_upload_constants" in c_source and "static const tf_constant tf_constants_v1[]" in c_source
    exe = tmp_path / "load_check"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-isystem", str(cuda_include()),
             f"-I{attention}"]
    cmd = ["gcc", *flags, '-DBUNDLE_H="attn.h"', "-DPREFIX=attn", str(FIXTURES / "load_check.c"),
           str(attention / "attn.c"), "-ldl", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert (lines["run_null"], lines["unload_null"], lines["workspace"]) == ("400", "0", "0")
    if not HAS_DRIVER:
        assert (lines["load"], lines["handle_null"]) == ("100", "1")  # CUDA_ERROR_NO_DEVICE, no crash


def test_zero_filled_workspace_is_cleared_before_its_kernels_first_launch(tmp_path):
    g = load_graph("examples/gcn_layer.tf", {})
    export_bundle(g, ["sm_80"], tmp_path, name="gcn", db=None, cost_model=None)
    v = json.loads((tmp_path / "manifest.json").read_text())["variants"][0]
    counts = next(r for r in v["workspace"] if r["what"].endswith(".counts"))
    assert counts["zeroed"] and not any(r["zeroed"] for r in v["workspace"] if r is not counts)
    zero = [(ln["function"], ln["zero_before"]) for ln in v["launches"] if ln["zero_before"]]
    assert zero == [(v["launches"][1]["function"], [[counts["offset"], counts["bytes"]]])]
    assert v["launches"][1]["function"].endswith("_count")  # the binning's first launch
    assert f"tf_zero_v0_l1[] = {{{{{counts['offset']}, {counts['bytes']}}}}}" in (tmp_path / "gcn.c").read_text()


def test_block_lists_computed_from_the_inputs_are_refused():
    b = tf.GraphBuilder("topk")
    q, k, v = (b.input(n, (1, 2, 64, 32), "f16") for n in "qkv")
    idx = b.input("idx", (1, 2, 2, 2), "i32")
    out = tf.attention(q, k, v, mask_mod=tf.topk_block_mask(3, idx, 32, 32), extra=[idx])
    b.output("out", out)
    g = b.build()
    name = tf.compile(g, target="sm_80", aot=False, db=None, cost_model=None).kernels[0].spec.name
    cg = tf.compile(g, target="sm_80", aot=False, db=None, cost_model=None,
                    configs={name: Config(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)})
    with pytest.raises(ExportError, match=r"computes its auxiliary tensors \['head_pat', 'kv_idx', 'kv_nfull', "
                                          r"'kv_ptr'\] from its inputs at launch time \(a data-dependent mask\)"):
        check_expressible(cg)


def test_host_steps_are_refused_before_building(tmp_path, capsys):
    argv = ["export", "examples/splat_render.tf", "--targets", "sm_90", "--out", str(tmp_path), "--set", "N=64",
            "--db", "none", "--costmodel", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has host steps" in err and "need Python" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_cpu_bundle_of_attention_is_refused_by_name(tmp_path):
    # the cpu kernel takes its block lists as arguments after the outputs, which a CPU bundle cannot pass yet
    g = load_graph("examples/streaming_attention.tf", {"S": 64, "D": 32})
    with pytest.raises(ExportError, match=r"k0_attention \(attention\) takes the auxiliary arrays .*kv_ptr"):
        export_bundle(g, ["cpu"], tmp_path, name="attn", db=None, cost_model=None, sizes={"S": 64, "D": 32})
