"""Reduction epilogues of the matmul family (kernels/matmul/reductions.py): a max/min/sum/mean of the
tile values over rows (M) or columns (N), across tiles, in the GEMM's kernel. The Sparton head
`max_s log1p(relu(h @ W + b))` is one kernel that never writes the [B, S, V] logits; DoRA's column
norm `sqrt(sum_m (W0 + B @ A)^2)` is one kernel too. Checked against the reference with poisoned
outputs under the interpreter and on cpu, at odd sizes, with one tile and several along the axis."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.cli import main
from tilefuse.compiler import compile_graph
from tilefuse.ir import expr as ex
from tilefuse.ir.monotone import DOWN, FLAT, UP, direction
from tilefuse.ir.reference import evaluate
from tilefuse.ir.text import load_graph, parse_graph
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target

from helpers import check_graph, to_np

B, S, D, V = 2, 37, 64, 100
# 16 x 32 tiles: 3 tiles along S=37 (a tail of 5 rows), 4 along V=100 (a tail of 4 columns)
SMALL_TILES = Config(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=4, SPLIT_K=1, num_warps=2, num_stages=2)
CPU_TILES = Config(tile_m=16, tile_n=32, tile_k=32, micro_m=8, micro_n=32, vector=16, unroll=4)


def sparton(dtype: str = "f32", op: str = "max", axis: int = 1, chain=None, keepdim: bool = False) -> tf.GraphBuilder:
    g = tf.GraphBuilder("sparton_head")
    h = g.input("h", (B, S, D), dtype)
    w = g.input("w", (D, V), dtype)
    b = g.input("b", (V,), dtype)
    y = (chain or (lambda y, b: tf.log1p(tf.relu(y + b))))(h @ w, b)
    g.output("s", tf.reduce(y, op, axis=axis, keepdim=keepdim))
    return g


def dora(with_v: bool) -> tf.GraphBuilder:
    """DoRA's column norm ||W0 + B @ A|| per column of the [d, k] weight (and the weight itself)."""
    g = tf.GraphBuilder("dora_norm")
    w0 = g.input("w0", (96, 72), "f32")
    lb = g.input("lora_b", (96, 16), "f32")
    la = g.input("lora_a", (16, 72), "f32")
    v = w0 + lb @ la
    g.output("norm", tf.sqrt(tf.sum(v * v, axis=0)))
    if with_v:
        g.output("v", v)
    return g


def kernels(g: tf.GraphBuilder, backend: str = "triton") -> list:
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    return [spec_for(kg, k, backend) for k in kg.kernels]


def compiled(g: tf.GraphBuilder, target: str, config: Config | None = None):
    names = [s.name for s in kernels(g, "tvm" if target == "cpu" else "triton")]
    return tf.compile(g, target=target, configs={names[0]: config} if config else None)


def check_inputs(cg, inputs: dict[str, np.ndarray]) -> None:
    """Poisoned outputs vs the reference on the given inputs."""
    outs = cg.run(inputs, poison=True)
    ref = evaluate(cg.graph, inputs)
    for name, _ in cg.graph.outputs:
        np.testing.assert_allclose(to_np(outs[name]), ref[name], rtol=1e-4, atol=1e-4)


# ---- grouping and the plan ----------------------------------------------------------------
def test_sparton_head_is_one_kernel_that_writes_only_the_scores():
    (spec,) = kernels(sparton())
    assert [b.shape for b in spec.outputs] == [(B, V)]
    (r,) = spec.reductions
    # the max is taken on the raw logits; relu, log1p and the per-column bias follow once per result
    assert (r.axis, r.op, r.raw) == ("m", "max", True) and r.value is ex.var("acc", "f32")
    src = spec.render_triton(SMALL_TILES)
    main_fn = src.split("_finish_m(")[0]
    assert "tl.log" not in main_fn and "tl.log" in src.split("_finish_m(")[1]
    plan = spec.launch_plan(SMALL_TILES)
    assert plan.functions() == [spec.name, f"{spec.name}_finish_m"]
    assert [(w.shape, w.zeroed) for w in plan.workspaces] == [((3, B, V), False)]
    # one tile spans S: the tile program writes the results itself
    one = SMALL_TILES.replace(BLOCK_M=64)
    assert spec.launch_plan(one).functions() == [spec.name] and not spec.launch_plan(one).workspaces
    assert spec.knob_space(get_target("sm_90"))["SPLIT_K"] == (1,)
    assert spec.family_features(SMALL_TILES)["reductions_raw"] == 1.0


def test_keepdim_output_is_written_by_the_group():
    (spec,) = kernels(sparton(keepdim=True))
    assert [b.shape for b in spec.outputs] == [(B, 1, V)]


