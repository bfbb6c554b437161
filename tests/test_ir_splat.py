"""Gaussian splatting: projection at known positions, rasterization vs a brute-force per-pixel loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import VerifyError, parse_graph
from tilefuse.ir.reference import evaluate

RNG = np.random.default_rng(99)
W, H = 48, 32
KMAT = np.array([[100.0, 0, 24.0], [0, 90.0, 16.0], [0, 0, 1]])


def project_graph(n, camera="pinhole", near=0.01):
    g = tf.GraphBuilder("proj")
    ts = [g.input(name, shape, "f32") for name, shape in (("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)),
                                                          ("opac", (n,)), ("view", (4, 4)), ("K", (3, 3)))]
    outs = tf.project_gaussians(*ts, width=W, height=H, camera=camera, near=near)
    for name, t in zip(("means2d", "conics", "depths", "radii"), outs):
        g.output(name, t)
    gr = g.build()
    assert parse_graph(gr.text).key == gr.key
    return gr


def rotation(axis, angle):
    """Rodrigues' formula, and the matching (w, x, y, z) quaternion."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    r = np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx
    return r, np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * a])


def test_infer_and_verify():
    gr = project_graph(5)
    shapes = {name: (n.dtype.name, n.shape) for name, n in gr.outputs}
    assert shapes == {"means2d": ("f32", (5, 2)), "conics": ("f32", (5, 3)), "depths": ("f32", (5,)),
                      "radii": ("i32", (5,))}
    g = tf.GraphBuilder("bad")
    m = g.input("m", (5, 3), "f32")
    q = g.input("q", (5, 3), "f32")
    with pytest.raises(VerifyError, match=r"project_gaussians of means3d f32\[5, 3\]: quats is f32\[5, 3\]; want"):
        tf.project_gaussians(m, m, q, g.input("o", (5,), "f32"), g.input("v", (4, 4), "f32"),
                             g.input("k", (3, 3), "f32"), width=W, height=H)
    m2 = g.input("m2", (5, 2), "f32")
    c = g.input("c", (5, 3), "f32")
    with pytest.raises(VerifyError, match=r"background needs 3 finite numbers"):
        tf.rasterize_gaussians(m2, c, c, g.input("o2", (5,), "f32"), g.input("d", (5,), "f32"),
                               g.input("r", (5,), "i32"), width=W, height=H, background=(1.0,))


def test_pinhole_known_position_and_radius():
    view = np.eye(4)
    view[:3, 3] = (0.1, 0.0, 1.0)  # camera translation: world (0.4, -0.25, 3) -> camera (0.5, -0.25, 4)
    r, quat = rotation((1, 2, 3), 0.7)
    means = np.array([[0.4, -0.25, 3.0], [0.0, 0.0, -2.0], [30.0, 0.0, 1.0]])
    scales = np.array([[0.05, 0.1, 0.2], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]])
    quats = np.stack([quat, [1, 0, 0, 0], [1, 0, 0, 0]]) * 2.0  # unnormalised on purpose
    out = evaluate(project_graph(3), {"means": means, "scales": scales, "quats": quats, "opac": np.ones(3),
                                      "view": view, "K": KMAT})
    np.testing.assert_allclose(out["means2d"][0], [100 * 0.5 / 4 + 24, 90 * -0.25 / 4 + 16], rtol=1e-6)
    assert out["depths"][0] == pytest.approx(4.0)
    x, y, z = 0.5, -0.25, 4.0
    jac = np.array([[100 / z, 0, -100 * x / z**2], [0, 90 / z, -90 * y / z**2]])
    sigma = r @ np.diag(scales[0] ** 2) @ r.T
    cov2d = jac @ sigma @ jac.T + 0.3 * np.eye(2)
    a, b, c = out["conics"][0]
    np.testing.assert_allclose(np.array([[a, b], [b, c]]) @ cov2d, np.eye(2), atol=1e-5)
    lam = np.linalg.eigvalsh(cov2d).max()
    assert out["radii"][0] == math.ceil(3 * math.sqrt(lam))
    # Behind the camera (depth -1 < near) and far off-screen: culled.
    assert out["radii"][1] == 0 and out["radii"][2] == 0
    assert out["depths"][1] == pytest.approx(-1.0)


