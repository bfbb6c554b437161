"""Triton template of the rasterization backward (kernels/splat/raster_bwd_spec.py): the zero launch,
the forward's binning functions (raster_template.py, rendered for this spec) and the back-to-front
gradient launch, each with the parameters its launch in the plan passes, in that order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...schedule.config import Config
from .raster_template import _binning, _params, _rect

if TYPE_CHECKING:
    from .raster_bwd_spec import RasterBwdSpec


def _zero(spec: RasterBwdSpec, p: dict[str, str]) -> str:
    stores = [f"    for k in range({spec.width_of(role)}):\n"
              f"        tl.store({out} + g * {spec.width_of(role)} + k, zero, mask=ok)"
              for role, out in sorted(spec.outs.items())]
    return (f"\n\n@triton.jit\ndef {spec.name}_zero({p['zero']}):\n"
            f"    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)\n    ok = g < {spec.N}\n"
            "    zero = tl.zeros([BLOCK_G], tl.float32)\n" + "\n".join(stores) + "\n")


def _head(spec: RasterBwdSpec) -> list[str]:
    """Per pixel: final T, last contributor, image gradient; the walk's start by a binary search."""
    o, t, c = spec.ops, spec.tile, spec.C
    pc = repr(float(spec.pixel_center))
    lines = ["t = tl.program_id(0)", f"pix = tl.arange(0, {t * t})",
             f"px = (t % {spec.gx}) * {t} + pix % {t}", f"py = (t // {spec.gx}) * {t} + pix // {t}",
             f"inside = (px < {spec.width}) & (py < {spec.height})",
             f"fxp = px.to(tl.float32) + {pc}", f"fyp = py.to(tl.float32) + {pc}",
             "start = tl.load(ranges + t * 2)", "end = tl.load(ranges + t * 2 + 1)", "jj = tl.arange(0, BATCH)",
             f"T = tl.load({o['final_T'].at('py', 'px')}, mask=inside, other=1.0).to(tl.float32)",
             f"lid = tl.load({o['last'].at('py', 'px')}, mask=inside, other=-1).to(tl.int32)"]
    lines += [f"g{k} = tl.load({o['d_image'].at('py', 'px', str(k))}, mask=inside, other=0.0).to(tl.float32)"
              for k in range(c)]
    bg = " + ".join([f"g{k} * {spec.background[k]!r}" for k in range(c)])
    if "d_final_T" in o:
        bg += f" + tl.load({o['d_final_T'].at('py', 'px')}, mask=inside, other=0.0).to(tl.float32)"
    lines += [f"kend = T * ({bg})",
              # depths >= 0 (checked on the host), so float bits order like the floats, as in the keys
              f"ld = tl.load({o['depths'].at('lid')}, mask=lid >= 0, other=0.0).to(tl.float32)",
              "mb = tl.max(tl.where(lid >= 0, ld.to(tl.int32, bitcast=True), -1), 0)",
              "lo = start", "hi = end",
              "while lo < hi:",
              "    mid = (lo + hi) // 2",
              "    beyond = (tl.load(keys + mid) & 0xFFFFFFFF).to(tl.int32) > mb",
              "    hi = tl.where(beyond, mid, hi)",
              "    lo = tl.where(beyond, lo, mid + 1)",
              "b = lo", f"S = tl.zeros([{t * t}], tl.float32)", f"seen = tl.zeros([{t * t}], tl.int32)"]
    return lines


