"""SH coefficient gradients (ir/splat_sh_op.py sh_to_color_bwd): the float64 reference against torch autograd
of a dense float64 sh_to_color for every degree (clamped colours included), its kernel fused into the
projection backward (a sibling, as sh_to_color is of the projection), splat_backward returning d_sh_coeffs
and the SH view direction's share of d_means3d, the whole pipeline's means gradient against autograd, an AOT
build without spills, and bad gradient shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import splat_torch as st
import tilefuse as tf
from tilefuse.ir import VerifyError
from tilefuse.ir.ops import Op
from tilefuse.ir.reference import evaluate
from test_splat import H, KMAT, W, view_matrix
from test_splat_bwd import BG, FAST, loss_grads

N = 40
C0 = 0.2820947917738781


def torch_sh(coeffs: torch.Tensor, means: torch.Tensor, view: torch.Tensor, degree: int) -> torch.Tensor:
    """sh_to_color in torch (gsplat's basis, written out again): max(0, basis(dir) . coeffs + 0.5)."""
    centre = -torch.linalg.solve(view[:3, :3], view[:3, 3])
    d = torch.nn.functional.normalize(means - centre, dim=1)
    x, y, z = d.unbind(1)
    b = [torch.full_like(x, C0), -0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
    b += [0.5462742152960395 * s1, -1.092548430592079 * z * y, 0.9461746957575601 * z2 - 0.3153915652525201,
          -1.092548430592079 * z * x, 0.5462742152960395 * c1]
    tc, tb = -2.285228997322329 * z2 + 0.4570457994644658, 1.445305721320277 * z
    c2, s2 = x * c1 - y * s1, x * s1 + y * c1
    b += [-0.5900435899266435 * s2, tb * s1, tc * y, z * (1.865881662950577 * z2 - 1.119528997770346), tc * x,
          tb * c1, -0.5900435899266435 * c2]
    count = (degree + 1) ** 2
    return torch.clamp_min(torch.einsum("nk,nkc->nc", torch.stack(b[:count], 1), coeffs[:, :count]) + 0.5, 0.0)


def sh_inputs(seed: int, k: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    coeffs = rng.standard_normal((N, k, 3)) * 0.3
    coeffs[:, 0] = rng.standard_normal((N, 3)) * 1.2  # some colours clamp at 0
    return {"coeffs": coeffs, "means": rng.uniform(-1, 1, (N, 3)), "view": view_matrix(),
            "dcol": rng.standard_normal((N, 3))}


def sh_bwd_graph(k: int, degree: int) -> tf.Graph:
    g = tf.GraphBuilder("shb")
    shapes = (("coeffs", (N, k, 3)), ("means", (N, 3)), ("view", (4, 4)), ("dcol", (N, 3)))
    t = [g.input(n, s, "f32") for n, s in shapes]
    d_coeffs, d_means = tf.sh_to_color_backward(*t, degree=degree)
    g.output("d_coeffs", d_coeffs)
    g.output("d_means", d_means)
    return g.build()


@pytest.mark.parametrize("k,degree", [(1, 0), (4, 1), (9, 2), (16, 3), (16, 1)])
def test_reference_is_autograd_of_torch_sh(k, degree):
    ins = sh_inputs(k + degree, k)
    want = evaluate(sh_bwd_graph(k, degree), ins)
    x = {n: st.t64(ins[n]).requires_grad_(n in ("coeffs", "means")) for n in ("coeffs", "means", "view")}
    col = torch_sh(x["coeffs"], x["means"], x["view"], degree)
    assert (col == 0).any()  # the clamp is exercised
    gc, gm = torch.autograd.grad((col * st.t64(ins["dcol"])).sum(), [x["coeffs"], x["means"]], allow_unused=True,
                                 materialize_grads=True)
    np.testing.assert_allclose(want["d_coeffs"], gc.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(want["d_means"], gm.numpy(), rtol=1e-5, atol=1e-5 * np.abs(gm.numpy()).max())
    if degree == 0:
        assert not want["d_means"].any()  # the DC term does not depend on the direction


def sh_pipeline(camera: str, degree: int = 3) -> tf.Graph:
    """project + SH colours + rasterize, then splat_backward (the SH backward fuses into the projection's)."""
    g = tf.GraphBuilder(f"sh_train_{camera}")
    t = {k: g.input(k, s, "f32") for k, s in (("means", (N, 3)), ("scales", (N, 3)), ("quats", (N, 4)),
                                                ("opac", (N,)), ("sh", (N, 16, 3)), ("view", (4, 4)), ("K", (3, 3)))}
    m2d, con, dep, rad = tf.project_gaussians(t["means"], t["scales"], t["quats"], t["opac"], t["view"], t["K"],
                                              width=W, height=H, camera=camera)
    col = tf.sh_to_color(t["sh"], t["means"], t["view"], degree=degree)
    raster = tf.rasterize_gaussians(m2d, con, col, t["opac"], dep, rad, width=W, height=H, background=BG,
                                    last_contributor=True)
    grads = tf.splat_backward(raster, g.input("gimg", (H, W, 3), "f32"), g.input("gT", (H, W), "f32"))
    assert sorted(grads) == ["colors", "conics", "means2d", "means3d", "opacities", "quats", "scales", "sh_coeffs"]
    for name in ("means3d", "sh_coeffs", "scales"):
        g.output(f"d_{name}", grads[name])
    return g.build()


def pipeline_inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.column_stack([rng.uniform(-1.5, 1.5, N), rng.uniform(-1, 1, N), rng.uniform(2, 5, N)])
    sh = rng.standard_normal((N, 16, 3)) * 0.2
    sh[:, 0] = rng.standard_normal((N, 3)) * 1.2
    return {"means": means, "scales": rng.uniform(0.05, 0.3, (N, 3)), "quats": rng.standard_normal((N, 4)),
            "opac": rng.uniform(0.3, 0.9, N), "sh": sh, "view": view_matrix(), "K": KMAT,
            **loss_grads(np.random.default_rng(seed + 1))}


@pytest.mark.interp
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
def test_fused_sh_backward_matches_reference_and_autograd(camera):
    gr = sh_pipeline(camera)
    cg = tf.compile(gr, target="interp", aot=False)
    cg = tf.compile(gr, target="interp", aot=False,
                    configs={c.spec.name: FAST for c in cg.kernels if c.spec.family == "splat_raster_bwd"})
    pb = next(c for c in cg.kernels if c.spec.family == "splat_project_bwd")
    assert any(m.op is Op.SH_TO_COLOR_BWD for m in pb.spec.kernel.group.nodes)  # one kernel for both backwards
    ins = pipeline_inputs(7)
    got = {k: v.numpy() for k, v in cg.run(ins, poison=True).items()}
    want = evaluate(gr, ins)
    for name in ("d_sh_coeffs", "d_means3d", "d_scales"):
        scale = np.abs(want[name]).max()
        assert scale > 0 and np.abs(got[name] - want[name]).max() <= 2e-4 * scale, name
    # The reference against autograd of the dense float64 pipeline (project + SH + rasterize).
    proj = {k: ins[k] for k in ("means", "scales", "quats", "opac", "view", "K")}
    radii = evaluate(proj_graph(camera), proj)["radii"]
    x = {k: st.t64(ins[k]).requires_grad_(k in ("means", "sh")) for k in ins}
    idx = torch.as_tensor(np.nonzero(radii > 0)[0])
    m2d_k, con_k = st.project(x["means"][idx], x["scales"][idx], x["quats"][idx], x["view"], x["K"], camera, W, H)
    m2d = torch.zeros((N, 2), dtype=st.F64).index_copy(0, idx, m2d_k)
    con = torch.zeros((N, 3), dtype=st.F64).index_copy(0, idx, con_k)
    depth = (x["means"] @ x["view"][:3, :3].T + x["view"][:3, 3])[:, 2].detach()
    col = torch_sh(x["sh"], x["means"], x["view"], 3)
    img, trans = st.rasterize(m2d, con, col, x["opac"], depth, radii, W, H, 16, BG)
    loss = (img * x["gimg"]).sum() + (trans * x["gT"]).sum()
    gm, gs = torch.autograd.grad(loss, [x["means"], x["sh"]])
    for name, g in (("d_means3d", gm), ("d_sh_coeffs", gs)):
        np.testing.assert_allclose(want[name], g.numpy(), rtol=1e-4, atol=1e-4 * np.abs(g.numpy()).max(), err_msg=name)


def proj_graph(camera: str) -> tf.Graph:
    from test_splat import project_graph

    return project_graph(N, camera)


def test_sh_backward_without_projection_has_no_kernel_and_bad_shapes_are_verifier_errors():
    g = tf.GraphBuilder("bad")
    c, m, v = g.input("c", (5, 9, 3), "f32"), g.input("m", (5, 3), "f32"), g.input("v", (4, 4), "f32")
    with pytest.raises(VerifyError, match=r"d_colors is f32\[5, 4\]; want float \[5, 3\]"):
        tf.sh_to_color_backward(c, m, v, g.input("d", (5, 4), "f32"))
    with pytest.raises(VerifyError, match="degree 3 needs"):
        tf.sh_to_color_backward(c, m, v, g.input("d3", (5, 3), "f32"), degree=3)


@pytest.mark.parametrize("arch", ["sm_90"])
def test_aot_projection_backward_with_degree_3_sh_builds_without_spills(arch):
    g = tf.GraphBuilder("pb_sh")
    t = {k: g.input(k, s, "f32") for k, s in (("means", (N, 3)), ("scales", (N, 3)), ("quats", (N, 4)),
                                                ("sh", (N, 16, 3)), ("view", (4, 4)), ("K", (3, 3)), ("dm", (N, 2)),
                                                ("dc", (N, 3)), ("dcol", (N, 3)))}
    outs = tf.project_gaussians_backward(t["means"], t["scales"], t["quats"], t["view"], t["K"],
                                         g.input("rad", (N,), "i32"), t["dm"], t["dc"], width=W, height=H)
    outs += tf.sh_to_color_backward(t["sh"], t["means"], t["view"], t["dcol"])
    for i, o in enumerate(outs):
        g.output(f"o{i}", o)
    (ck,) = tf.compile(g.build(), target=arch).kernels
    assert ck.spec.sh is not None
    for fn, b in ck.binaries[arch].items():
        assert b.cubin and not b.resources.spills, f"{fn} spills on {arch}: {b.resources}"


@pytest.mark.parametrize("sh_first", [False, True])
def test_sh_backward_fuses_into_the_projection_backward_in_either_order(sh_first):
    """Visited after the anchor it joins as a sibling; visited before, the anchor adopts it with its results."""
    g = tf.GraphBuilder("order")
    t = {k: g.input(k, s, "f32") for k, s in (("means", (N, 3)), ("scales", (N, 3)), ("quats", (N, 4)),
                                                ("sh", (N, 9, 3)), ("view", (4, 4)), ("K", (3, 3)), ("dm", (N, 2)),
                                                ("dc", (N, 3)), ("dcol", (N, 3)))}

    def sh() -> tuple:
        return tf.sh_to_color_backward(t["sh"], t["means"], t["view"], t["dcol"])

    first = sh() if sh_first else ()
    outs = tf.project_gaussians_backward(t["means"], t["scales"], t["quats"], t["view"], t["K"],
                                         g.input("rad", (N,), "i32"), t["dm"], t["dc"], width=W, height=H)
    outs += first or sh()
    for i, o in enumerate(outs):
        g.output(f"o{i}", o)
    (ck,) = tf.compile(g.build(), target="interp", aot=False).kernels
    assert ck.spec.sh is not None and sorted(ck.spec.outs) == ["d_means3d", "d_quats", "d_scales", "d_sh_coeffs",
                                                               "d_sh_means"]