def test_show_prints_one_kernel(capsys):
    assert main(["show", "examples/sparton_head.tf"]) == 0
    partition = capsys.readouterr().out.split("== partition ==")[1]
    assert partition.count("reads [") == 1 and "writes ['s']" in partition


def test_non_monotone_or_row_dependent_chains_reduce_per_element():
    (sq,) = kernels(sparton(chain=lambda y, b: (y + b) * (y + b)))
    assert not sq.reductions[0].raw
    # a value that varies along the reduced axis (a residual per row) is not constant for the monotone rule
    g = tf.GraphBuilder("res")
    h, w = g.input("h", (S, D), "f32"), g.input("w", (D, V), "f32")
    g.output("s", tf.max(tf.relu(h @ w + g.input("r", (S, V), "f32")), axis=0))
    (res,) = kernels(g)
    assert not res.reductions[0].raw and len(kernels(g)) == 1
    # a decreasing chain flips the max into a min of the raw values
    (neg,) = kernels(sparton(chain=lambda y, b: -(y + b)))
    assert (neg.reductions[0].op, neg.reductions[0].raw) == ("min", True)


def test_monotone_table():
    x, c = ex.var("acc", "f32"), ex.var("other", "f32")
    assert direction(ex.log1p(ex.relu(x + c)), "acc") == UP
    assert direction(ex.exp(-x) * 2.0, "acc") == DOWN
    assert direction(c * 3.0, "acc") == FLAT
    for e in (x * x, ex.sin(x), x * c, ex.abs_(x), x.cast("i8")):
        assert direction(e, "acc") is None, e


def test_a_pointwise_of_the_tile_that_reads_a_reduction_is_not_fused():
    """y - max_m(y): the column max joins the matmul, the subtraction that needs it does not (it would need
    every tile's max first) and runs in a kernel of its own; the result is right."""
    g = tf.GraphBuilder("mm_center")
    y = g.input("x", (S, D), "f32") @ g.input("w", (D, V), "f32")
    g.output("y", y - tf.max(y, axis=0, keepdim=True))
    specs = kernels(g)
    assert [s.family for s in specs] == ["matmul", "pointwise"] and specs[0].reductions
    check_graph(compiled(g, "interp", SMALL_TILES), 3)


def test_a_row_reduction_of_a_value_read_elsewhere_is_left_to_the_row_kernel():
    """softmax(x @ w) and LayerNorm(x @ w): the row kernel that reads the product reduces its rows itself."""
    g = tf.GraphBuilder("mm_softmax")
    g.output("y", tf.softmax(g.input("x", (S, D), "f32") @ g.input("w", (D, V), "f32")))
    specs = kernels(g)
    assert [s.family for s in specs] == ["matmul", "pointwise"] and not specs[0].reductions


def test_integer_reductions_stay_separate():
    g = tf.GraphBuilder("int_sum")
    y = g.input("a", (S, D), "i8") @ g.input("b", (D, V), "i8")
    g.output("s", tf.sum(y, axis=0))
    assert [s.family for s in kernels(g)] == ["matmul", "pointwise", "pointwise"]


# ---- correctness: interpreter ---------------------------------------------------------------
CASES = {
    "sparton_max_s": dict(),
    "row_max_v": dict(axis=2),
    "sum_s": dict(op="sum"),
    "mean_v": dict(op="mean", axis=2),
    "min_of_decreasing": dict(op="min", chain=lambda y, b: -tf.exp(y * 0.1 + b)),
    "non_monotone": dict(chain=lambda y, b: (y + b) * (y + b)),
}


