"""Property tests: random graphs compiled for cpu (TVM) and interp (Triton interpreter) agree with
the reference evaluator on fresh inputs with poisoned outputs."""

import pytest
from helpers import check_graph
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tilefuse as tf
from tilefuse.kernels import LoweringError


def _grow(vals, a, b, op, rc, w):
    """Append one op applied to `a` (and `b`); raises VerifyError when shapes do not fit."""
    if op == 0:
        vals.append(a * b + 0.5)
    elif op == 1:
        vals.append(tf.tanh(a) - tf.exp(tf.minimum(a, 0.0)))
    elif op == 2 and a.ndim == 2:
        vals.append(a - tf.max(a, -1, keepdim=True))
    elif op == 3 and a.ndim == 2:
        vals.append(tf.softmax(a))
    elif op == 4 and a.ndim == 2:
        vals.append(tf.rms_norm(a, vals[1]))
    elif op == 5 and a.shape == rc:
        vals.append(tf.silu(a @ w) if b is vals[0] else tf.matmul(tf.exp(a * 0.1), w) + 1.0)
    elif op == 6 and a.ndim == 2:
        vals.append(tf.mean(a, 0))


@st.composite
def random_graph(draw):
    g = tf.GraphBuilder("prop")
    r, c, k = draw(st.integers(1, 9)), draw(st.integers(2, 40)), draw(st.integers(1, 17))
    vals = [g.input("x", (r, c), "f32"), g.input("y", (c,), "f32")]
    w = g.input("w", (c, k), "f32")
    for _ in range(draw(st.integers(1, 6))):
        a, b = draw(st.sampled_from(vals)), draw(st.sampled_from(vals))
        try:
            _grow(vals, a, b, draw(st.integers(0, 6)), (r, c), w)
        except tf.VerifyError:  # shapes that do not broadcast: draw again
            continue
    g.output("out", vals[-1])
    if len(vals) > 4:
        g.output("mid", vals[len(vals) // 2 + 1])
    return g.build()


@pytest.mark.interp
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(), st.integers(0, 10_000))
def test_random_graphs_interp(g, seed):
    check_graph(tf.compile(g, target="interp"), seed)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(), st.integers(0, 10_000))
def test_random_graphs_cpu(g, seed):
    check_graph(tf.compile(g, target="cpu"), seed)


def test_unsupported_op_names_op_dtype_and_backend():
    # the attention backward has Triton templates only (the forward and every sparse op have a TVM one now)
    g = tf.GraphBuilder("att")
    q, k, v, o, do = (g.input(n, (1, 2, 16, 16), "f32") for n in ("q", "k", "v", "o", "do"))
    for name, t in zip(("dq", "dk", "dv"), tf.attention_backward(q, k, v, o, do, g.input("lse", (1, 2, 16), "f32"))):
        g.output(name, t)
    with pytest.raises(LoweringError, match=r"op 'attention_bwd' with dtype f32 is not supported on backend 'tvm'"):
        tf.compile(g.build(), target="cpu")


def test_equal_workloads_with_different_names_do_not_share_a_library():
    """Regression: the TVM build cache once keyed libraries by workload only, so k1_copy loaded
    k0_copy's library and found no function of its name."""
    a = tf.GraphBuilder("a")
    a.output("o", tf.mean(a.input("x", (1, 31), "f32"), 0))
    b = tf.GraphBuilder("b")
    x = b.input("x", (1, 31), "f32")
    b.output("p", tf.exp(x))
    b.output("o", tf.mean(x, 0))
    ga, gb = a.build(), b.build()
    assert [ck.spec.name for ck in tf.compile(ga, target="cpu").kernels] == ["k0_copy"]
    cg = tf.compile(gb, target="cpu")
    assert "k1_copy" in [ck.spec.name for ck in cg.kernels]
    check_graph(cg, 3)
