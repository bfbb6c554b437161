"""Compile once, call with any size in range: dynamic graphs on cpu (TVM, sizes as scalar arguments) and
interp (Triton, sizes as int arguments), checked against the reference at several sizes, with the
builds counted; and the bad inputs of the issue (out of range, inconsistent, a static size needed)."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse import compiler
from tilefuse.codegen import tvm_runtime
from tilefuse.compiler import check_against_reference
from tilefuse.codegen.input_check import InputValueError
from tilefuse.ir.buckets import bucket_edges
from tilefuse.ir.dims import DynamicSizeError, DynParam
from tilefuse.ir.sampling import random_inputs
from tilefuse.ir.text import load_graph, parse_graph
from tilefuse.kernels.base import StaticSizeRequired

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SMALL = {"H": 64, "I": 96}


def _mlp():
    text = (ROOT / "examples" / "decoder_mlp.tf").read_text()
    return parse_graph(text.replace("H=4096, I=11008", "H=64, I=96"))


def _ok(cg, g, t, seed=0):
    rows = check_against_reference(cg, inputs=random_inputs(g.at({"T": t}), seed))
    assert all(ok for *_, ok in rows), (t, rows)


def test_bucket_edges_default_to_powers_of_two():
    assert bucket_edges(DynParam("T", 1, 100)) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert bucket_edges(DynParam("T", 3, 8)) == [4, 8]
    assert bucket_edges(DynParam("T", 1, 8192), [16, 128, 99999]) == [16, 128, 8192]
    with pytest.raises(DynamicSizeError, match="not positive integers"):
        bucket_edges(DynParam("T", 1, 8), [0])


def test_decoder_mlp_compiles_once_and_runs_any_t_on_interp(count_calls):
    g = _mlp()
    builds = count_calls(compiler, "_build")
    cg = tf.compile(g, target="interp", buckets=[8, 64])
    assert [b.label() for b in cg.buckets] == ["T=1..8", "T=9..64", "T=65..8192"]
    at_compile = len(builds)
    assert at_compile == len(cg.distinct_kernels()) <= 3 * len(cg.kernels)
    for t in (1, 7, 64, 65, 300):
        _ok(cg, g, t)
    assert len(builds) == at_compile  # no call built anything


def test_one_binary_per_config_on_cpu(count_calls):
    b = tf.GraphBuilder("rms_proj")
    t = b.dyn("T", 1, 4096, hint=16)
    x = b.input("x", (t, 64), "f32")
    w = b.input("w", (64, 48), "f32")
    h = x * tf.rsqrt(tf.mean(x * x, axis=-1, keepdim=True) + 1e-6)
    b.output("y", tf.matmul(h, w))
    g = b.build()
    libs = count_calls(tvm_runtime, "compile_library")
    cg = tf.compile(g, target="cpu", buckets=[])
    assert len(cg.buckets) == 1 and len(libs) == len(cg.kernels) == 2
    for n in (1, 5, 16, 333):
        _ok(cg, g, n, seed=n)
    assert len(libs) == 2


def test_out_of_range_and_inconsistent_sizes_at_call_time():
    g = parse_graph("graph g(T=dyn[1..64]) {\n  %x = input f32[T, 8]\n  %r = input f32[T, 1]\n"
                    "  %0 = pointwise(%x, %r) {expr=(add $0:f32 $1:f32)}\n  output y = %0\n}\n")
    cg = tf.compile(g, target="interp", buckets=[])
    with pytest.raises(DynamicSizeError, match=r"T=65 \(input x dim 0\) is outside its declared range 1..64"):
        cg(np.zeros((65, 8), np.float32), np.zeros((65, 1), np.float32))
    with pytest.raises(DynamicSizeError, match="T is 4 in input x dim 0 but 5 in input r dim 0"):
        cg(np.zeros((4, 8), np.float32), np.zeros((5, 1), np.float32))
    with pytest.raises(InputValueError, match=r"expected shape \[T, 8\] = \[4, 8\] \(T=4\), got \[4, 9\]"):
        cg(np.zeros((4, 9), np.float32), np.zeros((4, 1), np.float32))
    out = cg(np.ones((3, 8), np.float32), np.ones((3, 1), np.float32))
    assert tuple(out.shape) == (3, 8) and np.all(out.numpy() == 2)


def test_a_template_that_needs_a_static_size_names_it():
    g = parse_graph("graph g(T=dyn[1..64]) {\n  %x = input f32[8, T]\n"
                    "  %0 = reduce(%x) {op=\"sum\", axes=[1], keepdim=true}\n  output y = %0\n}\n")
    with pytest.raises(StaticSizeRequired, match=r"column count .* is T, which depends on the dynamic parameter T"):
        tf.compile(g, target="cpu", buckets=[])


def test_static_graphs_compile_as_before():
    g = load_graph(str(ROOT / "examples" / "decoder_mlp.tf"), sizes={"T": 4, **SMALL})
    cg = tf.compile(g, target="interp")
    assert not hasattr(cg, "buckets") and not g.is_dynamic
    with pytest.raises(tf.compiler.CompileOptionError, match="buckets= is for graphs with dynamic sizes"):
        tf.compile(g, target="interp", buckets=[4])


def test_dynamic_reduction_axis_and_columns_on_interp():
    b = tf.GraphBuilder("kdyn")
    t = b.dyn("T", 1, 256, hint=32)
    x, w, s = b.input("x", (16, t), "f32"), b.input("w", (t, 24), "f32"), b.input("s", (8, t), "f32")
    b.output("y", tf.matmul(x, w))  # K dynamic: masked k tiles
    b.output("p", tf.exp(s - tf.max(s, axis=-1, keepdim=True)))  # a row reduction over dynamic columns
    g = b.build()
    cg = tf.compile(g, target="interp", buckets=[16])
    for n in (1, 5, 17, 200):
        _ok(cg, g, n, seed=n)




def test_constants_with_dynamic_sizes_are_refused_naming_the_parameters():
    """Compile-time constants (sparse patterns) are planned at fixed sizes: with a dynamic graph that is a
    clear option error naming the dynamic parameters, not a plan made at one size."""
    g = _mlp()
    with pytest.raises(compiler.CompileOptionError, match=r"constants= needs static sizes.*\['T'\]"):
        tf.compile(g, target="cpu", constants={"norm_w": np.ones(64, np.float16)})


def test_matmul_offsets_are_int64_when_the_range_reaches_past_int32():
    # T up to 2^26 rows of 64: x can hold 2^32 elements, so `rm * 64` would wrap in int32 at the range's top.
    b = tf.GraphBuilder("wide")
    t = b.dyn("T", 1, 2**26, hint=8)
    x = b.input("x", (t, 64), "f32")
    b.output("y", tf.relu(x @ b.input("w", (64, 48), "f32")))
    g = b.build()
    cg = tf.compile(g, target="interp", buckets=[8])
    src = cg.kernels[0].source
    assert "rm = rm.to(tl.int64)" in src and "kk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)" in src
    for n in (1, 5, 37):
        _ok(cg, g, n)
    narrow = tf.compile(g.freeze({"T": 37}), target="interp")  # 2368 elements: int32 offsets stay
    assert "int64" not in narrow.kernels[0].source


def test_a_family_without_dynamic_sizes_is_refused_naming_the_operand():
    # Splatting's templates take static sizes only: with N dynamic the graph used to compile and then fail in
    # the first call (NameError 'N' inside the kernel); the spec now refuses it, naming operand and parameter.
    text = (ROOT / "examples" / "splat_render.tf").read_text().replace("(N=256)", "(N=dyn[1..4096])")
    with pytest.raises(StaticSizeRequired, match=r"input means \[N, 3\] depends on the dynamic parameter N; "
                                                 r"the splat_project family's triton template takes static"):
        tf.compile(parse_graph(text), target="interp")
    static = tf.compile(parse_graph(text.replace("(N=dyn[1..4096])", "(N=64)")), target="interp")
    assert static.kernels  # the same graph with N static compiles as before