@pytest.mark.interp
@pytest.mark.parametrize("config", [None, SMALL_TILES], ids=["default", "tiles"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_interp_matches_reference(case, config):
    g = sparton(**CASES[case])
    assert len(kernels(g)) == 1
    check_graph(compiled(g, "interp", config), 1)


@pytest.mark.interp
def test_interp_keepdim_output():
    """[B, 1, V]: the group writes the reduction in the output's shape (no copy kernel)."""
    check_graph(compiled(sparton(keepdim=True), "interp"), 1)


@pytest.mark.interp
def test_interp_f16_sparton_head():
    check_graph(compiled(sparton("f16"), "interp", SMALL_TILES), 2)


@pytest.mark.interp
@pytest.mark.parametrize("op,axis", [("max", 1), ("max", 2), ("min", 1)])
def test_masked_tails_do_not_contribute(op, axis):
    """All logits negative (max) or positive (min): a padding row or column of zeros would win if it counted."""
    rng = np.random.default_rng(0)
    sign = -1.0 if op == "max" else 1.0
    ins = {"h": np.abs(rng.standard_normal((B, S, D))).astype(np.float32),
           "w": (sign * np.abs(rng.standard_normal((D, V)))).astype(np.float32),
           "b": np.zeros(V, np.float32)}
    g = sparton(op=op, axis=axis, chain=lambda y, b: y + b)
    assert kernels(g)[0].reductions[0].raw == (axis == 1)  # the bias varies along V
    check_inputs(compiled(g, "interp", SMALL_TILES), ins)


@pytest.mark.interp
@pytest.mark.parametrize("with_v", [False, True])
def test_dora_column_norm_is_one_kernel(with_v):
    (spec,) = kernels(dora(with_v))
    assert (spec.reductions[0].axis, spec.reductions[0].op) == ("m", "sum")
    assert "sqrt" in ex.format_expr(spec.reduced_outs[0].expr)  # the sqrt runs once per column
    assert len(spec.outs) == int(with_v)
    check_graph(compiled(dora(with_v), "interp", SMALL_TILES.replace(BLOCK_K=16)), 4)


# ---- correctness: cpu (TVM) -------------------------------------------------------------------
@pytest.mark.parametrize("case,config", [("sparton_max_s", CPU_TILES), ("mean_v", None), ("non_monotone", CPU_TILES)])
def test_cpu_matches_reference(case, config):
    pytest.importorskip("tvm")
    check_graph(compiled(sparton(**CASES[case]), "cpu", config), 1)


def test_cpu_dora_column_norm():
    pytest.importorskip("tvm")
    check_graph(compiled(dora(True), "cpu", CPU_TILES.replace(tile_k=16)), 4)


# ---- AOT builds (no GPU needed): spill-free, tensor-core MMAs in the tile kernel ------------------
def assert_builds(g, arch: str) -> None:
    """The family default for `arch` builds every launch without spills; the tile kernel uses MMAs."""
    cg = compile_graph(g, arch, db=None, cost_model=None)
    (ck,) = cg.kernels
    built = ck.binaries[arch]
    assert set(built) == set(ck.spec.launch_plan(ck.config).functions())
    for name, b in built.items():
        assert not b.resources.spills, f"{name} spills on {arch} under {ck.config}: {b.resources}"
    mma = built[ck.spec.name].resources
    assert (mma.hgmma if arch == "sm_90" else mma.hmma) > 0, f"no tensor-core MMA on {arch}: {mma}"


def test_sparton_head_builds_for_sm_80_without_spills():
    pytest.importorskip("triton")
    assert_builds(load_graph("examples/sparton_head.tf", {"S": 512, "D": 256, "V": 4096}), "sm_80")


def _dora_f16(d: int, k: int, r: int) -> tf.GraphBuilder:
    g = tf.GraphBuilder("dora_norm_f16")
    v = g.input("w0", (d, k), "f16") + g.input("lora_b", (d, r), "f16") @ g.input("lora_a", (r, k), "f16")
    g.output("norm", tf.sqrt(tf.sum((v * v).to("f32"), axis=0)))
    return g


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("case", ["sparton_bert", "sparton_rows", "dora_4096"])
def test_reduction_defaults_build_without_spills(case, arch):
    pytest.importorskip("triton")
    if case == "dora_4096":
        g = _dora_f16(4096, 4096, 16)
    else:
        bert = load_graph("examples/sparton_head.tf", {"B": 32, "S": 512, "D": 768, "V": 30522})
        # the row form: the max over V of each position
        rows = bert.text.replace('axes=[1], keepdim=false, op="max"} : f16[32, 30522]',
                                 'axes=[2], keepdim=false, op="max"} : f16[32, 512]')
        g = bert if case == "sparton_bert" else parse_graph(rows)
    assert_builds(g, arch)


@pytest.mark.interp
def test_quantized_matmul_takes_the_reduction_epilogue_too():
    """x @ dequantize_awq(W): the quant_matmul family inherits the matmul's epilogues, the max over rows included."""
    from quant_formats import awq, inputs

    case = awq(128)
    b = tf.GraphBuilder("awq_head")
    x = b.input("x", (2, 21, 256), case.act)
    b.output("y", tf.max(tf.relu(x @ case.weight(b, 256, 72)), axis=1))
    kg = run_pipeline(b.build(), fusion_rules()).kernels
    (spec,) = [spec_for(kg, k, "triton") for k in kg.kernels]
    assert spec.family == "quant_matmul" and spec.reductions[0].raw
    cfg = Config(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, SPLIT_K=1, num_warps=2, num_stages=2, I4_F16=0)
    cg = tf.compile(b, target="interp", configs={spec.name: cfg})
    check_inputs(cg, inputs(case, b.build(), 0))
