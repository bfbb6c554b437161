"""Gaussian splatting scenes: a seeded synthetic scene with a camera looking at it, and the PLY files the
Inria 3DGS code and gsplat write, read into activated arrays (the inputs project_gaussians and
rasterize_gaussians take)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..deps import require
from ..errors import TilefuseError
from ..ir.graph import Graph

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic, 1 / (2 sqrt(pi))


class SceneError(TilefuseError, ValueError):
    """A scene file or scene array that cannot be rendered (the message names the file and property)."""


@dataclass(frozen=True)
class Scene:
    """N Gaussians, activated: means [N,3], scales [N,3] (> 0), quats [N,4] (w,x,y,z, unit), opacities [N]
    in (0,1), colors [N,3] (RGB from the DC SH term); sh_rest [N,K,3] holds the higher SH bands (K=0 if none)."""

    means: np.ndarray
    scales: np.ndarray
    quats: np.ndarray
    opacities: np.ndarray
    colors: np.ndarray
    sh_rest: np.ndarray

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        """The SH degree the coefficients hold: 0 (DC only) to 3 (sh_rest of 15 bands' coefficients)."""
        return int(round(math.sqrt(1 + self.sh_rest.shape[1]))) - 1

    def sh_coeffs(self) -> np.ndarray:
        """[N, (d+1)^2, 3] float32 SH coefficients for sh_to_color: the DC term (colors - 0.5) / C0 (a PLY's
        f_dc_*), then sh_rest."""
        dc = (np.asarray(self.colors, np.float64) - 0.5) / SH_C0
        return np.concatenate([dc[:, None, :], np.asarray(self.sh_rest, np.float64)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Camera:
    """A pinhole/fisheye camera: world -> camera view matrix [4,4] (OpenCV axes: x right, y down, z forward),
    intrinsics K [3,3] and the image size."""

    viewmat: np.ndarray
    K: np.ndarray
    width: int
    height: int


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, -1.0, 0.0)) -> np.ndarray:
    """World -> camera view matrix [4,4] for a camera at `eye` looking at `target` (OpenCV axes, so the
    default `up` is -y: image rows grow downwards)."""
    e, t, u = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = t - e
    if np.linalg.norm(fwd) == 0:
        raise SceneError(f"look_at: eye {tuple(e)} equals target; give a target away from the eye")
    z = fwd / np.linalg.norm(fwd)
    x = np.cross(z, u)  # camera x (right) = forward x up for OpenCV axes (y down = -up)
    if np.linalg.norm(x) < 1e-9:
        raise SceneError(f"look_at: up {tuple(u)} is parallel to the viewing direction; give another up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    view = np.eye(4)
    view[:3, :3] = np.stack([x, y, z])
    view[:3, 3] = -view[:3, :3] @ e
    return view


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """The 3x3 camera matrix K; focal lengths must be positive."""
    if not (fx > 0 and fy > 0) or not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
        raise SceneError(f"intrinsics: focal lengths must be positive and finite, got fx={fx}, fy={fy}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def synthetic_scene(n: int, seed: int = 0, width: int = 64, height: int = 48,
                    box: float = 1.0) -> tuple[Scene, Camera]:
    """n Gaussians uniform in the cube [-box, box]^3 with random scales, rotations, colours and opacities,
    and a camera 3*box from the centre looking at it with a 60-degree horizontal field of view."""
    if n <= 0:
        raise SceneError(f"synthetic_scene: n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    means = rng.uniform(-box, box, (n, 3))
    scales = box * np.exp(rng.uniform(math.log(0.01), math.log(0.15), (n, 3)))
    quats = rng.standard_normal((n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scene = Scene(means=means.astype(np.float32), scales=scales.astype(np.float32), quats=quats.astype(np.float32),
                  opacities=rng.uniform(0.3, 1.0, n).astype(np.float32),
                  colors=rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32), sh_rest=np.zeros((n, 0, 3), np.float32))
    f = 0.5 * width / math.tan(math.radians(30.0))
    cam = Camera(look_at((0.3 * box, -0.4 * box, -3.0 * box), (0.0, 0.0, 0.0)),
                 intrinsics(f, f, 0.5 * width, 0.5 * height), width, height)
    return scene, cam


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free for large |x|


def _column(vertex: np.ndarray, prop: str, path: Path) -> np.ndarray:
    """One property of the vertex element as float64, refusing a missing or non-finite column."""
    names = vertex.dtype.names or ()
    if prop not in names:
        raise SceneError(f"{path}: the 'vertex' element has no property '{prop}' (a 3DGS PLY has x, y, z, "
                         "f_dc_0..2, opacity, scale_0..2, rot_0..3)")
    col = np.asarray(vertex[prop], dtype=np.float64)
    bad = ~np.isfinite(col)
    if bad.any():
        raise SceneError(f"{path}: property '{prop}' has {int(bad.sum())} non-finite value(s), first at vertex "
                         f"{int(np.argmax(bad))}")
    return col


def _rest_names(names: Sequence[str]) -> list[str]:
    rest = [p for p in names if p.startswith("f_rest_")]
    return sorted(rest, key=lambda p: int(p.split("_")[-1]) if p.split("_")[-1].isdigit() else -1)


def load_ply(path: str | Path) -> Scene:
    """Read a 3DGS PLY (Inria / gsplat layout) into an activated Scene: sigmoid(opacity), exp(scale_*),
    normalised rot_* (w, x, y, z), colours 0.5 + C0 * f_dc_* (the DC SH term; f_rest_* kept in sh_rest,
    stored channel-major as the Inria code writes it)."""
    plyfile = require("plyfile", "reading a Gaussian splatting PLY")
    p = Path(path)
    try:
        ply = plyfile.PlyData.read(str(p))
    except OSError:
        raise  # a missing or unreadable file: the CLI reports it by name
    except Exception as err:  # plyfile raises PlyParseError, ValueError, struct errors... on bad headers
        raise SceneError(f"{p}: not a readable PLY file ({type(err).__name__}: {err})") from err
    elements = [e.name for e in ply.elements]
    if "vertex" not in elements:
        raise SceneError(f"{p}: no 'vertex' element (found {elements}); a 3DGS PLY stores Gaussians as vertices")
    v = ply["vertex"].data
    if len(v) == 0:
        raise SceneError(f"{p}: the 'vertex' element is empty; a scene needs at least one Gaussian")

    def cols(*props: str) -> np.ndarray:
        return np.stack([_column(v, q, p) for q in props], axis=1)

    quats = cols("rot_0", "rot_1", "rot_2", "rot_3")
    qn = np.linalg.norm(quats, axis=1)
    if (qn == 0).any():
        raise SceneError(f"{p}: properties rot_0..rot_3 are all zero at vertex {int(np.argmax(qn == 0))} "
                         "(an all-zero quaternion has no rotation)")
    rest = _rest_names(v.dtype.names or ())
    if len(rest) % 3 or len(rest) // 3 + 1 not in (1, 4, 9, 16):
        raise SceneError(f"{p}: {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (3 channels x the "
                         "(d+1)^2 - 1 higher-band coefficients of SH degree d = 0..3)")
    sh_rest = (cols(*rest).reshape(len(v), 3, len(rest) // 3).transpose(0, 2, 1) if rest
               else np.zeros((len(v), 0, 3)))
    with np.errstate(over="ignore"):
        scales = np.exp(cols("scale_0", "scale_1", "scale_2"))
    if not np.isfinite(scales).all():
        raise SceneError(f"{p}: scale_* (log scales) overflow exp() at vertex "
                         f"{int(np.argmax(~np.isfinite(scales).all(1)))}")
    return Scene(means=cols("x", "y", "z").astype(np.float32), scales=scales.astype(np.float32),
                 quats=(quats / qn[:, None]).astype(np.float32),
                 opacities=_sigmoid(_column(v, "opacity", p)).astype(np.float32),
                 colors=(0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2")).astype(np.float32),
                 sh_rest=sh_rest.astype(np.float32))


def save_ply(path: str | Path, scene: Scene) -> Path:
    """Write `scene` as a 3DGS PLY (the inverse activations of load_ply: logit opacity, log scales, f_dc)."""
    plyfile = require("plyfile", "writing a Gaussian splatting PLY")
    n, k = len(scene), scene.sh_rest.shape[1]
    op = np.clip(np.asarray(scene.opacities, np.float64), 1e-7, 1 - 1e-7)
    cols: dict[str, np.ndarray] = {a: scene.means[:, i] for i, a in enumerate("xyz")}
    cols.update({f"f_dc_{i}": (scene.colors[:, i] - 0.5) / SH_C0 for i in range(3)})
    rest = np.asarray(scene.sh_rest).transpose(0, 2, 1).reshape(n, 3 * k)
    cols.update({f"f_rest_{i}": rest[:, i] for i in range(3 * k)})
    cols["opacity"] = np.log(op / (1 - op))
    cols.update({f"scale_{i}": np.log(scene.scales[:, i]) for i in range(3)})
    cols.update({f"rot_{i}": scene.quats[:, i] for i in range(4)})
    arr = np.empty(n, dtype=[(name, "f4") for name in cols])
    for name, c in cols.items():
        arr[name] = c
    out = Path(path)
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(out))
    return out


def render_graph(n: int, width: int, height: int, camera: str = "pinhole", tile: int = 16,
                 background: Sequence[float] = (0.0, 0.0, 0.0), sh_degree: int | None = None) -> Graph:
    """The render pipeline as a graph: project_gaussians then rasterize_gaussians over n Gaussians; inputs
    means, scales, quats, opacities, colors, viewmat, K (f32), outputs image [H,W,3] and T [H,W]. With
    `sh_degree` d the colours are sh_to_color of an input sh [n, (d+1)^2, 3] instead (fused into the
    projection kernel)."""
    from ..frontend import GraphBuilder
    from .splat import project_gaussians, rasterize_gaussians, sh_to_color

    g = GraphBuilder(f"splat_render_{camera}" + ("" if sh_degree is None else f"_sh{sh_degree}"))
    colors = ("colors", (n, 3)) if sh_degree is None else ("sh", (n, (sh_degree + 1) ** 2, 3))
    t = {name: g.input(name, shape, "f32") for name, shape in (
        ("means", (n, 3)), ("scales", (n, 3)), ("quats", (n, 4)), ("opacities", (n,)), colors,
        ("viewmat", (4, 4)), ("K", (3, 3)))}
    m2d, con, dep, rad = project_gaussians(t["means"], t["scales"], t["quats"], t["opacities"], t["viewmat"],
                                           t["K"], width=width, height=height, camera=camera)
    rgb = t["colors"] if sh_degree is None else sh_to_color(t["sh"], t["means"], t["viewmat"])
    img, trans = rasterize_gaussians(m2d, con, rgb, t["opacities"], dep, rad, width=width, height=height,
                                     tile=tile, background=background)
    g.output("image", img)
    g.output("T", trans)
    return g.build()


def scene_inputs(scene: Scene, cam: Camera, sh: bool = False) -> dict[str, np.ndarray]:
    """The inputs render_graph takes, as f32 arrays (with `sh`, the SH coefficients instead of colours)."""
    colors = ("sh", scene.sh_coeffs()) if sh else ("colors", scene.colors)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (
        ("means", scene.means), ("scales", scene.scales), ("quats", scene.quats), ("opacities", scene.opacities),
        colors, ("viewmat", cam.viewmat), ("K", cam.K))}


def render(scene: Scene, cam: Camera, target: str = "interp", camera: str = "pinhole",
           background: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Render `scene` seen by `cam` with tilefuse's kernels for `target` -> image [H, W, 3] float32, its
    colours from the scene's spherical harmonics (all the degrees it holds) for the camera's viewpoint."""
    from ..compiler import compile_graph

    g = render_graph(len(scene), cam.width, cam.height, camera=camera, background=background,
                     sh_degree=scene.sh_degree)
    cg = compile_graph(g, target=target, aot=False)
    out = cg.run(scene_inputs(scene, cam, sh=True))
    img = out["image"]
    return np.asarray(img.numpy() if hasattr(img, "numpy") else img, dtype=np.float32)


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of `image` [H, W, 3] with values in [0, 1] (clipped), written with zlib alone."""
    import struct
    import zlib

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise SceneError(f"encode_png: expected an [H, W, 3] image, got shape {img.shape}")
    h, w = img.shape[:2]
    px = np.round(np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    raw = b"".join(b"\x00" + px[r].tobytes() for r in range(h))  # filter type 0 (None) on each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
