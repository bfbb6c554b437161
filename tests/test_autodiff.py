"""ir/autodiff.py: symbolic derivatives against central finite differences in float64 (the reference
evaluator on f64 expressions), torch's subgradient conventions at non-smooth points, simplification and
sharing of the result, and NotDifferentiableError for ops with no derivative."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilefuse.ir import expr as ex
from tilefuse.ir.autodiff import NotDifferentiableError, derivative
from tilefuse.ir.expr import E, ExprError
from tilefuse.ir.reference import eval_expr

X = ex.var("x", "f64")
IDX = ex.var("i", "i32")  # an index variable: the table below is loaded at it
TABLE = np.array([0.5, -1.25, 2.0, 3.5])


def loads(op, idx):
    assert op == 7
    return TABLE[np.asarray(idx[0]) % len(TABLE)]


def c(v):
    return ex.const(v, "f64")


def load_i():
    return ex.load(7, "f64", IDX)


# (name, f(x), sample interval); intervals avoid the non-smooth points of max/min/abs/where.
CASES = [
    ("poly", lambda x: x * x * x - x * 2.0 + 1.0, (-2, 2)),
    ("neg", lambda x: -(x * 3.0), (-2, 2)),
    ("abs", lambda x: ex.abs_(x - 0.3) * x, (0.4, 2)),
    ("abs_neg_side", lambda x: ex.abs_(x), (-2, -0.1)),
    ("exp", lambda x: ex.exp(x * 0.5), (-2, 2)),
    ("exp2", lambda x: ex.exp2(x), (-2, 2)),
    ("log", lambda x: ex.log(x * x + 1.0), (-2, 2)),
    ("log2", lambda x: ex.log2(x), (0.2, 3)),
    ("log1p", lambda x: ex.log1p(x), (-0.5, 3)),
    ("sqrt", lambda x: ex.sqrt(x + 1.0), (0.1, 3)),
    ("rsqrt", lambda x: ex.rsqrt(x), (0.2, 3)),
    ("sin", lambda x: ex.sin(x * 2.0), (-2, 2)),
    ("cos", lambda x: ex.cos(x) * x, (-2, 2)),
    ("tanh_softcap", lambda x: ex.tanh(x * (1.0 / 5.0)) * 5.0, (-20, 20)),
    ("sigmoid", lambda x: ex.sigmoid(x), (-5, 5)),
    ("silu", lambda x: ex.silu(x), (-5, 5)),
    ("erf_gelu", lambda x: ex.gelu(x), (-3, 3)),
    ("recip", lambda x: ex.recip(x), (0.3, 3)),
    ("div_both", lambda x: (x + 2.0) / (x * x + 1.0), (-2, 2)),
    ("div_const_num", lambda x: 3.0 / x, (0.5, 2)),
    ("square", lambda x: x * x, (-2, 2)),
    ("max_left", lambda x: ex.maximum(x, x * 0.5 + 1.0), (2.5, 4)),
    ("max_right", lambda x: ex.maximum(x, x * 0.5 + 1.0), (-2, 1.5)),
    ("min", lambda x: ex.minimum(ex.sin(x), c(0.2)), (-1, 1)),
    ("relu", lambda x: ex.relu(x) * x, (0.1, 2)),
    ("pow_const", lambda x: ex.pow_(x, 3.0), (-2, 2)),
    ("pow_half", lambda x: ex.pow_(x, 0.5), (0.2, 2)),
    ("pow_two", lambda x: ex.pow_(x + 1.0, 2.0), (-2, 2)),
    ("pow_var_exp", lambda x: ex.pow_(c(2.5), x), (-2, 2)),
    ("pow_both", lambda x: ex.pow_(x, x), (0.3, 2)),
    ("where_on_x", lambda x: ex.where(x.gt(0.0), x, x * 0.1), (-2, 2)),
    ("where_index", lambda x: ex.where((IDX % 2).eq(0), ex.tanh(x), x * x), (-2, 2)),
    ("where_const_branch", lambda x: ex.where(x.lt(1.0), c(-1.0), ex.exp(x)), (-1.9, 3)),
    ("load_scale", lambda x: x * load_i() + load_i() * load_i(), (-2, 2)),
    ("index_arith", lambda x: x * (IDX * 3 + 1).cast("f64") - (IDX // 2).cast("f64"), (-2, 2)),
    ("nested", lambda x: ex.tanh(ex.sigmoid(x) * ex.log1p(x * x)) / (ex.exp(-x) + 1.0), (-3, 3)),
    ("shared_subexpr", lambda x: (ex.sin(x) + 1.0) * (ex.sin(x) + 1.0) * ex.sin(x), (-2, 2)),
]


def samples(lo, hi):
    x = np.linspace(lo, hi, 41)
    return x[np.abs(x) > 1e-9], np.arange(len(x))[np.abs(x) > 1e-9]


def fd(f, x, i):
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    env = {"i": i}
    hi = eval_expr(f, variables={**env, "x": x + h}, loads=loads)
    lo = eval_expr(f, variables={**env, "x": x - h}, loads=loads)
    return (hi - lo) / (2 * h)


@pytest.mark.parametrize("name,build,interval", CASES, ids=[c[0] for c in CASES])
def test_matches_finite_differences(name, build, interval):
    f = build(X)
    d = derivative(f, "x")
    assert d.dtype == f.dtype
    x, i = samples(*interval)
    got = np.broadcast_to(eval_expr(d, variables={"x": x, "i": i}, loads=loads), x.shape)
    want = fd(f, x, i)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name,build,interval", CASES[:20:3], ids=[c[0] for c in CASES[:20:3]])
def test_f32_expressions(name, build, interval):
    # The same expressions over an f32 `score`: the derivative is f32 and agrees with the f64 one.
    s = ex.var("score", "f32")
    d32 = derivative(build(s.cast("f64")).cast("f32"), "score")
    d64 = derivative(build(X), "x")
    assert d32.dtype.name == "f32"
    x, i = samples(*interval)
    x = x.astype(np.float32).astype(np.float64)
    got = eval_expr(d32, variables={"score": x, "i": i}, loads=loads)
    want = eval_expr(d64, variables={"x": x, "i": i}, loads=loads)
    np.testing.assert_allclose(np.broadcast_to(got, x.shape), np.broadcast_to(want, x.shape), rtol=1e-6, atol=1e-6)


def test_independent_and_identity():
    assert derivative(X, "x") is c(1.0)
    assert derivative(load_i() * ex.var("y", "f64"), "x") is c(0.0)
    assert derivative(X * 3.0 + 5.0, "x") is c(3.0)
    assert derivative(X + load_i(), "x") is c(1.0)
    assert derivative(X * load_i(), "x") is load_i()
    assert derivative(ex.var("x", "f32") * 2.0, "x") is ex.const(2.0, "f32")


def test_result_reuses_forward_nodes():
    t = ex.tanh(X * 0.2)
    d = derivative(t * 5.0, "x")
    assert [n for n in d.toposort() if n.op is E.TANH] == [t]  # tanh(x / 5) is reused, not rebuilt
    assert derivative(t * 5.0, "x") is d  # hash-consed: deterministic and identical


def test_float_cast():
    # f64 -> f32 -> f64: the derivative passes through the casts (only rounding differs)
    d = derivative(ex.exp(X.cast("f32")).cast("f64"), "x")
    assert [n for n in d.toposort() if n.op is E.CAST]
    x = np.linspace(-2, 2, 9)
    np.testing.assert_allclose(eval_expr(d, variables={"x": x}), np.exp(x), rtol=1e-6)


SUBGRADIENT = {  # name: (expression, the same in torch) at x = 0, a non-smooth point of each
    "abs": (ex.abs_(X), lambda torch, t: t.abs()),
    "relu": (ex.relu(X), lambda torch, t: torch.maximum(t, torch.zeros_like(t))),
    "min": (ex.minimum(X, 0.0), lambda torch, t: torch.minimum(t, torch.zeros_like(t))),
    "where": (ex.where(X.gt(0.0), X, X * 0.1), lambda torch, t: torch.where(t > 0, t, t * 0.1)),
    "pow_base0": (ex.pow_(X, 2.0), lambda torch, t: t.pow(2.0)),
    "pow_exp_zero_base": (ex.pow_(c(0.0), X + 1.0), lambda torch, t: torch.zeros_like(t).pow(t + 1.0)),
}


@pytest.mark.parametrize("name", list(SUBGRADIENT))
def test_subgradients_follow_torch(name):
    torch = pytest.importorskip("torch")
    e, torch_fn = SUBGRADIENT[name]
    got = float(eval_expr(derivative(e, "x"), variables={"x": np.float64(0.0)}))
    t = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    torch_fn(torch, t).backward()
    assert got == float(t.grad), name


@pytest.mark.parametrize("build,op", [
    (lambda x: ex.floor(x), E.FLOOR),
    (lambda x: ex.ceil(x * 2.0) + x, E.CEIL),
    (lambda x: x.gt(0.0).cast("f64") * x, E.GT),
    (lambda x: x.cast("i32").cast("f64"), E.CAST),
    (lambda x: (x.cast("i32") & 1).cast("f64"), E.CAST),
    (lambda x: ex.load(7, "f64", x.cast("i32")), E.CAST),
    (lambda x: x % 1.5, E.MOD),
    (lambda x: ex.bitcast(x, "i64").cast("f64"), E.BITCAST),
])
def test_not_differentiable(build, op):
    with pytest.raises(NotDifferentiableError) as err:
        derivative(build(X), "x")
    assert err.value.op is op
    assert op.value in str(err.value) and "'x'" in str(err.value)


def test_not_differentiable_only_when_used():
    # floor(x) in a where condition, or in a term whose operand does not depend on x, is fine
    e = ex.where(ex.floor(X).eq(1.0), X * 2.0, X) + ex.floor(load_i())
    assert float(eval_expr(derivative(e, "x"), variables={"x": np.float64(1.5), "i": 0}, loads=loads)) == 2.0
    with pytest.raises(ExprError, match="not real-valued"):
        derivative(X.gt(0.0), "x")
    with pytest.raises(NotDifferentiableError, match="var"):
        derivative(ex.var("x", "i32").cast("f64"), "x")


def test_constants_are_finite():
    # exp2's ln 2 and erf's 2 / sqrt(pi) appear as constants
    d = derivative(ex.erf(X) + ex.exp2(X), "x")
    consts = [n.arg for n in d.toposort() if n.op is E.CONST]
    assert any(abs(v - 2 / math.sqrt(math.pi)) < 1e-15 for v in consts)
    assert any(abs(v - math.log(2.0)) < 1e-15 for v in consts)