def test_pinhole_jacobian_clamp():
    # x/z = 0.9 exceeds 1.3 * tan_fovx = 1.3 * 0.24 = 0.312: the Jacobian uses the clamped tx.
    means = np.array([[0.9, 0.0, 1.0]])
    ident = np.array([[1, 0, 0, 0.0]])
    out = evaluate(project_graph(1), {"means": means, "scales": np.full((1, 3), 0.05), "quats": ident,
                                      "opac": np.ones(1), "view": np.eye(4), "K": KMAT})
    # Off-screen (x = 114 > 48 + radius): culled, so radius, means2d and conic are all 0.
    assert out["radii"][0] == 0 and not out["means2d"].any() and not out["conics"].any()
    means = np.array([[0.35, 0.0, 1.0]])  # x/z = 0.35 > 0.312, still on screen thanks to its radius
    out = evaluate(project_graph(1), {"means": means, "scales": np.full((1, 3), 0.3), "quats": ident,
                                      "opac": np.ones(1), "view": np.eye(4), "K": KMAT})
    tx = 1.3 * 0.5 * W / 100
    jac = np.array([[100.0, 0, -100 * tx], [0, 90.0, 0]])
    cov2d = jac @ (0.09 * np.eye(3)) @ jac.T + 0.3 * np.eye(2)
    a, b, c = out["conics"][0]
    np.testing.assert_allclose(np.array([[a, b], [b, c]]) @ cov2d, np.eye(2), atol=1e-5)
    assert out["radii"][0] > 0


def test_fisheye_equidistant_vs_finite_differences():
    fx, fy, cx, cy = KMAT[0, 0], KMAT[1, 1], KMAT[0, 2], KMAT[1, 2]

    def proj(p):
        x, y, z = p
        rr = math.hypot(x, y)
        th = math.atan2(rr, z)
        return np.array([fx * th * x / rr + cx, fy * th * y / rr + cy])

    r, quat = rotation((0.3, -1, 0.5), 1.1)
    means = np.array([[0.2, 0.1, 2.0], [1e-9, 0.0, 3.0]])
    scales = np.array([[0.02, 0.05, 0.03], [0.02, 0.02, 0.02]])
    quats = np.stack([quat, [1, 0, 0, 0]])
    out = evaluate(project_graph(2, "fisheye"), {"means": means, "scales": scales, "quats": quats,
                                                 "opac": np.ones(2), "view": np.eye(4), "K": KMAT})
    np.testing.assert_allclose(out["means2d"][0], proj(means[0]), rtol=1e-6)
    h = 1e-6
    jac = np.stack([(proj(means[0] + h * e) - proj(means[0] - h * e)) / (2 * h) for e in np.eye(3)], -1)
    cov2d = jac @ (r @ np.diag(scales[0] ** 2) @ r.T) @ jac.T + 0.3 * np.eye(2)
    a, b, c = out["conics"][0]
    np.testing.assert_allclose(np.array([[a, b], [b, c]]) @ cov2d, np.eye(2), atol=1e-4)
    # On the optical axis the map is (fx x / z, fy y / z) to first order.
    np.testing.assert_allclose(out["means2d"][1], [cx, cy], atol=1e-6)
    a, b, c = out["conics"][1]
    cov_axis = np.diag([(fx / 3) ** 2, (fy / 3) ** 2]) * 4e-4 + 0.3 * np.eye(2)
    np.testing.assert_allclose(np.array([[a, b], [b, c]]) @ cov_axis, np.eye(2), atol=1e-4)


