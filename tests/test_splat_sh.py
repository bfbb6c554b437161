"""sh_to_color (ir/splat_sh_op.py): the reference against the Inria code's SH formula and a known
direction, the verifier, the text form, the sibling fusion into the projection kernel (whichever of the
two the graph builds first), and the fused kernel under the interpreter for degrees 0..3 against the
float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import VerifyError, parse_graph
from tilefuse.ir.reference import evaluate
from tilefuse.ir.splat_sh_op import camera_center, sh_basis
from tilefuse.kernels import LoweringError, fusion_rules
from tilefuse.kernels.splat.common import SplatInputError
from tilefuse.passes import run_pipeline

W, H, N = 64, 48, 200
KMAT = np.array([[55.0, 0, 31.0], [0, 50.0, 25.0], [0, 0, 1]])
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)


def inria_sh(deg: int, sh: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The Inria code's eval_sh (utils/sh_utils.py), written out from its formula: sh [N, 3, K], d unit."""
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    r = 0.28209479177387814 * sh[..., 0]
    if deg > 0:
        r = r - C1 * y * sh[..., 1] + C1 * z * sh[..., 2] - C1 * x * sh[..., 3]
    if deg > 1:
        xx, yy, zz = x * x, y * y, z * z
        r = r + (C2[0] * x * y * sh[..., 4] + C2[1] * y * z * sh[..., 5] + C2[2] * (2 * zz - xx - yy) * sh[..., 6]
                 + C2[3] * x * z * sh[..., 7] + C2[4] * (xx - yy) * sh[..., 8])
    if deg > 2:
        r = r + (C3[0] * y * (3 * xx - yy) * sh[..., 9] + C3[1] * x * y * z * sh[..., 10]
                 + C3[2] * y * (4 * zz - xx - yy) * sh[..., 11] + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12]
                 + C3[4] * x * (4 * zz - xx - yy) * sh[..., 13] + C3[5] * z * (xx - yy) * sh[..., 14]
                 + C3[6] * x * (xx - 3 * yy) * sh[..., 15])
    return r


