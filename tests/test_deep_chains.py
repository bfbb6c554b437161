"""Graphs far deeper than real ones: a chain of thousands of pointwise ops fuses into one expression as
deep as the chain. Lowering and the Triton renderer walk it without recursion; the TVM backend, whose
C++ passes recurse, refuses it past a stated limit instead of overflowing the C stack."""

from __future__ import annotations

import pytest

from tilefuse.ir import expr as ex
from tilefuse.ir.text import parse_graph
from tilefuse.kernels import LoweringError, fusion_rules, spec_for
from tilefuse.passes import run_pipeline
from tilefuse.schedule.target import get_target


def chain(n: int) -> str:
    lines = ["graph chain(T=4) {", "  %x = input f32[T, 8]"]
    prev = "%x"
    for i in range(n):
        lines.append(f"  %{i} = pointwise({prev}) {{expr=(add $0:f32 1.0:f32)}}")
        prev = f"%{i}"
    return "\n".join([*lines, f"  output y = {prev}", "}"])


def test_a_3000_op_chain_lowers_and_renders_for_triton():
    kg = run_pipeline(parse_graph(chain(3000)), fusion_rules()).kernels
    (k,) = kg.kernels
    spec = spec_for(kg, k, "triton")
    src = spec.render_triton(spec.default_config(get_target("sm_90")))
    assert "t2999 = (t2998 + 1.0)" in src  # one statement per op, no nesting


def test_tvm_lowering_states_its_depth_limit():
    pytest.importorskip("tvm")
    from tvm import tirx

    from tilefuse.codegen import tvm_expr

    def deep(n: int) -> ex.Expr:
        e = ex.var("x", "f32")
        for _ in range(n - 1):
            e = e + 1.0
        return e

    def leaf(n: ex.Expr) -> object:
        return tirx.Var("x", "float32") if n.op is ex.E.VAR else None

    limit = tvm_expr.MAX_TVM_EXPR_DEPTH
    tvm_expr.lower_expr(deep(limit), leaf)
    with pytest.raises(LoweringError, match=f"{limit + 1} ops deep exceeds the CPU backend's limit of {limit}"):
        tvm_expr.lower_expr(deep(limit + 1), leaf)



def test_shared_subexpressions_are_let_bound_not_walked_as_trees():
    """`y*sigmoid(y)` chained four times: each value is used twice, so as a tree the expression doubles per
    link. Unbound, TVM's passes took more than 300 s on this graph; Let-bound it builds in seconds."""
    pytest.importorskip("tvm")
    import numpy as np

    import tilefuse as tf

    lines = ["graph silu4(N=32) {", "  %x = input f32[N, N]"]
    prev = "%x"
    for i in range(4):
        lines.append(f"  %y{i} = pointwise({prev}) {{expr=(mul $0:f32 (sigmoid $0:f32))}}")
        prev = f"%y{i}"
    g = parse_graph("\n".join([*lines, f"  output y = {prev}", "}"]))
    x = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    ref = x.astype(np.float64)
    for _ in range(4):
        ref = ref / (1 + np.exp(-ref))
    got = tf.compile(g, target="cpu")(x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_let_binding_takes_only_shared_interior_nodes():
    pytest.importorskip("tvm")
    from tilefuse.codegen import tvm_expr

    x = ex.var("x", "f32")
    y = x * ex.unary(ex.E.SIGMOID, x)
    z = y * y + x
    assert tvm_expr._shared(ex.toposort([z])) == {id(y)}  # x is used thrice but is a leaf
