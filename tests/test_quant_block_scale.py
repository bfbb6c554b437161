"""The BLOCK_SCALE knob of quant_matmul: a scale shared by a run of columns (NF4's double-quantized absmax per
64) is computed once per B-tile row, a [BLOCK_K, 1] tile, instead of once per element: the same arithmetic,
so the values are bit-identical under the interpreter; legal only when BLOCK_N divides the run; the
default takes it where legal (slow: its sm_80/sm_90 builds are spill-free with tensor-core MMAs)."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse.compiler import compile_graph
from tilefuse.errors import TilefuseError
from tilefuse.kernels.matmul.triton_template import render
from tilefuse.kernels.quant.spec import ROW_KNOB
from tilefuse.schedule.target import get_target

from helpers import to_np
from quant_formats import Case, awq, graph, inputs, nf4, sym_int4

M, K, N = 5, 256, 136  # N: two 64-column blocks and a partial one


def _probe(case: Case, epilogue: bool = False):  # noqa: ANN202
    return compile_graph(graph(case, M, K, N, epilogue), "interp", db=None, cost_model=None, aot=False).kernels[0]


@pytest.mark.interp
@pytest.mark.parametrize("bn", [16, 64])
def test_nf4_scale_once_per_tile_row_is_bit_identical(bn: int) -> None:
    case = nf4()
    g = graph(case, M, K, N, epilogue=True)
    ck = _probe(case, epilogue=True)
    outs = []
    for knob in (0, 1):
        cfg = ck.config.replace(BLOCK_N=bn, num_warps=2, num_stages=1, **{ROW_KNOB: knob})
        cg = compile_graph(g, "interp", configs={ck.spec.name: cfg}, db=None, cost_model=None)
        assert cg.kernels[0].config == cfg
        outs.append(to_np(cg.run(inputs(case, g, 21), poison=True)["y"]))
        assert ("bs_mask" in cg.kernels[0].source) == bool(knob)
    assert np.all(np.isfinite(outs[1])) and np.max(np.abs(outs[1])) > 0
    assert np.array_equal(outs[0].view(np.uint16), outs[1].view(np.uint16))


def test_block_scale_source_computes_the_scale_table_once_per_row() -> None:
    ck = _probe(nf4())
    row, elem = (render(ck.spec, ck.config.replace(**{ROW_KNOB: k})) for k in (1, 0))
    # the 256-entry scale map's select tree: on [BLOCK_K, 1] tiles (column pid_n * BLOCK_N) under the knob
    assert "pid_n * BLOCK_N), mask=bs_mask" in row and "bs_mask" not in elem
    assert row.count("tl.where") == elem.count("tl.where")  # the same expression, rendered at another shape


def test_block_scale_needs_block_n_to_divide_the_run_and_is_the_default_where_legal() -> None:
    ck = _probe(nf4())
    assert ck.config.int(ROW_KNOB) == 1 and 64 % ck.config.int("BLOCK_N") == 0
    assert "once per B-tile row" in ck.spec.report_lines(ck.config)[0]
    with pytest.raises(TilefuseError, match="BLOCK_SCALE=1 needs BLOCK_N to divide the 64 columns"):
        ck.spec.check(ck.config.replace(BLOCK_N=128, **{ROW_KNOB: 1}), get_target("interp"))
    problems = ck.spec.check_problems(ck.config.replace(BLOCK_N=128, **{ROW_KNOB: 0}), get_target("interp"))
    assert not any(ROW_KNOB in p for p in problems)
    # scales per K group (AWQ) or per channel vary along the columns: no knob
    for case in (awq(128), sym_int4(-1)):
        assert ROW_KNOB not in _probe(case).spec.knob_space(get_target("sm_90"))
    assert ROW_KNOB not in _probe(nf4()).spec.knob_space(get_target("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 4096])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nf4_block_scale_default_builds_without_spills(arch: str, m: int) -> None:
    g = graph(nf4(), m, 4096, 4096, epilogue=True)
    ck = compile_graph(g, arch, db=None, cost_model=None).kernels[0]
    assert ck.config.int(ROW_KNOB) == 1
    r = ck.binaries[arch][ck.spec.name].resources
    assert not r.spills and (r.hmma + r.hgmma) > 0, f"{arch} M={m} {ck.config}: {r}"
