"""The factored CPU decode schedule of the quantized GEMM (gemv=2, kernels/quant/tvm_gemv.py): the default for
M <= 16 wherever the weights factor as (code - zero) * scale over k-groups, correct against the float64
reference with poisoned outputs for every such format, odd N (not a multiple of the 64-column strips), K with
a partial last k-tile, M in {1, 3, 16}; formats that do not factor keep the unfactored schedule."""

from __future__ import annotations

import pytest

from tilefuse.compiler import compile_graph
from tilefuse.kernels.quant import cpu_gemv
from tilefuse.schedule.target import get_target

from quant_formats import Case, awq, graph, gptq, int2_asym, int8_per_channel, nf4, sym_int4
from test_quant_gemm import check

CPU = get_target("cpu")
# (case, M, K, N): N never a multiple of 64; per-channel formats with K = 320 end in a partial 128-row k-tile
# (M=16 with codes packed along N: 128 accumulators a k-step, ~12 s to build each on 2 loaded cores: slow)
SLOW = pytest.mark.slow
CASES = [(awq(128), 1, 256, 200), pytest.param(awq(128), 16, 128, 72, marks=SLOW), (gptq(4, True), 3, 256, 136),
         (gptq(4, False), 1, 128, 200), (gptq(3, False, 64), 3, 128, 72), (sym_int4(-1, "f32", "f32"), 1, 320, 200),
         pytest.param(sym_int4(-1, "f32", "f32"), 16, 320, 72, marks=SLOW), (sym_int4(64), 3, 192, 136),
         (int2_asym(64, True), 1, 128, 200), pytest.param(int2_asym(128, False), 16, 256, 72, marks=SLOW),
         (int8_per_channel("f32"), 1, 320, 200), (int8_per_channel("f32"), 3, 320, 136),
         (int8_per_channel("f32"), 16, 320, 72), (gptq(4, False), 16, 128, 72)]


@pytest.mark.parametrize("case,m,k,n", CASES, ids=lambda c: c.name if isinstance(c, Case) else str(c))
def test_factored_decode_schedule_is_the_default_and_matches_the_reference(case: Case, m: int, k: int, n: int) -> None:
    g = graph(case, m, k, n, epilogue=True)
    cg = compile_graph(g, "cpu", db=None, cost_model=None)
    spec, cfg = cg.kernels[0].spec, cg.kernels[0].config
    if spec.pack_units()[1] == 1:  # one code per column (int8, GPTQ): gemv=1 or the GEMM by default, 2 if asked
        assert cfg.int("gemv") != 2, cfg.to_json()
        cfg = cpu_gemv.default(spec, spec._decode_base(CPU), CPU, any_layout=True)
        assert cfg is not None and cfg.int("gemv") == 2
        cg = compile_graph(g, "cpu", configs={spec.name: cfg}, db=None, cost_model=None)
    else:
        assert cfg.int("gemv") == 2, cfg.to_json()
    check(cg, case, seed=21 + m)


def test_formats_that_do_not_factor_keep_the_unfactored_schedule() -> None:
    """NF4's absmax changes every 64 columns along N but every row along K: no k-group shares a scale, so
    gemv=2 is refused with the reason and the default stays gemv=1."""
    spec = compile_graph(graph(nf4(), 1, 128, 128), "interp", db=None, cost_model=None, aot=False).kernels[0].spec
    cfg = spec.default_config(CPU)
    assert spec.gemv_factors() is None and cfg.int("gemv") == 1 and spec.knob_space(CPU)["gemv"] == (0, 1)
    assert any("no factored form" in p for p in spec.constraints(cfg.replace(gemv=2), CPU))


def test_factored_constraints_name_the_group_and_the_strip() -> None:
    spec = compile_graph(graph(awq(64), 1, 256, 256), "interp", db=None, cost_model=None, aot=False).kernels[0].spec
    cfg = spec.default_config(CPU)
    assert cfg.int("gemv") == 2 and cfg.int("tile_k") == 64 and spec.gemv_factors().run == 64
    assert any("tile_k=128 does not divide the 64 rows" in p for p in spec.constraints(cfg.replace(tile_k=128), CPU))
    assert any("micro_n=32" in p for p in spec.constraints(cfg.replace(micro_n=32), CPU))


def test_factored_codes_skip_the_shift_and_the_sign_select_where_they_can() -> None:
    """Codes packed along N in i32 are summed unshifted (f32(w & (15 << 4j)), the factor 2^-4j applied per
    group; the top nibble shifted by one so it stays positive); codes packed along K keep the shift (their
    shift depends on the row). Signed int8 codes are the loaded byte sign-extended, not a select."""
    from tilefuse.ir.text import format_expr

    def factors(case: Case) -> object:
        g = graph(case, 1, 128, 64)
        return compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0].spec.gemv_factors()

    for case in (awq(128), sym_int4(-1, "f32", "f32")):
        f = factors(case)
        assert f.unscale is not None and "(shl 15:i32" in format_expr(f.value), case.name
    assert factors(gptq(4, False)).unscale is None
    int8 = factors(int8_per_channel("f32"))
    assert int8.unscale is None and "where" not in format_expr(int8.value)


def test_factored_default_splits_n_in_a_few_wide_tasks() -> None:
    """A task walks every row of its columns: narrow tasks take a TLB miss per row once a packed row is over
    a page (int4, N=11008), so the default splits N in 4 ranges, which the knob space holds."""
    for n, want in ((11008, 2752), (4096, 1024), (200, 64)):
        g = graph(sym_int4(-1, "f32", "f32"), 1, 4096, n)
        spec = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0].spec
        cfg = spec.default_config(CPU)
        assert cfg.int("gemv") == 2 and cfg.int("tile_n") == want and want in spec.knob_space(CPU)["tile_n"]
        assert not spec.constraints(cfg, CPU)
