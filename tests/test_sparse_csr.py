"""CSR SpMM (kernels/sparse): fusion of the sparse constructor and the epilogue into one kernel, the
row-binning launch plan, and the Triton template under the interpreter against the float64 reference
with poisoned outputs, empty rows, a dense row, odd sizes, int32/int64 indices, widths 16-512."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_np
from sparse_cases import csr_case, spmm_graph, spmm_inputs

import tilefuse as tf
from tilefuse.ir.reference import evaluate
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target


def _spec(g, backend="triton"):
    kg = run_pipeline(g, fusion_rules()).kernels
    assert len(kg.kernels) == 1, [k.name for k in kg.kernels]
    return spec_for(kg, kg.kernels[0], backend)


def test_sparse_constructor_and_epilogue_fuse_into_one_spmm_kernel():
    spec = _spec(spmm_graph(9, 7, 5, 12, out_dtype="f16"))
    assert spec.family == "spmm" and spec.kernel.group.kind == "spmm"
    assert [n.op.value for n in spec.kernel.group.prologue] == ["sparse"]
    assert [b.name for b in spec.inputs] == ["indptr", "indices", "values", "b", "bias", "res"]
    assert [b.dtype.name for b in spec.outputs] == ["f16"]
    assert spec.flops() == 2 * 12 * 5


def test_swizzle_plan_bins_rows_before_the_row_kernel():
    spec = _spec(spmm_graph(1000, 7, 40, 12))
    base = dict(BLOCK_N=32, BLOCK_NZ=8, num_warps=2, num_stages=2)
    one = spec.launch_plan(Config(SWIZZLE=0, **base))
    assert [(ln.fn, ln.grid) for ln in one.launches] == [(spec.name, (1000, 2, 1))] and not one.workspaces
    plan = spec.launch_plan(Config(SWIZZLE=1, **base))
    assert [(ln.fn.removeprefix(spec.name), ln.grid) for ln in plan.launches] == [
        ("_count", (4, 1, 1)), ("_scan", (1, 1, 1)), ("_order", (4, 1, 1)), ("", (1000, 2, 1))]
    assert [(w.name, w.shape, w.zeroed) for w in plan.workspaces] == [
        ("counts", (32,), True), ("cursor", (32,), False), ("order", (1000,), False)]


def test_constraints_refuse_tiles_that_spill_or_overhang():
    spec = _spec(spmm_graph(9, 7, 20, 12))
    sm90 = get_target("sm_90")
    bad = Config(BLOCK_N=512, BLOCK_NZ=64, SWIZZLE=0, num_warps=4, num_stages=2)
    problems = spec.check_problems(bad, sm90)
    assert any("BLOCK_N=512 is larger than N=20" in p for p in problems)
    assert any("exceeds 8192 elements" in p for p in problems)
    assert not spec.check_problems(spec.default_config(sm90), sm90)


def _run(g, ins, config):
    cg = tf.compile(g, target="interp", configs={"k0_sparse_spmm_add_max": config} if config else None,
                    db=None, cost_model=None)
    return to_np(cg.run(ins, poison=True)["c"]), cg


def _check(g, ins, config=None, tol=1e-5):
    got, cg = _run(g, ins, config)
    want = evaluate(g, ins)["c"]
    assert np.all(np.isfinite(got)), "unwritten (poisoned) output elements"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))
    return cg


@pytest.mark.interp
@pytest.mark.parametrize("index", ["i32", "i64"])
@pytest.mark.parametrize("swizzle", [0, 1])
def test_csr_spmm_matches_reference(index, swizzle):
    m, k, n = 37, 29, 45  # odd sizes: N is not a multiple of BLOCK_N
    case = csr_case(m, k, 0.2, seed=3)
    g = spmm_graph(m, k, n, len(case[2]), index=index)
    cfg = Config(BLOCK_N=16, BLOCK_NZ=8, SWIZZLE=swizzle, num_warps=1, num_stages=1)
    cg = _check(g, spmm_inputs(case, k, n, 3, index), cfg)
    assert cg.kernels[0].spec.index_dtypes[0].name == index


@pytest.mark.interp
@pytest.mark.parametrize("n", [16, 512])
def test_csr_spmm_power_law_rows_and_widths(n):
    m, k = 64, 80
    case = csr_case(m, k, 0.0, seed=n, kind="power")
    assert np.diff(case[1]).max() == k  # the dense row: one row holds a whole row of B's rows
    _check(spmm_graph(m, k, n, len(case[2])), spmm_inputs(case, k, n, n))


@pytest.mark.interp
def test_csr_spmm_f16_out_and_all_empty_rows_but_one():
    m, k, n = 5, 6, 17
    a = np.zeros((m, k))
    a[2, [0, 5]] = [1.5, -2.0]
    from tilefuse.ir.sparse_op import csr_from_dense
    ip, ix, v = csr_from_dense(a)
    g = spmm_graph(m, k, n, len(ix), out_dtype="f16")
    _check(g, spmm_inputs((a, ip, ix, v.astype(np.float32)), k, n, 1), tol=2e-3)


@pytest.mark.interp
def test_row_order_is_a_permutation_longest_rows_first():
    """The binning launches alone: `order` lists every row once, by non-increasing log2 length."""
    import torch

    from tilefuse.codegen.executors import plan_arguments
    from tilefuse.codegen.triton_runtime import load_module

    m, k, n = 300, 64, 16
    case = csr_case(m, k, 0.0, seed=5, kind="power")
    g = spmm_graph(m, k, n, len(case[2]), epilogue=False)
    spec = _spec(g)
    cfg = Config(BLOCK_N=16, BLOCK_NZ=8, SWIZZLE=1, num_warps=1, num_stages=1)
    plan = spec.launch_plan(cfg)
    ins = spmm_inputs(case, k, n, 5)
    tensors = [torch.from_numpy(np.ascontiguousarray(ins[b.name])) for b in spec.inputs]
    bound = plan_arguments(spec, cfg, plan, tensors, [torch.empty((m, n))], "cpu", poison=True)
    mod = load_module(spec.render_triton(cfg, interpret=True), True)
    for ln in plan.launches[:3]:
        getattr(mod, ln.fn)[ln.grid](*ln.values(bound), **ln.kwargs(interpret=True))
    order = bound["order"].numpy()
    assert sorted(order.tolist()) == list(range(m))
    bits = np.array([int(x).bit_length() for x in np.diff(case[1])])[order]
    assert np.all(np.diff(bits) <= 0) and bits[0] == k.bit_length()


@pytest.mark.interp
def test_a_single_nonzero():
    """Regression (found by bench/sparse_gpu.py --dry-run at 99% sparsity): with nnz = 1 the indices and
    values are one-element arrays whose loads had no index term, a scalar pointer under a block mask."""
    g = spmm_graph(16, 16, 16, 1)
    rng = np.random.default_rng(4)
    ins = {"indptr": np.array([0] * 5 + [1] * 12, np.int32), "indices": np.array([3], np.int32),
           "values": np.array([2.0], np.float32), "b": rng.standard_normal((16, 16)).astype(np.float32),
           "bias": rng.standard_normal(16).astype(np.float32), "res": rng.standard_normal((16, 16)).astype(np.float32)}
    cg = tf.compile(g, target="interp", db=None, cost_model=None)
    np.testing.assert_allclose(to_np(cg.run(ins, poison=True)["c"]), evaluate(g, ins)["c"], rtol=1e-6, atol=1e-6)