def brute_force(m2d, con, col, opac, dep, rad, bg, tile=16, pc=0.5):
    """Per pixel: the Gaussians whose tile rectangle holds the pixel's tile, front to back."""
    gx, gy = -(-W // tile), -(-H // tile)
    img = np.zeros((H, W, col.shape[1]))
    final_t = np.zeros((H, W))
    rects = []
    for g in range(len(dep)):
        x, y, r = m2d[g, 0], m2d[g, 1], rad[g]
        rects.append((min(gx, max(0, math.floor((x - r) / tile))), min(gy, max(0, math.floor((y - r) / tile))),
                      min(gx, max(0, math.floor((x + r + tile - 1) / tile))),
                      min(gy, max(0, math.floor((y + r + tile - 1) / tile)))))
    order = sorted(range(len(dep)), key=lambda g: (dep[g], g))
    for py in range(H):
        for px in range(W):
            tx, ty = px // tile, py // tile
            t, c = 1.0, np.zeros(col.shape[1])
            for g in order:
                x0, y0, x1, y1 = rects[g]
                if rad[g] <= 0 or not (x0 <= tx < x1 and y0 <= ty < y1):
                    continue
                dx, dy = m2d[g, 0] - (px + pc), m2d[g, 1] - (py + pc)
                power = -0.5 * (con[g, 0] * dx * dx + con[g, 2] * dy * dy) - con[g, 1] * dx * dy
                if power > 0:
                    continue
                alpha = min(0.99, opac[g] * math.exp(power))
                if alpha < 1 / 255:
                    continue
                if t * (1 - alpha) < 1e-4:
                    break
                c += col[g] * alpha * t
                t *= 1 - alpha
            img[py, px] = c + t * np.asarray(bg)
            final_t[py, px] = t
    return img, final_t


def raster(m2d, con, col, opac, dep, rad, bg):
    n = len(dep)
    g = tf.GraphBuilder("rast")
    ts = [g.input(name, shape, d) for name, shape, d in (
        ("m2d", (n, 2), "f32"), ("con", (n, 3), "f32"), ("col", (n, 3), "f32"), ("opac", (n,), "f32"),
        ("dep", (n,), "f32"), ("rad", (n,), "i32"))]
    img, t = tf.rasterize_gaussians(*ts, width=W, height=H, background=bg)
    g.output("img", img)
    g.output("T", t)
    gr = g.build()
    assert parse_graph(gr.text).key == gr.key
    assert (gr.output("img").shape, gr.output("T").shape) == ((H, W, 3), (H, W))
    out = evaluate(gr, {"m2d": m2d, "con": con, "col": col, "opac": opac, "dep": dep, "rad": rad})
    return out["img"], out["T"]


def test_rasterize_two_gaussians_vs_brute_force():
    m2d = np.array([[20.3, 14.7], [27.1, 18.2]])
    con = np.array([[0.05, 0.01, 0.08], [0.02, -0.005, 0.03]])
    col = RNG.random((2, 3))
    opac, dep, rad = np.array([0.8, 0.6]), np.array([2.0, 1.5]), np.array([12, 20])
    bg = (0.1, 0.2, 0.3)
    img, t = raster(m2d, con, col, opac, dep, rad, bg)
    want_img, want_t = brute_force(m2d, con, col, opac, dep, rad, bg)
    np.testing.assert_allclose(img, want_img, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t, want_t, rtol=1e-6, atol=1e-7)


def test_rasterize_early_stop_and_random_scene():
    # Three near-opaque Gaussians on one spot: the third would take T below 1e-4 and is not added.
    m2d = np.array([[10.5, 10.5]] * 3)
    con = np.array([[0.01, 0.0, 0.01]] * 3)
    col = np.eye(3)
    img, t = raster(m2d, con, col, np.ones(3), np.array([1.0, 2.0, 3.0]), np.array([10, 10, 10]), (0.0, 0.0, 0.0))
    assert t[10, 10] == pytest.approx(1e-4, rel=1e-3) and img[10, 10, 2] == 0.0
    # Random scene through the projection, compared with the brute force.
    n = 40
    gp = project_graph(n)
    means = np.column_stack([RNG.uniform(-0.8, 0.8, n), RNG.uniform(-0.6, 0.6, n), RNG.uniform(2, 6, n)])
    quats = RNG.standard_normal((n, 4))
    proj = evaluate(gp, {"means": means, "scales": RNG.uniform(0.02, 0.2, (n, 3)), "quats": quats,
                         "opac": np.ones(n), "view": np.eye(4), "K": KMAT})
    assert (proj["radii"] > 0).sum() > n // 2
    opac = RNG.uniform(0.3, 1.0, n)
    cols = RNG.random((n, 3))
    args = (proj["means2d"], proj["conics"], cols, opac, proj["depths"], proj["radii"], (1.0, 1.0, 1.0))
    img, t = raster(*args)
    want_img, want_t = brute_force(*args)
    np.testing.assert_allclose(img, want_img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t, want_t, rtol=1e-5, atol=1e-7)
    assert t.min() < 0.5
