"""Workspaces sized from the scan (schedule/launch.py Readback): the rasterizer's plans, forward and
backward, read offsets[N] back after the scan and allocate keys, ids and sids with exactly that many
elements instead of the worst case N x tiles; the ranges grid follows the same value. The plan checks
that a sized workspace is used only after its readback; an export refuses such a plan with the reason;
the report says where the sort runs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.codegen.executors import plan_arguments, torch_input
from tilefuse.codegen.triton_runtime import load_module, plan_launcher
from tilefuse.export.plan import ExportError, check_expressible
from tilefuse.ir.reference import evaluate
from tilefuse.ir.splat_op import tile_rect
from tilefuse.schedule.launch import Arg, Launch, LaunchPlan, LaunchPlanError, Pending, Readback, Workspace
from test_splat import H, W, raster_graph, stacked_scene
from test_splat_bwd import FAST, raster_bwd_graph

N = 60  # a slice of test_splat's stacked scene: fast under the interpreter


def small_scene() -> dict[str, np.ndarray]:
    return {k: v[-N:] for k, v in stacked_scene("pinhole").items()}


def run_recorded(ck, ins: dict[str, np.ndarray], names: list[str]):
    """Run kernel `ck`'s plan on `ins` (interpreter, CPU tensors) through the executors' own argument
    binding and launcher; returns the bound arguments and the shape each sized workspace was allocated with."""
    spec, plan = ck.spec, ck.spec.launch_plan(ck.config)
    tensors = [torch_input(n, ins[n], b.dtype, "cpu") for n, b in zip(names, spec.inputs)]
    outs = [torch_input(b.name, np.zeros(tuple(b.shape), np.float32 if b.dtype.is_float else np.int32),
                        b.dtype, "cpu") for b in spec.outputs]
    bound = plan_arguments(spec, ck.config, plan, tensors, outs, "cpu", poison=True)
    made: dict[str, tuple[int, ...]] = {}

    def recorder(make, name):  # noqa: ANN001, ANN202
        def alloc(w):  # noqa: ANN001, ANN202
            made[name] = tuple(w.shape)
            return make(w)
        return alloc

    for name, p in bound.items():
        if isinstance(p, Pending):  # record the size the launcher asks for, allocate as it would
            p.make = recorder(p.make, name)
    plan_launcher(load_module(ck.source, True), plan, bound, True)()
    return bound, made, outs


def test_raster_plan_sizes_intersections_from_the_scan():
    cg = tf.compile(raster_graph(N), target="interp", aot=False)
    ck = cg.kernels[0]
    plan = ck.spec.launch_plan(ck.config)
    name, tiles = ck.spec.name, 12
    assert plan.readbacks == (Readback("total", f"{name}_scan", "offsets", N),)
    ws = {w.name: w for w in plan.workspaces}
    assert {n for n, w in ws.items() if w.sized_by == "total"} == {"keys", "ids", "sids"}
    assert ws["keys"].shape == (N * tiles,)  # the declared worst case stays the bound
    assert plan.launch_of(f"{name}_ranges").grid_by == ("total", 1024)
    assert plan.to_json()["readbacks"] == [{"name": "total", "after": f"{name}_scan", "source": "offsets", "index": N}]
    at = plan.at({"total": 37})
    assert {w.name: w.shape for w in at.workspaces}["keys"] == (37,) and not at.readbacks
    assert at.scratch_bytes() == plan.scratch_bytes() - (N * tiles - 37) * 16


@pytest.mark.interp
def test_key_buffer_is_the_scan_total_and_the_image_unchanged():
    cg = tf.compile(raster_graph(N), target="interp", aot=False)
    ck = cg.kernels[0]
    ck_rect = tf.compile(raster_graph(N), target="interp", aot=False,
                         configs={ck.spec.name: ck.config.replace(ISECT="rect")}).kernels[0]
    ins = small_scene()
    # The rectangle rule's total, counted independently with the reference's tile_rect.
    rects = [tile_rect(ins["m2d"][g, 0], ins["m2d"][g, 1], ins["rad"][g], 16, (4, 3))
             for g in range(N) if ins["rad"][g] > 0]
    rect_total = sum(max(0, x1 - x0) * max(0, y1 - y0) for x0, y0, x1, y1 in rects)
    want = evaluate(cg.graph, ins)
    for k, expect in ((ck_rect, rect_total), (ck, None)):
        bound, made, outs = run_recorded(k, ins, ["m2d", "con", "col", "opac", "dep", "rad"])
        total = int(bound["offsets"][N])
        assert made == {"keys": (total,), "ids": (total,), "sids": (total,)}
        assert 0 < total < N * 12 // 2 and total == (expect if expect is not None else total)
        np.testing.assert_allclose(outs[0].numpy(), want["img"], rtol=1e-5, atol=1e-5)
    assert total < rect_total  # the ellipse test keeps fewer intersections, the image is the same


@pytest.mark.interp
def test_backward_plan_uses_the_same_readback():
    gr = raster_bwd_graph(N)
    cg = tf.compile(gr, target="interp", aot=False)
    cg = tf.compile(gr, target="interp", aot=False,
                    configs={c.spec.name: FAST for c in cg.kernels if c.spec.family == "splat_raster_bwd"})
    ck = next(c for c in cg.kernels if c.spec.family == "splat_raster_bwd")
    plan = ck.spec.launch_plan(ck.config)
    assert [r.name for r in plan.readbacks] == ["total"] and plan.readbacks[0].after == f"{ck.spec.name}_scan"
    assert {w.name for w in plan.workspaces if w.sized_by} == {"keys", "ids", "sids"}
    rng = np.random.default_rng(4)
    ins = {**small_scene(), "gimg": rng.standard_normal((H, W, 3)).astype(np.float32),
           "gT": rng.standard_normal((H, W)).astype(np.float32)}
    got = cg.run(ins, poison=True)
    want = evaluate(gr, ins)
    for name in ("d_colors", "d_opacities", "d_means2d", "d_conics"):
        scale = np.abs(want[name]).max()
        assert np.abs(got[name].numpy() - want[name]).max() <= 2e-4 * scale, name


def test_plans_refuse_readbacks_that_do_not_line_up():
    a, off = Arg("in0", "input", 0, "*fp32"), Arg("off", "workspace", 0, "*i32")
    keys = Arg("keys", "workspace", 1, "*i64")
    ws = (Workspace("off", (5,), "i32"), Workspace("keys", (40,), "i64", sized_by="n"))
    scan, use = Launch("k_scan", (1,), (a, off)), Launch("k_use", (1,), (off, keys))
    LaunchPlan("k", (a, off, keys), ws, (scan, use), readbacks=(Readback("n", "k_scan", "off", 4),))
    with pytest.raises(LaunchPlanError, match=r"k_use uses \['keys'\] before the readback"):
        LaunchPlan("k", (a, off, keys), ws, (use, scan), readbacks=(Readback("n", "k_use", "off", 4),))
    with pytest.raises(LaunchPlanError, match="sized by 'n', which no readback defines"):
        LaunchPlan("k", (a, off, keys), ws, (scan, use))
    with pytest.raises(LaunchPlanError, match="reads 'nope', not a workspace"):
        LaunchPlan("k", (a, off, keys), ws, (scan, use), readbacks=(Readback("n", "k_scan", "nope", 4),))
    with pytest.raises(LaunchPlanError, match="grid comes from 'm'"):
        LaunchPlan("k", (a, off), ws[:1], (Launch("k_scan", (8,), (a, off), grid_by=("m", 4)),))
    with pytest.raises(LaunchPlanError, match=r"read-back size n=41 is outside 0\.\.40"):
        ws[1].at(41)
    assert ws[1].at(0).shape == (1,) and Launch("k", (8, 2), (), grid_by=("n", 4)).grid_at({"n": 9}) == (3, 2)


def test_export_refuses_with_the_reason_and_the_report_names_the_device_sort():
    cg = tf.compile(raster_graph(N), target="sm_80", aot=False, db=None, cost_model=None)
    with pytest.raises(ExportError, match=r"reads \['total'\] back from the device to size its workspaces "
                                          r"\['keys', 'ids', 'sids'\] at run time"):
        check_expressible(cg)
    ck = cg.kernels[0]
    lines = "\n".join(ck.spec.report_lines(ck.config))
    assert "sort: torch.sort on the device (radix sort), not a tilefuse kernel" in lines
    fixed = 8 * N + 4 + 96  # counts, offsets, ranges
    assert "sized from the scan's total" in lines and f"{fixed} bytes + 16 per intersection" in lines
    assert f"worst case (N x tiles) {fixed + N * 12 * 16} bytes" in lines
    # The host step sorts the tensors it is given where they are: no host copy in its code.
    sort = getattr(load_module(ck.spec.render_triton(ck.config), True), f"{ck.spec.name}_sort")
    src = inspect.getsource(sort)
    assert "torch.sort(keys[:total]" in src and not any(s in src for s in (".cpu(", ".numpy(", "device="))
