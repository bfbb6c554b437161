"""`tilefuse render`: a Gaussian splatting scene (a 3DGS PLY) to a PNG through the compiled projection and
rasterization kernels."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import write_atomic
from .common import UsageError


def register(subparsers: Any) -> None:
    """Add the `render` subcommand to the tilefuse argparse CLI."""
    sp = subparsers.add_parser("render", help="render a Gaussian splatting PLY (Inria/gsplat layout) to a PNG")
    sp.add_argument("scene", help="a 3DGS .ply file (x, y, z, f_dc_*, opacity, scale_*, rot_*)")
    sp.add_argument("--size", default="640x480", help="WxH in pixels (default 640x480)")
    sp.add_argument("--camera", help="fx,fy,cx,cy in pixels (default: 60-degree horizontal FOV, centred)")
    sp.add_argument("--view", help="world->camera matrix, 12 or 16 comma-separated numbers, row-major (OpenCV "
                    "axes: x right, y down, z forward); default identity")
    sp.add_argument("--look-at", help="EX,EY,EZ,TX,TY,TZ: a camera at E looking at T (instead of --view)")
    sp.add_argument("--model", default="pinhole", choices=("pinhole", "fisheye"), help="camera model")
    sp.add_argument("--background", default="0,0,0", help="R,G,B in [0, 1] (default 0,0,0)")
    sp.add_argument("--target", default="sm_90", help="interp | sm_80 | sm_90 (the kernels are Triton)")
    sp.add_argument("--out", required=True, help="the PNG to write")
    sp.set_defaults(fn=cmd_render)


def floats(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    """A comma-separated list of finite numbers whose length is one of `counts` (else a UsageError)."""
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) not in counts or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{option} expects {' or '.join(map(str, counts))} comma-separated numbers, got {text!r}")
    return vals


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H), both positive."""
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise UsageError(f"--size expects WxH with positive integers (e.g. 640x480), got {text!r}")
    return int(w), int(h)


def view_matrix(args: argparse.Namespace) -> np.ndarray:
    """The world->camera matrix from --view or --look-at (identity when neither is given)."""
    from ..builders.splat_scene import look_at

    if args.view and args.look_at:
        raise UsageError("give either --view or --look-at, not both")
    if args.look_at:
        v = floats(args.look_at, "--look-at", (6,))
        return look_at(v[:3], v[3:])
    view = np.eye(4)
    if args.view:
        rows = np.reshape(floats(args.view, "--view", (12, 16)), (-1, 4))
        view[:len(rows)] = rows  # 12 numbers: the [R | t] rows, the last row stays 0 0 0 1
    return view


def cmd_render(args: argparse.Namespace) -> int:
    """Load args.scene, render it with the compiled kernels for args.target and write args.out."""
    from ..builders.splat_scene import Camera, encode_png, intrinsics, load_ply, render

    w, h = parse_size(args.size)
    fx, fy, cx, cy = (floats(args.camera, "--camera", (4,)) if args.camera
                      else [0.5 * w / math.tan(math.radians(30.0))] * 2 + [0.5 * w, 0.5 * h])
    bg = floats(args.background, "--background", (3,))
    cam = Camera(view_matrix(args), intrinsics(fx, fy, cx, cy), w, h)
    if args.target == "cpu":
        raise UsageError("tilefuse render runs the Triton splatting kernels: --target interp, sm_80 or sm_90")
    if args.target == "interp":
        from ..compiler import ensure_interpreter

        ensure_interpreter()
    scene = load_ply(args.scene)
    img = render(scene, cam, target=args.target, camera=args.model, background=bg)
    write_atomic(Path(args.out), encode_png(img))
    print(f"rendered {len(scene)} Gaussians (SH degree {scene.sh_degree}) at {w}x{h} ({args.model}, {args.target}) "
          f"to {args.out}")
    return 0
