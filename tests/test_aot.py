"""AOT Triton builds for sm_80 / sm_90 on a machine without a GPU, and their static resource reports."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("triton")

from tilefuse.codegen.aot import AOTError, TritonBinary, build_key_payload, build_triton  # noqa: E402
from tilefuse.codegen.cache import BuildCache  # noqa: E402
from tilefuse.codegen.resources import ResourceReport, parse_resource_usage, parse_sass_mix  # noqa: E402

MATMUL_SRC = '''
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * N + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc.to(tl.float16))
'''

POINTWISE_SRC = '''
import triton
import triton.language as tl


@triton.jit
def add_relu(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)
'''

MM_SIG = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32"}
MM_CONST = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}
MM_DIV = ("a_ptr", "b_ptr", "c_ptr", "K", "N")
PW_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}


def _mm(arch: int, **kw: Any) -> TritonBinary:
    return build_triton(MATMUL_SRC, "matmul_kernel", MM_SIG, MM_CONST, arch=arch, num_warps=4, num_stages=3,
                        divisible_by_16=MM_DIV, **kw)


@pytest.fixture(scope="module")
def mm90() -> TritonBinary:
    return _mm(90)


@pytest.fixture(scope="module")
def mm80() -> TritonBinary:
    return _mm(80)


def test_sm90_matmul_uses_hgmma(mm90: TritonBinary) -> None:
    assert mm90.arch == 90
    assert mm90.fn_name == "matmul_kernel"
    assert len(mm90.cubin) > 0
    assert ".target sm_90" in mm90.ptx
    assert mm90.resources.registers > 0
    assert mm90.resources.hgmma > 0
    assert mm90.resources.uses_hgmma
    assert mm90.shared_mem_bytes > 0
    assert mm90.resources.dynamic_shared_bytes == mm90.shared_mem_bytes
    assert mm90.num_warps == 4 and mm90.num_stages == 3
    assert mm90.compile_seconds > 0


def test_sm80_matmul_uses_hmma_not_hgmma(mm80: TritonBinary) -> None:
    assert len(mm80.cubin) > 0
    assert ".target sm_80" in mm80.ptx
    assert mm80.resources.registers > 0
    assert mm80.resources.hmma > 0
    assert mm80.resources.hgmma == 0
    assert not mm80.resources.uses_hgmma
    # Ampere pipelining uses cp.async.
    assert mm80.resources.ldgsts > 0


def test_pointwise_has_no_mma() -> None:
    for arch in (80, 90):
        b = build_triton(POINTWISE_SRC, "add_relu", PW_SIG, {"BLOCK": 1024}, arch=arch, num_warps=4, num_stages=1)
        assert len(b.cubin) > 0
        assert b.resources.registers > 0
        assert b.resources.hgmma == 0 and b.resources.hmma == 0
        assert not b.resources.uses_tensor_cores
        assert b.resources.total_instructions > 0


def test_build_ignores_triton_interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    import triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton.knobs.runtime.interpret
    # A source unique to this test so the module is imported while TRITON_INTERPRET=1 is set.
    src = POINTWISE_SRC + "\n# interpret-test\n"
    b = build_triton(src, "add_relu", PW_SIG, {"BLOCK": 256}, arch=90, num_warps=4, num_stages=1)
    assert len(b.cubin) > 0
    # The setting is restored for the rest of the process.
    assert os.environ["TRITON_INTERPRET"] == "1"
    assert triton.knobs.runtime.interpret


def test_build_in_a_process_that_imported_triton_interpreted(tmp_path: Path) -> None:
    # The usual test setup: TRITON_INTERPRET=1 before triton is imported, so triton's own @jit
    # library is interpreted and the build must go through a clean subprocess.
    script = tmp_path / "build.py"
    script.write_text(
        "import json, sys\n"
        "import triton.language.standard as std\n"
        "from triton.runtime.jit import JITFunction\n"
        "assert not isinstance(std.zeros, JITFunction)\n"
        "from tilefuse.codegen.aot import build_triton\n"
        "src, sig, const, div = json.loads(sys.argv[1])\n"
        "b = build_triton(src, 'matmul_kernel', sig, const, arch=90, num_warps=4, num_stages=3, divisible_by_16=div)\n"
        "print(json.dumps([len(b.cubin), b.resources.hgmma, b.from_cache]))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    arg = json.dumps([MATMUL_SRC, MM_SIG, MM_CONST, list(MM_DIV)])
    proc = subprocess.run([sys.executable, str(script), arg], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    cubin_len, hgmma, from_cache = json.loads(proc.stdout.strip().splitlines()[-1])
    assert cubin_len > 0 and hgmma > 0 and not from_cache


def test_resource_report_json_round_trip(mm90: TritonBinary) -> None:
    r = mm90.resources
    assert ResourceReport.from_json(r.to_json()) == r
    with pytest.raises(ValueError):
        ResourceReport.from_json('{"schema": 999}')


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(AOTError, match="BLOCK"):
        build_triton(POINTWISE_SRC, "add_relu", PW_SIG, {}, arch=90, num_warps=4, num_stages=1)
    with pytest.raises(AOTError, match="nope"):
        build_triton(POINTWISE_SRC, "nope", PW_SIG, {"BLOCK": 64}, arch=90, num_warps=4, num_stages=1)
    with pytest.raises(AOTError, match="divisibility"):
        build_triton(POINTWISE_SRC, "add_relu", {**PW_SIG, "n": "fp32"}, {"BLOCK": 64}, arch=90, num_warps=4,
                     num_stages=1, divisible_by_16=("n",))


BASE: dict[str, Any] = {
    "source": MATMUL_SRC, "fn_name": "matmul_kernel", "signature": MM_SIG, "constexprs": MM_CONST,
    "arch": 90, "num_warps": 4, "num_stages": 3, "divisible_by_16": MM_DIV,
}


def _key(**changes: Any) -> str:
    args = {**BASE, **changes}
    payload = build_key_payload(args["source"], args["fn_name"], args["signature"], args["constexprs"],
                                arch=args["arch"], num_warps=args["num_warps"], num_stages=args["num_stages"],
                                divisible_by_16=args["divisible_by_16"])
    return BuildCache("/nonexistent").key(payload)


def test_key_is_stable() -> None:
    assert _key() == _key()
    assert _key(divisible_by_16=tuple(reversed(MM_DIV))) == _key()


def test_key_changes_with_source() -> None:
    assert _key(source=MATMUL_SRC + "\n") != _key()


def test_key_changes_with_fn_name() -> None:
    assert _key(fn_name="other") != _key()


def test_key_changes_with_constexprs() -> None:
    assert _key(constexprs={**MM_CONST, "BLOCK_K": 64}) != _key()


def test_key_changes_with_arch() -> None:
    assert _key(arch=80) != _key()


def test_key_changes_with_num_warps() -> None:
    assert _key(num_warps=8) != _key()


def test_key_changes_with_num_stages() -> None:
    assert _key(num_stages=4) != _key()


def test_key_changes_with_signature() -> None:
    assert _key(signature={**MM_SIG, "a_ptr": "*bf16"}) != _key()


def test_key_changes_with_divisibility() -> None:
    assert _key(divisible_by_16=("a_ptr",)) != _key()


def test_key_changes_with_triton_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import triton

    before = _key()
    monkeypatch.setattr(triton, "__version__", "0.0.0")
    assert _key() != before


def test_parsers_on_canned_output() -> None:
    usage = "Resource usage:\n Common:\n  GLOBAL:0\n Function k:\n  REG:255 STACK:344 SHARED:1024 LOCAL:0 TEXTURE:0\n"
    assert parse_resource_usage(usage) == {"k": {"REG": 255, "STACK": 344, "SHARED": 1024, "LOCAL": 0, "TEXTURE": 0}}
    sass = (
        "        /*0100*/                   HGMMA.64x128x16.F32 R24, gdesc[UR4], RZ ;   /* 0x0 */\n"
        "                                                                                /* 0x0 */\n"
        "        /*0110*/              @!P0 STL [R1+0x4], R2 ;   /* 0x0 */\n"
        "        /*0120*/              @UP1 LDL R3, [R1+0x4] ;   /* 0x0 */\n"
    )
    counts, total = parse_sass_mix(sass)
    assert (counts["HGMMA"], counts["STL"], counts["LDL"], total) == (1, 1, 1, 3)


@pytest.mark.parametrize("op, field", [("IGMMA.64x64x32.S8.S8", "igmma"), ("QGMMA.64x64x32.F32.E4M3.E4M3", "qgmma"),
                                       ("IMMA.16816.S8.S8", "imma"), ("HMMA.16816.F32", "hmma")])
def test_every_mma_kind_counts_as_tensor_cores(op: str, field: str) -> None:
    """int8 and fp8 kernels on sm_90 issue IGMMA/QGMMA, not HGMMA: they use tensor cores all the same."""
    zeros = {f.name: 0 for f in dataclasses.fields(ResourceReport)}
    counts, _ = parse_sass_mix(f"        /*0100*/                   {op} R24, gdesc[UR4], RZ ;\n")
    r = ResourceReport(**{**zeros, field: counts[op.split(".")[0]]})
    assert getattr(r, field) == 1 and r.uses_tensor_cores
    assert r.uses_hgmma == field.endswith("gmma")
    assert not ResourceReport(**zeros).uses_tensor_cores
    assert ResourceReport.from_json(r.to_json()) == r and r.to_dict()["schema"] == 2
    with pytest.raises(ValueError, match="schema 1"):
        ResourceReport.from_dict({**r.to_dict(), "schema": 1})  # a report cached before igmma was counted


# ---- attention register estimates (constraints()) against real builds ------------------------------------
# A few configs of the sweep the estimates were fitted to (FWD_REGISTERS in kernels/attention.py, BWD_REGISTERS
# in kernels/attention_bwd.py), with what the build measured: spilling configs the earlier estimates accepted
# (post_mod kernels and 128 x 128 tiles on sm_80), non-spilling ones just below the limits, and a backward pair
# at one config that only score_mod's derivative tile tells apart (it costs sm_90 about 12 registers).
REGISTER_CASES = [  # kernel, arch, hdim, BLOCK_M, BLOCK_N, num_warps, num_stages, spills
    ("post", "sm_80", 64, 64, 128, 4, 2, True),
    ("post", "sm_80", 64, 128, 128, 8, 2, True),
    ("post", "sm_80", 64, 64, 128, 8, 2, False),
    ("fwd", "sm_80", 128, 128, 128, 8, 3, True),
    ("fwd", "sm_90", 128, 64, 128, 4, 3, False),
    ("bwd_bias", "sm_80", 64, 32, 64, 4, 1, False),
    ("bwd_bias", "sm_90", 64, 128, 32, 4, 2, False),
    ("bwd_softcap", "sm_90", 64, 128, 32, 4, 2, True),
]


def _attention_spec(kind: str, d: int) -> Any:
    """The sweep's kernels: causal f16 attention (1 x 32 heads x 2048, out and lse; a probability threshold as
    post_mod) or its backward (1 x 16 heads x 1024, dq / dk / dv) with an ALiBi-style bias or softcap."""
    import tilefuse as tf
    from tilefuse.ir import expr as ex

    fwd = kind in ("fwd", "post")
    s, h = (2048, 32) if fwd else (1024, 16)
    g = tf.GraphBuilder("regs")
    q, k, v = (g.input(n, (1, h, s, d), "f16") for n in "qkv")
    if fwd:
        post = tf.softmax_threshold(0.01) if kind == "post" else None
        out, lse = tf.attention(q, k, v, mask_mod=tf.causal_mask(s, s), return_lse=True, post_mod=post)
        g.output("out", out)
        g.output("lse", lse)
    else:
        do = g.input("do", (1, h, s, d), "f16")
        bias = ex.var("score", "f32") + (ex.var("kv_idx") - ex.var("q_idx")).cast("f32") * 0.25
        kw = {"mask_mod": tf.causal_mask(s, s),
              "score_mod": tf.softcap_score(20.0) if kind == "bwd_softcap" else bias}
        out, lse = tf.attention(q, k, v, return_lse=True, **kw)
        for name, grad in zip(("dq", "dk", "dv"), tf.attention_backward(q, k, v, out, do, lse, **kw)):
            g.output(name, grad)
    return tf.compile(g.build(), target="sm_80", aot=False).kernels[0 if fwd else 1].spec


@pytest.mark.parametrize("kind,arch,d,bm,bn,warps,stages,spills", REGISTER_CASES)
def test_attention_register_estimate_against_builds(kind, arch, d, bm, bn, warps, stages, spills):
    from tilefuse.schedule.config import Config
    from tilefuse.schedule.target import get_target

    spec = _attention_spec(kind, d)
    target = get_target(arch)
    cfg = Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    problems = spec.constraints(cfg, target)
    launch = spec.launch_plan(cfg).launches[-1]  # the backward's main kernel (not the delta pre-pass)
    sig = launch.signature()
    b = build_triton(spec.render_triton(cfg), launch.fn, sig, dict(launch.constexprs), arch=target.arch,
                     num_warps=warps, num_stages=stages, divisible_by_16=tuple(sig))
    r = b.resources
    assert r.spills == spills, f"{kind} {cfg.to_json()} on {arch}: measured {r} (expected spills={spills})"
    assert bool(problems) == spills, f"estimate {spec.registers(cfg, target)}: {problems or 'accepted'}; {r}"


def test_gpu_worker_resource_report_from_the_candidates_cubin(mm90: TritonBinary) -> None:
    """The GPU runner stores cuobjdump's report of a candidate's cubin (instruction mix included), and,
    without one, Triton's own counts, where 0 spills stays 0 (not "unknown")."""
    from types import SimpleNamespace

    from tilefuse.autotune.runner_workers import kernel_resources
    from tilefuse.costmodel.features import resource_features

    jit = SimpleNamespace(asm={"cubin": mm90.cubin, "ptx": mm90.ptx}, n_regs=1, n_spills=0,
                          metadata=SimpleNamespace(shared=mm90.shared_mem_bytes))
    report = kernel_resources(jit)
    assert report == mm90.resources.to_dict()
    feats = resource_features(report)
    assert feats["res_hgmma"] > 0 and feats["res_registers"] == mm90.resources.registers
    assert feats["res_shared_bytes"] == mm90.resources.shared_bytes

    bare = SimpleNamespace(asm={}, n_regs=96, n_spills=0, metadata=SimpleNamespace(shared=0))
    assert kernel_resources(bare) == {"registers": 96, "spills": 0, "shared_bytes": 0}
    assert resource_features(kernel_resources(bare))["res_spills"] == 0.0
    assert kernel_resources(SimpleNamespace()) == {"registers": -1, "spills": -1, "shared_bytes": -1}