def view_matrix() -> np.ndarray:
    a = 0.3
    v = np.eye(4)
    v[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    v[:3, 3] = (0.2, -0.1, 0.5)
    return v


def sh_graph(n: int, k: int, degree: int | None = None, sh_first: bool = False, camera: str = "pinhole") -> tf.Graph:
    """project_gaussians + sh_to_color over the same means and viewmat; `sh_first` builds the SH op first."""
    g = tf.GraphBuilder(f"sh_{k}_{degree}_{sh_first}")
    ts = {name: g.input(name, shape, "f32") for name, shape in (
        ("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)), ("opac", (n,)), ("view", (4, 4)), ("K", (3, 3)),
        ("sh", (n, k, 3)))}
    if sh_first:
        g.output("colors", tf.sh_to_color(ts["sh"], ts["means"], ts["view"], degree=degree))
    outs = tf.project_gaussians(ts["means"], ts["scales"], ts["quats"], ts["opac"], ts["view"], ts["K"],
                                width=W, height=H, camera=camera)
    g.output("means2d", outs[0])
    g.output("radii", outs[3])
    if not sh_first:
        g.output("colors", tf.sh_to_color(ts["sh"], ts["means"], ts["view"], degree=degree))
    return g.build()


def inputs(seed: int, n: int, k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.column_stack([rng.uniform(-2.5, 2.5, n), rng.uniform(-2, 2, n), rng.uniform(0.5, 6, n)])
    return {"means": means, "scales": rng.uniform(0.02, 0.25, (n, 3)), "quats": rng.standard_normal((n, 4)),
            "opac": rng.uniform(0.2, 1.0, n), "view": view_matrix(), "K": KMAT,
            "sh": rng.standard_normal((n, k, 3)) * 0.6}


def test_basis_is_the_inria_formula_for_every_degree():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((50, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    sh = rng.standard_normal((50, 3, 16))
    for deg in range(4):
        k = (deg + 1) ** 2
        ours = np.einsum("nk,nck->nc", sh_basis(d, k), sh[..., :k])
        np.testing.assert_allclose(ours, inria_sh(deg, sh, d), rtol=1e-12, atol=1e-12)


def test_reference_direction_offset_and_clamp():
    view = view_matrix()
    centre = camera_center(view)
    np.testing.assert_allclose(centre, np.linalg.inv(view)[:3, 3], atol=1e-12)  # the inverse's translation
    g = tf.GraphBuilder("one")
    c, m, v = g.input("c", (2, 4, 3), "f32"), g.input("m", (2, 3), "f32"), g.input("v", (4, 4), "f32")
    g.output("rgb", tf.sh_to_color(c, m, v))
    coeffs = np.zeros((2, 4, 3))
    coeffs[:, 2] = (1.0, -1.0, 0.0)  # basis_2 = C1 z: colour = 0.5 + C1 z (red), 0.5 - C1 z (green)
    coeffs[1, 0] = (-5.0, 0.0, 0.0)  # a DC so negative the red clamps at 0
    means = centre + np.array([[0.0, 0.0, 2.0], [0.0, 2.0, 0.0]])  # straight up z, then along y
    got = evaluate(g.build(), {"c": coeffs, "m": means, "v": view})["rgb"]
    np.testing.assert_allclose(got, [[0.5 + C1, 0.5 - C1, 0.5], [0.0, 0.5, 0.5]], atol=1e-6)


def test_verifier_names_the_coefficient_count():
    g = tf.GraphBuilder("bad")
    m, v = g.input("m", (5, 3), "f32"), g.input("v", (4, 4), "f32")
    with pytest.raises(VerifyError, match=r"coeffs must be \[N, K, 3\] with K = \(d \+ 1\)\^2 .* K in \[1, 4, 9, 16\]"):
        tf.sh_to_color(g.input("c5", (5, 5, 3), "f32"), m, v)
    with pytest.raises(VerifyError, match=r"degree 2 needs \(degree \+ 1\)\^2 = 9 coefficients per channel in "
                                          r"coeffs, which holds 4"):
        tf.sh_to_color(g.input("c4", (5, 4, 3), "f32"), m, v, degree=2)
    with pytest.raises(VerifyError, match=r"means is f32\[4, 3\]; want \[5, 3\]"):
        tf.sh_to_color(g.input("c16", (5, 16, 3), "f32"), g.input("m4", (4, 3), "f32"), v)
    with pytest.raises(VerifyError, match=r"degree must be an integer in 0..3"):
        tf.sh_to_color(g.input("c9", (5, 9, 3), "f32"), m, v, degree=4)


def test_text_form_round_trips_with_the_default_degree():
    gr = sh_graph(8, 16, degree=1)
    again = parse_graph(gr.text)
    assert again.key == gr.key and "sh_to_color(" in gr.text and "degree=1" in gr.text
    assert "degree=3" in sh_graph(8, 16).text  # the stored degree by default


@pytest.mark.parametrize("sh_first", [False, True])
def test_sh_fuses_into_the_projection_kernel(sh_first):
    pr = run_pipeline(sh_graph(N, 9, sh_first=sh_first), fusion_rules())
    kinds = [(k.group.kind, sorted(n.op.value for n in k.group.nodes if n.op.value != "result"))
             for k in pr.kernels.kernels]
    assert kinds == [("project_gaussians", ["project_gaussians", "sh_to_color"])]


def test_sh_on_other_means_is_not_fused_and_has_no_kernel():
    g = tf.GraphBuilder("apart")
    c, m, v = g.input("c", (4, 1, 3), "f32"), g.input("m", (4, 3), "f32"), g.input("v", (4, 4), "f32")
    g.output("rgb", tf.sh_to_color(c, m, v))
    with pytest.raises(LoweringError, match="sh_to_color"):
        tf.compile(g.build(), target="interp", aot=False)


@pytest.mark.interp
@pytest.mark.parametrize("k, degree, sh_first, camera", [
    (1, 0, False, "pinhole"), (4, 1, True, "pinhole"), (9, 2, False, "fisheye"), (16, 3, True, "pinhole"),
    (16, 1, False, "pinhole")])
def test_fused_sh_matches_the_reference(k, degree, sh_first, camera):
    cg = tf.compile(sh_graph(N, k, degree, sh_first, camera), target="interp", aot=False)
    assert len(cg.kernels) == 1
    ins = inputs(k + degree, N, k)
    got = {n: v.numpy() for n, v in cg.run(ins, poison=True).items()}
    want = evaluate(cg.graph, ins)
    assert (want["colors"] == 0).any() and (want["colors"] > 0.9).any()  # the clamp and bright colours occur
    np.testing.assert_allclose(got["colors"], want["colors"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["means2d"], want["means2d"], rtol=1e-4, atol=1e-4)


@pytest.mark.interp
def test_fused_sh_refuses_non_finite_coefficients_and_a_singular_view():
    cg = tf.compile(sh_graph(16, 4), target="interp", aot=False)
    ins = inputs(5, 16, 4)
    bad = ins["sh"].copy()
    bad[6, 2, 1] = np.inf
    with pytest.raises(SplatInputError, match=r"coeffs has non-finite values in 1 row \(first: row 6\)"):
        cg.run({**ins, "sh": bad})
    view = ins["view"].copy()
    view[2, :3] = 0.0
    with pytest.raises(SplatInputError, match=r"viewmat's rotation part .* is singular"):
        cg.run({**ins, "view": view})


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_aot_projection_with_degree_3_sh_builds_without_spills(arch):
    cg = tf.compile(sh_graph(N, 16, camera="fisheye"), target=arch)
    (ck,) = cg.kernels
    for fn, b in ck.binaries[arch].items():
        assert b.cubin and b.resources.registers > 0
        assert not b.resources.spills, f"{fn} spills on {arch} with {ck.config.to_json()}: {b.resources}"


def test_sibling_that_would_close_a_cycle_stays_apart():
    """SH coefficients computed from the projection's depths: fusing the SH op into the projection would make
    the group read its own output through another group, so it keeps a group of its own (no cycle error)."""
    g = tf.GraphBuilder("cycle")
    ts = {name: g.input(name, shape, "f32") for name, shape in (
        ("means", (8, 3)), ("scales", (8, 3)), ("quats", (8, 4)), ("opac", (8,)), ("view", (4, 4)), ("K", (3, 3)),
        ("sh", (8, 4, 3)))}
    outs = tf.project_gaussians(ts["means"], ts["scales"], ts["quats"], ts["opac"], ts["view"], ts["K"],
                                width=W, height=H)
    coeffs = ts["sh"] * tf.exp(tf.reshape(outs[2], (8, 1, 1)))
    g.output("colors", tf.sh_to_color(coeffs, ts["means"], ts["view"]))
    g.output("radii", outs[3])
    pr = run_pipeline(g.build(), fusion_rules())
    groups = [(k.group.kind, {n.op.value for n in k.group.nodes}) for k in pr.kernels.kernels]
    assert groups[0][0] == "project_gaussians" and "sh_to_color" not in groups[0][1]
    assert groups[-1] == ("sh_to_color", {"sh_to_color"}), groups
