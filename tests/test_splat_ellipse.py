"""The rasterizer's ellipse-tile test (kernels/splat/raster_ellipse.py, knob ISECT): the same image as
the rectangle rule and the reference, fewer (tile, Gaussian) keys, and per Gaussian never fewer tiles than
the brute-force set of tiles where some pixel takes alpha >= 1/255 (so none is dropped)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tilefuse as tf
from tilefuse.codegen.executors import plan_arguments
from tilefuse.codegen.triton_runtime import load_module, plan_launcher
from tilefuse.ir.reference import evaluate
from tilefuse.ir.sampling import raster_operands
from tilefuse.ir.splat_op import tile_rect

W, H, N, TILE = 96, 64, 240, 16
GRID = (W // TILE, H // TILE)


def raster_graph() -> tf.Graph:
    g = tf.GraphBuilder("ellipse")
    ts = [g.input(name, shape, d) for name, shape, d in (
        ("m2d", (N, 2), "f32"), ("con", (N, 3), "f32"), ("col", (N, 3), "f32"), ("opac", (N,), "f32"),
        ("dep", (N,), "f32"), ("rad", (N,), "i32"))]
    for name, t in zip(("img", "T", "last"), tf.rasterize_gaussians(*ts, width=W, height=H, tile=TILE,
                                                                     background=(0.2, 0.1, 0.0),
                                                                     last_contributor=True)):
        g.output(name, t)
    return g.build()


def scene(seed: int) -> dict[str, np.ndarray]:
    """Random splats, a third of them needle-thin and diagonal (their rectangles are mostly empty), a
    few faint ones (opacity 0.006: alpha >= 1/255 only near the centre) and near-opaque ones."""
    rng = np.random.default_rng(seed)
    m2d, con, col, opac, dep, rad = raster_operands(rng, N, W, H)
    thin = np.arange(0, N, 3)
    for g in thin:
        a = rng.uniform(0, math.pi)
        c, s = math.cos(a), math.sin(a)
        s1, s2 = rng.uniform(6, 14), rng.uniform(0.4, 1.0)  # long and narrow
        cov = np.array([[c * c * s1 * s1 + s * s * s2 * s2, c * s * (s1 * s1 - s2 * s2)],
                        [c * s * (s1 * s1 - s2 * s2), s * s * s1 * s1 + c * c * s2 * s2]])
        inv = np.linalg.inv(cov)
        con[g] = (inv[0, 0], inv[0, 1], inv[1, 1])
        rad[g] = math.ceil(3 * s1)
    opac[1::11] = 0.006
    opac[2::7] = 0.99
    return {"m2d": m2d, "con": con, "col": col, "opac": opac, "dep": dep, "rad": rad.astype(np.int32)}


def run_with_counts(ck, ins: dict[str, np.ndarray], isect: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The kernel's outputs under ISECT=`isect` and the per-Gaussian tile counts its count launch wrote."""
    config = ck.config.replace(ISECT=isect)
    plan = ck.spec.launch_plan(config)
    inputs = [torch.as_tensor(np.ascontiguousarray(ins[b.name], dtype=np.int32 if b.name == "rad" else np.float32))
              for b in ck.spec.inputs]
    outs = [torch.full(b.shape, -7, dtype=torch.int32 if b.dtype.name == "i32" else torch.float32)
            for b in ck.spec.outputs]
    bound = plan_arguments(ck.spec, config, plan, inputs, outs, "cpu", poison=True)
    plan_launcher(load_module(ck.spec.render_triton(config, True), True), plan, bound, True)()
    names = [b.name for b in ck.spec.outputs]
    assert int(bound["offsets"][N]) == int(bound["counts"].sum())
    return {n: o.numpy() for n, o in zip(names, outs)}, bound["counts"].numpy()


def exact_tiles(ins: dict[str, np.ndarray], g: int) -> int:
    """Tiles of g's rectangle with a pixel where alpha = o exp(power) >= 1/255 (float64, power <= 0)."""
    x, y = ins["m2d"][g]
    a, b, c = ins["con"][g]
    x0, y0, x1, y1 = tile_rect(x, y, float(ins["rad"][g]), TILE, GRID)
    count = 0
    for ty in range(y0, y1):
        for tx in range(x0, x1):
            dx = x - (np.arange(tx * TILE, tx * TILE + TILE) + 0.5)[None, :]
            dy = y - (np.arange(ty * TILE, ty * TILE + TILE) + 0.5)[:, None]
            power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
            count += bool(((power <= 0) & (ins["opac"][g] * np.exp(power) >= 1 / 255)).any())
    return count


@pytest.fixture(scope="module")
def kernel():
    cg = tf.compile(raster_graph(), target="interp", aot=False)
    assert cg.kernels[0].config["ISECT"] == "ellipse"  # the default
    return cg


@pytest.mark.interp
@pytest.mark.parametrize("seed", [0, 1])
def test_ellipse_and_rectangle_give_the_same_image_from_fewer_keys(kernel, seed):
    ins = scene(seed)
    ck = kernel.kernels[0]
    rect, rect_counts = run_with_counts(ck, ins, "rect")
    ell, ell_counts = run_with_counts(ck, ins, "ellipse")
    want = evaluate(kernel.graph, ins)
    for got in (rect, ell):
        np.testing.assert_allclose(got["img"], want["img"], rtol=1e-4, atol=1e-4)  # gsplat's tolerances
        np.testing.assert_allclose(got["T"], want["T"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ell["img"], rect["img"], rtol=1e-6, atol=2e-6)
    assert (ell["last"] != rect["last"]).sum() <= 2
    assert ell_counts.sum() < 0.75 * rect_counts.sum(), (ell_counts.sum(), rect_counts.sum())
    assert (ell_counts <= rect_counts).all()
    exact = np.array([exact_tiles(ins, g) if rect_counts[g] else 0 for g in range(N)])
    assert (ell_counts >= exact).all(), np.nonzero(ell_counts < exact)  # conservative: no tile dropped
    assert ell_counts[1::11].sum() < 0.5 * rect_counts[1::11].sum()  # the faint ones reach few of their tiles


def test_the_knob_is_in_the_space_and_reaches_the_plan(kernel):
    ck = kernel.kernels[0]
    from tilefuse.schedule.target import get_target

    assert ck.spec.knob_space(get_target("sm_90"))["ISECT"] == ("ellipse", "rect")
    rect = ck.spec.launch_plan(ck.config.replace(ISECT="rect")).launches[0]
    ell = ck.spec.launch_plan(ck.config).launches[0]
    assert [a.name for a in rect.args] == ["in0", "in5", "counts"]
    assert [a.name for a in ell.args] == ["in0", "in5", "in1", "in3", "counts"]  # conics and opacities too
