"""The quantized GEMM with a dynamic token count on the CPU: the decode schedules (gemv=2 factored, gemv=1 per
element) serve the small buckets, keeping the bucket's largest M of accumulators and reading row min(m, M - 1),
and the GEMM the large ones; compiled once, no build during calls, each T against the float64 reference."""

from __future__ import annotations

import pytest

import tilefuse as tf
from tilefuse import compiler
from tilefuse.compiler import check_against_reference

from quant_formats import Case, awq, inputs, nf4


def _graph(case: Case, k: int, n: int) -> tf.Graph:
    b = tf.GraphBuilder(case.name + "_dyn")
    t = b.dyn("T", 1, 64, hint=1)
    y = b.input("x", (t, k), case.act) @ case.weight(b, k, n)
    b.output("y", tf.silu(y + b.input("bias", (n,), case.act)))
    return b.build()


# the family's default per bucket (T=1, 2..4, 5..16, 17..64): NF4 at 16 rows is past the unfactored decode
# schedule's accumulator budget, as for a static M=16
@pytest.mark.parametrize("case,want", [(awq(128), [2, 2, 2, 0]),
                                       pytest.param(nf4(), [1, 1, 0, 0], marks=pytest.mark.slow)],  # NF4: ~35 s
                         ids=["awq", "nf4"])
def test_decode_schedules_take_the_token_count_at_run_time(count_calls, case: Case, want: list[int]) -> None:
    g = _graph(case, 128, 72)
    cg = tf.compile(g, target="cpu", db=None, cost_model=None, buckets=[1, 4, 16])
    schedules = [b.compiled.kernels[0].config.int("gemv") for b in cg.buckets]
    assert schedules == want, schedules
    assert [b.compiled.kernels[0].config.int("tile_m") for b in cg.buckets][:2] == [1, 4]  # rows kept
    builds = count_calls(compiler, "_build")
    for t in (1, 3, 4, 9, 16, 40):
        rows = check_against_reference(cg, inputs=inputs(case, g.at({"T": t}), seed=t))
        assert all(ok for *_, ok in rows), (t, rows)
    assert not builds