def _batch(spec: RasterBwdSpec) -> list[str]:
    """One batch back to front: which entries each pixel composited, T before each, the gradients."""
    o, c = spec.ops, spec.C
    lines = ["j = b - BATCH + jj", "jm = j >= start", "gid = tl.load(sids + j, mask=jm, other=0)",
             f"mx = tl.load({o['means2d'].at('gid', '0')}, mask=jm, other=0.0).to(tl.float32)",
             f"my = tl.load({o['means2d'].at('gid', '1')}, mask=jm, other=0.0).to(tl.float32)"]
    lines += [f"k{i} = tl.load({o['conics'].at('gid', str(i))}, mask=jm, other=0.0).to(tl.float32)"
              for i in range(3)]
    lines += [f"c{k} = tl.load({o['colors'].at('gid', str(k))}, mask=jm, other=0.0).to(tl.float32)"
              for k in range(c)]
    lines += [f"op = tl.load({o['opacities'].at('gid')}, mask=jm, other=0.0).to(tl.float32)",
              "dx = mx[None, :] - fxp[:, None]", "dy = my[None, :] - fyp[:, None]",
              "power = -0.5 * (k0[None, :] * dx * dx + k2[None, :] * dy * dy) - k1[None, :] * dx * dy",
              "vis = tl.exp(tl.minimum(power, 0.0))", "og = op[None, :] * vis", "alpha = tl.minimum(0.99, og)",
              "hit = (gid[None, :] == lid[:, None]) & jm[None, :]",
              # at or before the pixel's last contributor: it is here or in a later (already walked) batch
              "upto = (tl.cumsum(hit.to(tl.int32), axis=1, reverse=True) > 0) | (seen > 0)[:, None]",
              "live = upto & jm[None, :] & (power <= 0.0) & (alpha >= 1.0 / 255.0)",
              "om = tl.where(live, 1.0 - alpha, 1.0)",
              "rcp = tl.cumprod(om, axis=1, reverse=True)",
              "tb = T[:, None] / rcp",
              "cg = " + " + ".join(f"c{k}[None, :] * g{k}[:, None]" for k in range(c)),
              "wt = tl.where(live, alpha * tb, 0.0)", "s = wt * cg",
              "behind = S[:, None] + tl.cumsum(s, axis=1, reverse=True) - s",
              "da = tb * cg - (behind + kend[:, None]) / om",
              "un = live & (og <= 0.99)", "dpow = tl.where(un, da * alpha, 0.0)",
              "am = jm & (tl.max(live.to(tl.int32), axis=0) > 0)"]
    sums = {"d_means2d": ["-tl.sum(dpow * (k0[None, :] * dx + k1[None, :] * dy), axis=0)",
                          "-tl.sum(dpow * (k2[None, :] * dy + k1[None, :] * dx), axis=0)"],
            "d_conics": ["-0.5 * tl.sum(dpow * dx * dx, axis=0)", "-tl.sum(dpow * dx * dy, axis=0)",
                         "-0.5 * tl.sum(dpow * dy * dy, axis=0)"],
            "d_colors": [f"tl.sum(wt * g{k}[:, None], axis=0)" for k in range(c)],
            "d_opacities": ["tl.sum(tl.where(un, da * vis, 0.0), axis=0)"]}
    for role, out in sorted(spec.outs.items()):
        n = spec.width_of(role)
        lines += [f"tl.atomic_add({out} + gid * {n} + {i}, {v}, mask=am)" for i, v in enumerate(sums[role])]
    lines += ["T = T / tl.min(rcp, axis=1)", "S += tl.sum(s, axis=1)",
              "seen = seen | tl.max(hit.to(tl.int32), axis=1)", "b -= BATCH"]
    return lines


def _render_bwd(spec: RasterBwdSpec, p: dict[str, str]) -> str:
    body = [f"    {ln}" for ln in _head(spec)] + ["    while b > start:"]
    body += [f"        {ln}" for ln in _batch(spec)]
    return f"\n\n@triton.jit\ndef {spec.name}_render_bwd({p['render_bwd']}):\n" + "\n".join(body) + "\n"


def render(spec: RasterBwdSpec, config: Config, interpret: bool = False) -> str:
    """The backward's module: zero, the binning functions and the back-to-front gradient launch."""
    p = _params(spec, config)
    return (header(spec, config, "triton") + "import triton\nimport triton.language as tl\n\n" + _rect(spec)
            + _binning(spec, p) + _zero(spec, p) + _render_bwd(spec, p))
