"""Gaussian splatting scenes (builders/splat_scene.py): the seeded synthetic scene and its camera, the 3DGS
PLY loader on files written here with plyfile (activations, f_rest layout, malformed files refused by
name), the standard-library PNG encoder, and `tilefuse render` under the interpreter against the
float64 reference."""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest

from tilefuse.builders.splat_scene import (SH_C0, Camera, Scene, encode_png, intrinsics, load_ply, look_at, render,
                                           render_graph, save_ply, scene_inputs, synthetic_scene)
from tilefuse.cli.main import main
from tilefuse.errors import TilefuseError
from tilefuse.ir.reference import evaluate

plyfile = pytest.importorskip("plyfile")
PROPS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)] + \
    ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def raw_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Stored (pre-activation) values as the Inria code writes them: logit opacity, log scales, raw quats."""
    rng = np.random.default_rng(seed)
    cols = {p: rng.standard_normal(n).astype(np.float32) for p in PROPS}
    for i in range(3):
        cols[f"scale_{i}"] = rng.uniform(-5, -1, n).astype(np.float32)
    return cols


def write_ply(path, cols: dict[str, np.ndarray], element: str = "vertex") -> str:
    n = len(next(iter(cols.values())))
    arr = np.empty(n, dtype=[(p, "f4") for p in cols])
    for p, c in cols.items():
        arr[p] = c
    plyfile.PlyData([plyfile.PlyElement.describe(arr, element)]).write(str(path))
    return str(path)


def decode_png(data: bytes) -> np.ndarray:
    """A minimal decoder for the 8-bit RGB, filter-0 PNGs encode_png writes (checks every chunk's CRC)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert hdr is not None and hdr[2:] == (8, 2, 0, 0, 0)
    w, h = hdr[:2]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_synthetic_scene_is_seeded_activated_and_in_view():
    a, cam = synthetic_scene(500, seed=3)
    b, _ = synthetic_scene(500, seed=3)
    c, _ = synthetic_scene(500, seed=4)
    assert np.array_equal(a.means, b.means) and not np.array_equal(a.means, c.means)
    assert (a.scales > 0).all() and ((a.opacities > 0) & (a.opacities < 1)).all()
    assert np.allclose(np.linalg.norm(a.quats, axis=1), 1, atol=1e-6) and a.colors.shape == (500, 3)
    p = a.means @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
    assert (p[:, 2] > 0.5).all()  # every Gaussian in front of the camera
    uv = p[:, :2] / p[:, 2:] * np.diag(cam.K)[:2] + cam.K[:2, 2]
    inside = (uv >= 0).all(1) & (uv < (cam.width, cam.height)).all(1)
    assert inside.mean() > 0.9


def test_look_at_is_a_rigid_transform_onto_the_optical_axis():
    v = look_at((1.0, -2.0, -4.0), (0.5, 0.0, 1.0))
    r = v[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(v @ [1.0, -2.0, -4.0, 1.0], [0, 0, 0, 1])
    t = v @ [0.5, 0.0, 1.0, 1.0]
    assert np.allclose(t[:2], 0) and t[2] > 0
    assert np.allclose(look_at((0, 0, 0), (0, 0, 1)), np.eye(4))  # OpenCV axes: the identity camera
    with pytest.raises(TilefuseError, match="parallel"):
        look_at((0, 0, 0), (0, 1, 0))
    with pytest.raises(TilefuseError, match="fy=0"):
        intrinsics(10.0, 0.0, 1.0, 1.0)


def test_load_ply_activates_a_file_written_with_plyfile(tmp_path):
    cols = raw_columns(40)
    s = load_ply(write_ply(tmp_path / "s.ply", cols))
    assert len(s) == 40
    assert np.allclose(s.means, np.stack([cols["x"], cols["y"], cols["z"]], 1))
    assert np.allclose(s.opacities, 1 / (1 + np.exp(-cols["opacity"].astype(np.float64))), atol=1e-6)
    assert np.allclose(s.scales, np.exp(np.stack([cols[f"scale_{i}"] for i in range(3)], 1)), rtol=1e-6)
    q = np.stack([cols[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    assert np.allclose(s.quats, q / np.linalg.norm(q, axis=1, keepdims=True), atol=1e-6)  # (w, x, y, z) kept
    assert np.allclose(s.colors, 0.5 + SH_C0 * np.stack([cols[f"f_dc_{i}"] for i in range(3)], 1), atol=1e-6)
    # f_rest is channel-major in the file (all R coefficients, then G, then B): sh_rest[n, k, c]
    assert s.sh_rest.shape == (40, 3, 3)
    assert np.allclose(s.sh_rest[:, 1, 2], cols["f_rest_7"]) and np.allclose(s.sh_rest[:, 2, 0], cols["f_rest_2"])
    # what sh_to_color takes: [N, 4, 3] for degree 1, the raw f_dc_* first
    sh = s.sh_coeffs()
    assert s.sh_degree == 1 and sh.shape == (40, 4, 3) and sh.dtype == np.float32
    assert np.allclose(sh[:, 0], np.stack([cols[f"f_dc_{i}"] for i in range(3)], 1), atol=1e-5)
    assert np.array_equal(sh[:, 1:], s.sh_rest)


def test_save_ply_round_trips(tmp_path):
    a, _ = synthetic_scene(50, seed=1)
    b = load_ply(save_ply(tmp_path / "r.ply", a))
    for name in ("means", "scales", "quats", "opacities", "colors"):
        assert np.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name


@pytest.mark.parametrize("case, match", [
    ("missing", "no property 'scale_1'"),
    ("element", "no 'vertex' element"),
    ("nan", "property 'opacity' has 1 non-finite value.*vertex 7"),
    ("inf", "property 'x' has 1 non-finite value"),
    ("zero_quat", "rot_0..rot_3 are all zero at vertex 5"),
    ("sh_count", r"6 f_rest_\* properties; expected 0, 9, 24 or 45"),
    ("garbage", "not a readable PLY"),
])
def test_malformed_ply_is_refused_by_file_and_property(tmp_path, case, match):
    cols = raw_columns(12)
    path = tmp_path / f"{case}.ply"
    if case == "missing":
        del cols["scale_1"]
    elif case == "nan":
        cols["opacity"][7] = np.nan
    elif case == "inf":
        cols["x"][3] = np.inf
    elif case == "sh_count":
        for i in range(6, 9):
            del cols[f"f_rest_{i}"]
    elif case == "zero_quat":
        for i in range(4):
            cols[f"rot_{i}"][5] = 0.0
    if case == "garbage":
        path.write_bytes(b"ply\nformat nonsense\n")
    else:
        write_ply(path, cols, element="face" if case == "element" else "vertex")
    with pytest.raises(TilefuseError, match=match) as err:
        load_ply(path)
    assert str(path) in str(err.value)


def test_encode_png_decodes_to_the_rounded_image():
    img = np.random.default_rng(0).uniform(-0.2, 1.2, (5, 7, 3))
    got = decode_png(encode_png(img))
    assert np.array_equal(got, np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    with pytest.raises(TilefuseError, match=r"\[H, W, 3\]"):
        encode_png(np.zeros((4, 4)))


@pytest.mark.interp
def test_render_matches_the_reference():
    scene, cam = synthetic_scene(200, seed=5, width=64, height=48)
    img = render(scene, cam, target="interp", background=(0.1, 0.2, 0.3))
    want = evaluate(render_graph(200, 64, 48, background=(0.1, 0.2, 0.3)), scene_inputs(scene, cam))["image"]
    assert img.shape == (48, 64, 3)
    assert np.abs(img - want).max() < 2e-3
    assert (np.abs(img - (0.1, 0.2, 0.3)).max(-1) > 0.05).mean() > 0.3  # Gaussians cover a good part of it


@pytest.mark.interp
def test_render_cli_writes_a_png_of_a_written_ply(tmp_path, capsys):
    """A degree-3 SH scene through the PLY (f_rest channel-major) and `tilefuse render`: the image is the
    reference's with the view-dependent colours, not the DC colours alone."""
    dc_only, cam = synthetic_scene(300, seed=2, width=64, height=48)
    rest = np.random.default_rng(4).standard_normal((300, 15, 3)).astype(np.float32) * 0.4
    scene = Scene(dc_only.means, dc_only.scales, dc_only.quats, dc_only.opacities, dc_only.colors, rest)
    ply = save_ply(tmp_path / "scene.ply", scene)
    out = tmp_path / "img.png"
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    rc = main(["render", str(ply), "--camera", f"{fx},{fy},{cx},{cy}", "--size", "64x48", "--target", "interp",
               "--view", ",".join(repr(float(x)) for x in cam.viewmat[:3].ravel()), "--out", str(out)])
    assert rc == 0 and "rendered 300 Gaussians (SH degree 3)" in capsys.readouterr().out
    got = decode_png(out.read_bytes())
    assert got.shape == (48, 64, 3)
    assert (got.max(-1) > 12).mean() > 0.3  # not all background (black)
    cam64 = Camera(cam.viewmat, cam.K, 64, 48)
    want = evaluate(render_graph(300, 64, 48, sh_degree=3), scene_inputs(load_ply(ply), cam64, sh=True))
    assert np.abs(got.astype(np.float64) - np.clip(want["image"], 0, 1) * 255).max() <= 1.0
    flat = evaluate(render_graph(300, 64, 48), scene_inputs(load_ply(ply), cam64))["image"]
    assert np.abs(np.clip(flat, 0, 1) - np.clip(want["image"], 0, 1)).max() > 0.1  # the higher bands show


@pytest.mark.parametrize("args, match", [
    (["--size", "64by48"], "--size expects WxH"),
    (["--camera", "1,2,3"], "--camera expects 4"),
    (["--camera", "0,50,32,24"], "focal lengths must be positive"),
    (["--view", "1,0,0"], "--view expects 12 or 16"),
    (["--view", ",".join(["0"] * 12), "--look-at", "0,0,0,0,0,1"], "either --view or --look-at"),
    (["--target", "cpu"], "Triton splatting kernels"),
])
def test_render_cli_refuses_bad_options_in_one_line(tmp_path, capsys, args, match):
    ply = save_ply(tmp_path / "s.ply", synthetic_scene(5)[0])
    rc = main(["render", str(ply), "--out", str(tmp_path / "o.png"), "--target", "interp"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert re.search(match, err[0]), err[0]


def test_sampled_splat_operands_are_valid():
    """tilefuse run's random inputs for the splatting ops: a scene the projection accepts and that is mostly
    visible, and for a standalone rasterizer positive-definite conics, positive depths and radii."""
    from tilefuse.ir.sampling import random_inputs
    from tilefuse.ir.text import load_graph

    ins = random_inputs(load_graph("examples/splat_render.tf", {"N": 400}), seed=7)
    assert (ins["scales"] > 0).all() and (np.linalg.norm(ins["quats"], axis=1) > 1e-3).all()
    assert ((ins["opacities"] > 0) & (ins["opacities"] < 1)).all()
    assert ins["sh"].shape == (400, 16, 3) and np.abs(ins["sh"][:, 0]).mean() > 2 * np.abs(ins["sh"][:, 1:]).mean()
    k, v = ins["K"], ins["viewmat"].astype(np.float64)
    assert k[0, 0] > 0 and k[1, 1] > 0 and k[2, 2] == 1 and k[0, 1] == k[1, 0] == 0
    assert np.allclose(v[:3, :3] @ v[:3, :3].T, np.eye(3), atol=1e-5) and np.allclose(v[3], [0, 0, 0, 1])
    z = (ins["means"] @ v[:3, :3].T + v[:3, 3])[:, 2]
    assert 0.85 < (z > 1).mean() < 1 and (z < 0).any()  # mostly in front, a few behind the camera

    import tilefuse as tf
    g = tf.GraphBuilder("raster_only")
    ts = [g.input(name, shape, d) for name, shape, d in (
        ("m2d", (300, 2), "f32"), ("con", (300, 3), "f32"), ("feat", (300, 16), "f32"), ("opac", (300,), "f32"),
        ("dep", (300,), "f32"), ("rad", (300,), "i32"))]
    g.output("img", tf.rasterize_gaussians(*ts, width=64, height=48)[0])
    r = random_inputs(g.build(), seed=1)
    a, b, c = r["con"].T.astype(np.float64)
    assert (a > 0).all() and (a * c - b * b > 0).all() and (r["dep"] > 0).all() and (r["rad"] > 0).all()
    assert r["feat"].shape == (300, 16) and ((r["feat"] >= 0) & (r["feat"] <= 1)).all()


@pytest.mark.interp
def test_splat_example_runs_on_interp(capsys):
    assert main(["run", "examples/splat_render.tf", "--target", "interp", "--set", "N=128"]) == 0
    out = capsys.readouterr().out
    assert "image: max |err| vs reference" in out and "T: max |err| vs reference" in out and "FAIL" not in out
