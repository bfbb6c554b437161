"""The splatting backward (ir/splat_bwd_op.py, kernels/splat/*_bwd_*): the float64 references against torch
autograd of a dense float64 renderer (tests/splat_torch.py), the Triton kernels under the interpreter
against the references with gsplat's gradient tolerances, the whole pipeline for both cameras, a few
gradient-descent steps that lower a loss, AOT builds without spills, bad gradient shapes.

gsplat's tolerances (tests/test_basic.py, v1.x, float32 CUDA vs float32 torch): rasterization
d_means2d rtol=atol=5e-3, d_conics/d_colors 1e-3, d_opacities 2e-3; projection d_means3d rtol 1e-2
atol 6e-2, d_quats rtol 2e-1 atol 1e-2, d_scales rtol 1e-1 atol 2e-1. Our references are float64, so
the kernels are also held to a bound relative to each gradient's largest value (TIGHT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import splat_torch as st
import tilefuse as tf
from tilefuse.ir import VerifyError
from tilefuse.ir.reference import evaluate
from tilefuse.kernels import LoweringError
from tilefuse.schedule.config import Config
from test_splat import H, N, W, project_graph, scene, stacked_scene

BG = (0.1, 0.2, 0.3)
GSPLAT = {"d_means2d": (5e-3, 5e-3), "d_conics": (1e-3, 1e-3), "d_colors": (1e-3, 1e-3), "d_opacities": (2e-3, 2e-3),
          "d_means3d": (1e-2, 6e-2), "d_quats": (2e-1, 1e-2), "d_scales": (1e-1, 2e-1)}
STOP_G = (3e3, -2e3, 1e3)
TIGHT = 2e-4  # |kernel - reference| <= TIGHT * max |reference|, per gradient
RASTER = ("m2d", "con", "col", "opac", "dep", "rad")
FAST = Config(BATCH=32, BLOCK_G=128, num_warps=8, num_stages=1)  # fewer interpreter steps than the default


def compile_interp(gr: tf.Graph) -> object:
    """Interpreter build; the rasterizer backward with BATCH=32 (8 under the interpreter is 2.5x slower)."""
    cg = tf.compile(gr, target="interp", aot=False)
    names = {ck.spec.name: FAST for ck in cg.kernels if ck.spec.family == "splat_raster_bwd"}
    return tf.compile(gr, target="interp", aot=False, configs=names) if names else cg


def raster_bwd_graph(n: int) -> tf.Graph:
    """Forward (with last contributors) and backward of the rasterizer on given 2D splats."""
    g = tf.GraphBuilder("raster_bwd")
    ts = [g.input(k, s, d) for k, s, d in (("m2d", (n, 2), "f32"), ("con", (n, 3), "f32"), ("col", (n, 3), "f32"),
                                           ("opac", (n,), "f32"), ("dep", (n,), "f32"), ("rad", (n,), "i32"))]
    raster = tf.rasterize_gaussians(*ts, width=W, height=H, background=BG, last_contributor=True)
    grads = tf.splat_backward(raster, g.input("gimg", (H, W, 3), "f32"), g.input("gT", (H, W), "f32"))
    for name, t in grads.items():
        g.output(f"d_{name}", t)
    g.output("last", raster[2])
    return g.build()


def pipeline_graph(camera: str, n: int = N, width: int = W, height: int = H) -> tf.Graph:
    """Projection, rasterization and the whole backward (splat_backward), d_image and d_final_T as inputs."""
    g = tf.GraphBuilder(f"splat_train_{camera}")
    t = {k: g.input(k, s, "f32") for k, s in (("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)),
                                                ("opac", (n,)), ("col", (n, 3)), ("view", (4, 4)), ("K", (3, 3)))}
    m2d, con, dep, rad = tf.project_gaussians(t["means"], t["scales"], t["quats"], t["opac"], t["view"], t["K"],
                                              width=width, height=height, camera=camera)
    raster = tf.rasterize_gaussians(m2d, con, t["col"], t["opac"], dep, rad, width=width, height=height,
                                    background=BG, last_contributor=True)
    grads = tf.splat_backward(raster, g.input("gimg", (height, width, 3), "f32"),
                              g.input("gT", (height, width), "f32"))
    assert sorted(grads) == ["colors", "conics", "means2d", "means3d", "opacities", "quats", "scales"]
    for name, x in grads.items():
        g.output(f"d_{name}", x)
    g.output("img", raster[0])
    return g.build()


def loss_grads(rng: np.random.Generator, width: int = W, height: int = H) -> dict[str, np.ndarray]:
    return {"gimg": rng.standard_normal((height, width, 3)).astype(np.float32),
            "gT": rng.standard_normal((height, width)).astype(np.float32)}


def assert_grads(got: dict, want: dict, names: list[str]) -> None:
    for name in names:
        a, b = np.asarray(got[name], dtype=np.float64), want[name]
        rtol, atol = GSPLAT[name]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
        assert np.abs(a - b).max() <= TIGHT * np.abs(b).max(), (name, np.abs(a - b).max(), np.abs(b).max())


@pytest.fixture(scope="module")
def raster_case():
    """The stacked scene of test_splat (border-crossing splats, an early-termination pixel, an empty tile),
    its gradients from the interpreter kernels and from the reference."""
    ins = {k: (v if k == "rad" else v.astype(np.float32)) for k, v in stacked_scene("pinhole").items()}
    ins.update(loss_grads(np.random.default_rng(7)))
    ins["gimg"][20, 40] = STOP_G  # weight the early-termination pixel (see the test)
    gr = raster_bwd_graph(len(ins["rad"]))
    got = {k: v.numpy() for k, v in compile_interp(gr).run(ins, poison=True).items()}
    return ins, got, evaluate(gr, ins)


@pytest.mark.interp
def test_rasterizer_backward_matches_the_reference(raster_case):
    ins, got, want = raster_case
    assert (got["last"] != want["last"]).sum() <= 2
    assert_grads(got, want, ["d_means2d", "d_conics", "d_colors", "d_opacities"])
    # The early-termination pixel (40, 20) has a large image gradient: compositing the third stacked Gaussian
    # (blue, index N + 2) there, after T fell to 2e-4, would move its d_colors by alpha T g, about 0.6.
    assert want["last"][20, 40] == N + 1
    np.testing.assert_allclose(got["d_colors"][N + 2], want["d_colors"][N + 2], atol=1e-2)
    assert np.abs(0.99 * 2e-4 * np.asarray(STOP_G)).min() > 0.1
    # Gaussians that only reach the empty tile were culled; Gaussians over the border have gradients.
    border = (ins["rad"] > 0) & ((ins["m2d"][:, 0] < 0) | (ins["m2d"][:, 0] > W))
    assert border.sum() >= 3 and (np.abs(got["d_colors"][border]).sum(1) > 0).sum() >= 3


def test_rasterizer_reference_is_autograd_of_the_renderer(raster_case):
    ins, _, want = raster_case
    x = {k: st.t64(ins[k]).requires_grad_(k != "dep") for k in RASTER[:5]}
    img, trans = st.rasterize(*(x[k] for k in RASTER[:5]), ins["rad"], W, H, 16, BG)
    loss = (img * st.t64(ins["gimg"])).sum() + (trans * st.t64(ins["gT"])).sum()
    grads = torch.autograd.grad(loss, [x[k] for k in RASTER[:4]])
    for name, g in zip(("d_means2d", "d_conics", "d_colors", "d_opacities"), grads):
        np.testing.assert_allclose(want[name], g.numpy(), rtol=1e-5, atol=1e-5 * np.abs(g.numpy()).max(),
                                   err_msg=name)


def train_scene(camera: str, n: int = N, seed: int = 1) -> dict[str, np.ndarray]:
    ins = scene(seed, n)
    rng = np.random.default_rng(seed + 10)
    ins["col"] = rng.random((n, 3))
    return {k: np.asarray(v, dtype=np.float32) for k, v in ins.items()}


@pytest.mark.interp
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
def test_pipeline_backward_matches_reference_and_autograd(camera):
    """project -> rasterize -> splat_backward on a scene with Gaussians behind the camera, off-screen and over
    the border: kernels vs the reference, and the reference vs autograd of the dense float64 pipeline."""
    ins = {**train_scene(camera), **loss_grads(np.random.default_rng(3))}
    gr = pipeline_graph(camera)
    got = {k: v.numpy() for k, v in compile_interp(gr).run(ins, poison=True).items()}
    want = evaluate(gr, ins)
    assert_grads(got, want, ["d_colors", "d_opacities", "d_means3d", "d_scales", "d_quats"])
    proj = evaluate(project_graph(N, camera), {k: ins[k] for k in ("means", "scales", "quats", "opac", "view", "K")})
    x = {k: st.t64(ins[k]).requires_grad_(k in ("means", "scales", "quats", "opac", "col")) for k in ins}
    idx = torch.as_tensor(np.nonzero(proj["radii"] > 0)[0])  # culled Gaussians: constant zero means2d, conics
    m2d_k, con_k = st.project(x["means"][idx], x["scales"][idx], x["quats"][idx], x["view"], x["K"], camera, W, H)
    m2d = torch.zeros((N, 2), dtype=st.F64).index_copy(0, idx, m2d_k)
    con = torch.zeros((N, 3), dtype=st.F64).index_copy(0, idx, con_k)
    img, trans = st.rasterize(m2d, con, x["col"], x["opac"], st.t64(proj["depths"]), proj["radii"], W, H, 16, BG)
    loss = (img * x["gimg"]).sum() + (trans * x["gT"]).sum()
    names = ("means", "scales", "quats", "col", "opac")
    for key, g in zip(names, torch.autograd.grad(loss, [x[k] for k in names])):
        name = {"means": "d_means3d", "scales": "d_scales", "quats": "d_quats", "col": "d_colors",
                "opac": "d_opacities"}[key]
        np.testing.assert_allclose(want[name], g.numpy(), rtol=1e-4, atol=1e-5 * np.abs(g.numpy()).max(),
                                   err_msg=name)


@pytest.mark.interp
def test_gradient_steps_lower_the_loss():
    """Training through the API: the image gradient of a squared error computed in the graph, splat_backward,
    and plain gradient descent on colours and opacities towards a target rendered with other ones."""
    n, w, h = 60, 32, 32
    kmat = np.array([[30.0, 0, 16.0], [0, 30.0, 16.0], [0, 0, 1]], dtype=np.float32)
    g = tf.GraphBuilder("fit")
    t = {k: g.input(k, s, "f32") for k, s in (("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)),
                                                ("opac", (n,)), ("col", (n, 3)), ("view", (4, 4)), ("K", (3, 3)),
                                                ("target", (h, w, 3)))}
    proj = tf.project_gaussians(t["means"], t["scales"], t["quats"], t["opac"], t["view"], t["K"], width=w, height=h)
    raster = tf.rasterize_gaussians(proj[0], proj[1], t["col"], t["opac"], proj[2], proj[3], width=w, height=h,
                                    last_contributor=True)
    grads = tf.splat_backward(raster, (raster[0] - t["target"]) * 2.0)  # d/d image of sum (image - target)^2
    for name in ("colors", "opacities"):
        g.output(f"d_{name}", grads[name])
    g.output("img", raster[0])
    cg = compile_interp(g.build())
    ins = train_scene("pinhole", n, seed=5)
    ins.update(K=kmat, target=np.zeros((h, w, 3), np.float32))
    rng = np.random.default_rng(11)
    ins["target"] = cg.run({**ins, "col": rng.random((n, 3), dtype=np.float32),
                            "opac": rng.uniform(0.3, 0.9, n).astype(np.float32)})["img"].numpy()
    losses = []
    for _ in range(4):
        out = {k: v.numpy() for k, v in cg.run(ins).items()}
        losses.append(float(((out["img"] - ins["target"]) ** 2).sum()))
        ins["col"] = ins["col"] - 0.01 * out["d_colors"]
        ins["opac"] = np.clip(ins["opac"] - 0.01 * out["d_opacities"], 0.05, 0.99).astype(np.float32)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.6 * losses[0], losses  # measured: 45.9, 32.8, 24.7, 20.8


def bwd_graphs() -> list[tf.Graph]:
    """The two backward ops alone (inputs for what the forward would give), both cameras."""
    g = tf.GraphBuilder("raster_bwd_only")
    ts = [g.input(k, s, d) for k, s, d in (("m2d", (N, 2), "f32"), ("con", (N, 3), "f32"), ("col", (N, 3), "f32"),
                                           ("opac", (N,), "f32"), ("dep", (N,), "f32"), ("rad", (N,), "i32"),
                                           ("T", (H, W), "f32"), ("last", (H, W), "i32"), ("gimg", (H, W, 3), "f32"))]
    for i, x in enumerate(tf.rasterize_gaussians_backward(*ts, width=W, height=H, background=BG)):
        g.output(f"o{i}", x)
    out = [g.build()]
    for camera in ("pinhole", "fisheye"):
        g = tf.GraphBuilder(f"project_bwd_{camera}")
        ts = [g.input(k, s, d) for k, s, d in (("means", (N, 3), "f32"), ("scales", (N, 3), "f32"),
                                               ("quats", (N, 4), "f32"), ("view", (4, 4), "f32"), ("K", (3, 3), "f32"),
                                               ("rad", (N,), "i32"), ("dm", (N, 2), "f32"), ("dc", (N, 3), "f32"))]
        for i, x in enumerate(tf.project_gaussians_backward(*ts, width=W, height=H, camera=camera)):
            g.output(f"o{i}", x)
        out.append(g.build())
    return out


@pytest.mark.slow  # about 20 s per arch on an idle core (the render_bwd function alone is 14 s on sm_90)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_defaults_build_without_spills(arch):
    for gr in bwd_graphs():
        for ck in tf.compile(gr, target=arch).kernels:
            bins = ck.binaries[arch]
            assert list(bins) == ck.spec.launch_plan(ck.config).functions()
            for fn, b in bins.items():
                assert b.cubin and b.resources.registers > 0
                assert not b.resources.spills, f"{fn} spills on {arch} with {ck.config.to_json()}: {b.resources}"


def test_wrong_gradient_shapes_are_verifier_errors():
    g = tf.GraphBuilder("bad")
    ts = [g.input(k, s, d) for k, s, d in (("m2d", (5, 2), "f32"), ("con", (5, 3), "f32"), ("col", (5, 3), "f32"),
                                           ("opac", (5,), "f32"), ("dep", (5,), "f32"), ("rad", (5,), "i32"))]
    t_ok, last_ok, gi = g.input("T", (H, W), "f32"), g.input("last", (H, W), "i32"), g.input("gi", (H, W, 3), "f32")
    with pytest.raises(VerifyError, match=r"d_image is f32\[48, 64, 4\]; want \[48, 64, 3\]"):
        tf.rasterize_gaussians_backward(*ts, t_ok, last_ok, g.input("gi4", (H, W, 4), "f32"), width=W, height=H)
    with pytest.raises(VerifyError, match=r"last is f32\[48, 64\]; want an integer \[48, 64\]"):
        tf.rasterize_gaussians_backward(*ts, t_ok, t_ok, gi, width=W, height=H)
    with pytest.raises(VerifyError, match=r"final_T is f32\[64, 48\]; want \[48, 64\]"):
        tf.rasterize_gaussians_backward(*ts, g.input("Tt", (W, H), "f32"), last_ok, gi, width=W, height=H)
    with pytest.raises(VerifyError, match=r"d_final_T is f32\[48\]; want \[48, 64\]"):
        tf.rasterize_gaussians_backward(*ts, t_ok, last_ok, gi, width=W, height=H, d_final_t=g.input("gT", (H,), "f32"))
    p = [g.input(k, s, d) for k, s, d in (("means", (5, 3), "f32"), ("scales", (5, 3), "f32"), ("quats", (5, 4), "f32"),
                                          ("view", (4, 4), "f32"), ("K", (3, 3), "f32"))]
    with pytest.raises(VerifyError, match=r"d_conics is f32\[5, 2\]; want \[5, 3\]"):
        tf.project_gaussians_backward(*p, ts[5], ts[0], ts[0], width=W, height=H)
    with pytest.raises(VerifyError, match=r"radii is f32\[5\]; want an integer \[5\]"):
        tf.project_gaussians_backward(*p, ts[3], ts[0], ts[1], width=W, height=H)
    with pytest.raises(VerifyError, match=r"raster must be the 3 results of rasterize_gaussians\(\.\.\., "
                                          r"last_contributor=True\)"):
        tf.splat_backward(tf.rasterize_gaussians(*ts, width=W, height=H), gi)


def test_random_inputs_of_the_backward_agree_with_the_forward():
    """`tilefuse run`/`tune` draw inputs with ir.sampling: final_T and last must be the forward's on the drawn
    splats (the kernels start from them), radii the projection's."""
    from tilefuse.ir.sampling import random_inputs

    raster_gr, proj_gr, _ = bwd_graphs()
    ins = random_inputs(raster_gr, 3)
    g = tf.GraphBuilder("fwd")
    ts = [g.input(k, ins[k].shape, "i32" if k == "rad" else "f32") for k in RASTER]
    for name, x in zip(("T", "last"), tf.rasterize_gaussians(*ts, width=W, height=H, background=BG,
                                                            last_contributor=True)[1:]):
        g.output(name, x)
    fwd = evaluate(g.build(), {k: ins[k] for k in RASTER})
    assert (fwd["last"] == ins["last"]).all() and (ins["last"] >= 0).sum() > 100
    np.testing.assert_allclose(fwd["T"], ins["T"], rtol=1e-6, atol=1e-7)
    ins = random_inputs(proj_gr, 3)
    assert (ins["rad"] > 0).sum() > N // 2 and (ins["rad"] == 0).sum() > 0


def test_cpu_target_names_what_is_missing():
    with pytest.raises(LoweringError, match=r"op 'rasterize_gaussians_bwd' with dtype f32 is not supported on backend "
                                            r"'tvm' \(target cpu\): its kernel family 'splat_raster_bwd' has templates "
                                            r"for triton \(targets interp, sm_80, sm_90\) only"):
        tf.compile(bwd_graphs()[0], target="cpu")
