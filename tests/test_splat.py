"""Gaussian splatting kernels (kernels/splat/) against the float64 reference (ir/splat_op.py) under
the Triton interpreter: projection for both cameras (Gaussians behind the camera, off-screen and over
the image border), the six-launch rasterizer (an empty tile, a pixel where early termination stops
compositing, each pixel's last contributor), the plan's host sort step, AOT builds without spills,
and bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.errors import TilefuseError
from tilefuse.ir import VerifyError
from tilefuse.ir.reference import evaluate
from tilefuse.ir.splat_op import tile_rect
from tilefuse.kernels.splat.common import SplatInputError
from tilefuse.schedule.launch import Arg, Launch, LaunchPlan, LaunchPlanError

W, H, N = 64, 48, 300
KMAT = np.array([[55.0, 0, 31.0], [0, 50.0, 25.0], [0, 0, 1]])


def view_matrix() -> np.ndarray:
    """World -> camera: a small rotation about y and a translation."""
    a = 0.2
    v = np.eye(4)
    v[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    v[:3, 3] = (0.2, -0.1, 0.5)
    return v


def scene(seed: int, n: int = N) -> dict[str, np.ndarray]:
    """n Gaussians in front of, beside and behind the camera (about a tenth behind it)."""
    rng = np.random.default_rng(seed)
    means = np.column_stack([rng.uniform(-2.5, 2.5, n), rng.uniform(-2, 2, n), rng.uniform(-0.8, 6, n)])
    return {"means": means, "scales": rng.uniform(0.02, 0.25, (n, 3)), "quats": rng.standard_normal((n, 4)),
            "opac": rng.uniform(0.2, 1.0, n), "view": view_matrix(), "K": KMAT}


def project_graph(n: int, camera: str) -> tf.Graph:
    g = tf.GraphBuilder(f"proj_{camera}")
    ts = [g.input(name, shape, "f32") for name, shape in (("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)),
                                                          ("opac", (n,)), ("view", (4, 4)), ("K", (3, 3)))]
    for name, t in zip(("means2d", "conics", "depths", "radii"),
                       tf.project_gaussians(*ts, width=W, height=H, camera=camera)):
        g.output(name, t)
    return g.build()


def raster_graph(n: int, tile: int = 16) -> tf.Graph:
    g = tf.GraphBuilder("raster")
    ts = [g.input(name, shape, d) for name, shape, d in (
        ("m2d", (n, 2), "f32"), ("con", (n, 3), "f32"), ("col", (n, 3), "f32"), ("opac", (n,), "f32"),
        ("dep", (n,), "f32"), ("rad", (n,), "i32"))]
    for name, t in zip(("img", "T", "last"), tf.rasterize_gaussians(*ts, width=W, height=H, tile=tile,
                                                                     background=(0.1, 0.2, 0.3),
                                                                     last_contributor=True)):
        g.output(name, t)
    return g.build()


@pytest.fixture(scope="module")
def compiled():
    """Interpreter builds of both projections and of the rasterizer (built once for the module)."""
    return {"pinhole": tf.compile(project_graph(N, "pinhole"), target="interp", aot=False),
            "fisheye": tf.compile(project_graph(N, "fisheye"), target="interp", aot=False),
            "raster": tf.compile(raster_graph(N + 3), target="interp", aot=False)}


@pytest.mark.interp
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
def test_projection_matches_the_reference(compiled, camera):
    ins = scene(1)
    cg = compiled[camera]
    got = {k: v.numpy() for k, v in cg.run(ins, poison=True).items()}
    want = evaluate(cg.graph, ins)
    z = want["depths"]
    r = want["radii"]
    mx = want["means2d"][:, 0]
    # The scene has every case: behind the camera, culled off-screen, visible over the border, inside.
    assert (z < 0).sum() > 10 and (r[z < 0] == 0).all()
    assert ((z > 0.01) & (r == 0)).sum() > 10
    assert ((r > 0) & ((mx - r < 0) | (mx + r > W))).sum() > 5 and (r > 0).sum() > 60
    np.testing.assert_allclose(got["means2d"], want["means2d"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["conics"], want["conics"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["depths"], z, rtol=1e-6, atol=1e-6)
    assert np.abs(got["radii"].astype(np.int64) - r).max() <= 1  # gsplat's radii tolerance


def stacked_scene(camera: str) -> dict[str, np.ndarray]:
    """The reference projection of scene(2), plus three near-opaque Gaussians in front of pixel (40, 20)
    (alphas 0.99, 0.98, 0.99 there): the third would take T from 2e-4 below 1e-4, so compositing stops
    before it. (Not 0.99 twice: T = 0.01^2 sits on the threshold, where float32 and float64 differ.)"""
    ins = scene(2)
    proj = evaluate(project_graph(N, camera), ins)
    rng = np.random.default_rng(3)
    stack = 3
    # Cull every Gaussian whose rectangle reaches the top-right tile (3, 0), which is then empty.
    for g in range(N):
        x0, y0, x1, y1 = tile_rect(proj["means2d"][g, 0], proj["means2d"][g, 1], proj["radii"][g], 16, (4, 3))
        if x0 <= 3 < x1 and y0 <= 0 < y1:
            proj["radii"][g] = 0
    return {"m2d": np.concatenate([proj["means2d"], np.full((stack, 2), [40.5, 20.5])]),
            "con": np.concatenate([proj["conics"], np.tile([0.02, 0.0, 0.02], (stack, 1))]),
            "col": np.concatenate([rng.random((N, 3)), np.eye(3)]),
            "opac": np.concatenate([ins["opac"], [1.0, 0.98, 1.0]]),
            "dep": np.concatenate([proj["depths"], [0.05, 0.06, 0.07]]),
            "rad": np.concatenate([proj["radii"], np.full(stack, 8)]).astype(np.int32)}


@pytest.mark.interp
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
def test_rasterizer_matches_the_reference(compiled, camera):
    cg = compiled["raster"]
    ins = stacked_scene(camera)
    got = {k: v.numpy() for k, v in cg.run(ins, poison=True).items()}  # poisoned outputs and workspaces
    want = evaluate(cg.graph, ins)
    np.testing.assert_allclose(got["img"], want["img"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["T"], want["T"], rtol=1e-5, atol=1e-6)
    assert (got["last"] != want["last"]).sum() <= 2  # a float32 tie at the 1/255 or 1e-4 thresholds at most
    # Early termination at (40, 20): 0.99 and 0.98 leave T = 2e-4, the third (blue) is not added.
    assert got["T"][20, 40] == pytest.approx(2e-4, rel=1e-3) and got["img"][20, 40, 2] < 0.05
    assert got["last"][20, 40] == N + 1
    # An empty tile keeps the background, T = 1 and no contributor.
    blk = np.s_[0:16, 48:64]
    assert (got["T"][blk] == 1.0).all()
    assert (got["last"][blk] == -1).all()
    np.testing.assert_allclose(got["img"][blk], np.broadcast_to([0.1, 0.2, 0.3], (16, 16, 3)), rtol=1e-6)


def test_rasterizer_plan_has_six_launches_and_a_host_sort(compiled, tmp_path):
    ck = compiled["raster"].kernels[0]
    plan = ck.spec.launch_plan(ck.config)
    name = ck.spec.name
    assert [(ln.fn[len(name) + 1:], ln.host) for ln in plan.launches] == [
        ("count", False), ("scan", False), ("emit", False), ("sort", True), ("ranges", False), ("render", False)]
    assert plan.functions() == [f"{name}_{s}" for s in ("count", "scan", "emit", "ranges", "render")]
    assert plan.launches[-1].grid == (12, 1, 1)  # 4 x 3 tiles of 16 x 16
    ws = {w.name: w for w in plan.workspaces}
    assert ws["keys"].dtype == "i64" and ws["keys"].shape == ((N + 3) * 12,) and ws["ranges"].zeroed
    sort = plan.launches[3].to_json()
    assert sort["host"] is True and sort["args"] == ["offsets", "keys", "ids", "sids"]
    assert "host" not in plan.launches[0].to_json()
    json.dumps(plan.to_json())


def test_a_plan_of_host_steps_only_is_refused():
    a = Arg("in0", "input", 0, "*fp32")
    with pytest.raises(LaunchPlanError, match="only host steps"):
        LaunchPlan("k", (a,), (), (Launch("k_sort", (), (a,), host=True),))
    with pytest.raises(LaunchPlanError, match="launched twice"):
        LaunchPlan("k", (a,), (), (Launch("k_a", (1,), (a,)), Launch("k_a", (), (a,), host=True)))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_defaults_build_without_spills(arch):
    for gr in (project_graph(N, "pinhole"), project_graph(N, "fisheye"), raster_graph(N)):
        cg = tf.compile(gr, target=arch)
        for ck in cg.kernels:
            bins = ck.binaries[arch]
            assert list(bins) == ck.spec.launch_plan(ck.config).functions()
            for fn, b in bins.items():
                assert b.cubin and b.resources.registers > 0
                assert not b.resources.spills, f"{fn} spills on {arch} with {ck.config.to_json()}: {b.resources}"


@pytest.mark.interp
@pytest.mark.parametrize("tensor, row, value, match", [
    ("means", 7, np.nan, r"means3d has non-finite values in 1 row \(first: row 7\)"),
    ("scales", 3, 0.0, r"scales must be > 0 .* \(first: row 3\)"),
    ("scales", 5, -0.1, r"scales must be > 0 .* \(first: row 5\)"),
    ("quats", 2, 0.0, r"quats of zero norm .* \(first: row 2\)"),
    ("K", 0, 0.0, r"K needs finite focal lengths fx, fy > 0, got fx=0.0"),
    ("K", 1, -50.0, r"K needs finite focal lengths .* fy=-50.0"),
])
def test_projection_refuses_bad_values_before_launch(compiled, tensor, row, value, match):
    ins = scene(4, N)
    bad = ins[tensor].copy()
    if tensor == "quats":
        bad[row] = 0.0
    elif tensor == "K":
        bad[row, row] = value
    else:
        bad[row, 0] = value
    with pytest.raises(SplatInputError, match=match) as err:
        compiled["pinhole"].run({**ins, tensor: bad})
    assert isinstance(err.value, TilefuseError)


@pytest.mark.interp
def test_rasterizer_refuses_negative_depths_and_radii(compiled):
    ins = stacked_scene("pinhole")
    visible = int(np.argmax(ins["rad"] > 0))
    dep = ins["dep"].copy()
    dep[visible] = -1.0
    with pytest.raises(SplatInputError, match=rf"depths of Gaussians with a radius .* \(first: row {visible}\)"):
        compiled["raster"].run({**ins, "dep": dep})
    rad = ins["rad"].copy()
    rad[4] = -2
    with pytest.raises(SplatInputError, match=r"radii must be >= 0 .* \(first: row 4\)"):
        compiled["raster"].run({**ins, "rad": rad})


def test_wrong_shapes_are_verifier_errors():
    g = tf.GraphBuilder("bad")
    m = g.input("m", (5, 3), "f32")
    with pytest.raises(VerifyError, match=r"scales is f32\[4, 3\]; want \[5, 3\]"):
        tf.project_gaussians(m, g.input("s", (4, 3), "f32"), g.input("q", (5, 4), "f32"), g.input("o", (5,), "f32"),
                             g.input("v", (4, 4), "f32"), g.input("k", (3, 3), "f32"), width=W, height=H)
    with pytest.raises(VerifyError, match=r"K is f32\[3, 4\]; want \[3, 3\]"):
        tf.project_gaussians(m, m, g.input("q2", (5, 4), "f32"), g.input("o2", (5,), "f32"),
                             g.input("v2", (4, 4), "f32"), g.input("k2", (3, 4), "f32"), width=W, height=H)
    c = g.input("c", (5, 3), "f32")
    with pytest.raises(VerifyError, match=r"last_contributor must be true or false"):
        tf.rasterize_gaussians(g.input("m2", (5, 2), "f32"), c, c, g.input("o3", (5,), "f32"),
                               g.input("d", (5,), "f32"), g.input("r", (5,), "i32"), width=W, height=H,
                               last_contributor=1)  # type: ignore[arg-type]
