"""Mutation fuzzing in `make test`: mutants of the example programs and of random graphs either go
through parse -> verify -> partition -> cpu/interp/sm_90 lowering or are rejected with a TilefuseError.
Anything else is a crash (tests/fuzz_check.py: a worker process with a timeout and a memory limit, so a
hang or a huge allocation fails one example, not the run). Derandomized: the same examples every run.
bench/fuzz_campaign.py runs the same mutators for a longer budget."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fuzzing
from fuzz_check import Outcome, Worker, allocate, die, known_elsewhere, signature, sleep_forever

EXAMPLES = fuzzing.example_texts()


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout=20, mem_bytes=4 << 30)
    yield w
    w.close()


def _assert_no_crash(out: Outcome, text: str) -> None:
    if out.status == "crash" and known_elsewhere(out) is None:
        pytest.fail(f"crash {out.signature} at step {out.stage}: {out.error}\n--- mutant ---\n{text}\n"
                    f"--- trace ---\n{out.trace}", pytrace=False)


seeds = st.one_of(st.sampled_from(EXAMPLES), st.randoms(use_true_random=False).map(fuzzing.random_graph_text))
_FIXED = dict(derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))


@settings(max_examples=200, **_FIXED)
@given(seed=seeds, rng=st.randoms(use_true_random=False))
def test_mutants_succeed_or_raise_the_error_base(worker, seed, rng):
    text, _ = fuzzing.mutate(rng, seed)
    _assert_no_crash(worker.check(text), text)


@settings(max_examples=40, **_FIXED)
@given(rng=st.randoms(use_true_random=False))
def test_random_graphs_compile_as_far_as_no_compiler_runs(worker, rng):
    # Unmutated random graphs are well formed: each must lower for every target or be refused cleanly.
    text = fuzzing.random_graph_text(rng)
    out = worker.check(text)
    _assert_no_crash(out, text)
    assert out.status != "rejected" or out.stage != "parse", f"a builder's graph failed to parse: {out.error}"


def test_the_examples_lower_for_every_target(worker):
    for text in EXAMPLES:
        out = worker.check(text)
        assert out.status in ("ok", "rejected") and out.stage not in ("parse", "roundtrip", "pipeline"), out


def test_a_crash_is_named_by_its_type_and_innermost_library_frame():
    from tilefuse.ir import expr as ex

    def broken_rewrite(e):
        raise KeyError("from a callback outside the library")

    with pytest.raises(KeyError) as info:
        ex.substitute(ex.arg(0, "f32") + 1.0, broken_rewrite)
    assert signature(info.value) == "KeyError at ir/expr.py:substitute"


def test_the_error_base_is_a_rejection(worker):
    out = worker.check("graph g { %x = input f32[4]\n output y = %z }")
    assert (out.status, out.stage) == ("rejected", "parse") and "ParseError" in out.error, out


@pytest.mark.parametrize("check, text, want", [
    (sleep_forever, "", "Timeout"),
    (die, "", "WorkerDied in parse"),
    (allocate, "64", "MemoryError outside the library"),  # 64 GiB under a 4 GiB address-space limit
])
def test_the_worker_turns_hangs_deaths_and_huge_allocations_into_crashes(check, text, want):
    w = Worker(timeout=2, mem_bytes=4 << 30, check=check, warm=False)
    try:
        out = w.check(text)
        assert (out.status, out.signature) == ("crash", want), out
        assert w.check("0").status == ("crash" if check is not allocate else "ok")  # restarted, still usable
    finally:
        w.close()
