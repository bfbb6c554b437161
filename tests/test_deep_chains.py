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
