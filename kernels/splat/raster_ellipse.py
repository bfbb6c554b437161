"""The ellipse-tile test of the rasterizer's binning (config knob ISECT="ellipse", as FlashGS and Speedy-Splat
do): of the tiles in a Gaussian's rectangle (the reference's rule, ir/splat_op.py tile_rect), keep those
whose pixel centres the Gaussian can reach with alpha >= 1/255.

A Gaussian adds to a pixel only where o exp(power) >= 1/255, power = -q/2 with the conic's quadratic form
q(d) = a dx^2 + 2 b dx dy + c dy^2 of d = pixel centre - mean, i.e. where q(d) <= 2 ln(255 o). The minimum of
q over a tile's box of pixel centres is 0 when the mean is inside the box, else on one of its four edges,
where q is a parabola in the free coordinate: its minimiser clamped to the edge gives the edge's minimum.
The tile is kept when that minimum is within the threshold (plus a margin of 1e-3 + 1e-4 relative for
float32 rounding), so no tile that the rectangle rule gives and that a pixel of it would take a colour
from is dropped: both rules give the same image, the ellipse one with fewer (tile, Gaussian) keys to sort
and composite. A conic that is not positive definite keeps every tile of its rectangle."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .raster_spec import RasterSpec


def _shape_args(spec: RasterSpec) -> str:
    o = spec.ops
    return ", ".join(dict.fromkeys((o["means2d"].arg, o["conics"].arg, o["opacities"].arg)))


def helpers(spec: RasterSpec) -> str:
    """`_shape_{name}` (a Gaussian's mean, conic and threshold) and `_hit_{name}` (the test for one tile)."""
    o, t, name = spec.ops, spec.tile, spec.name
    pc = repr(float(spec.pixel_center))

    def edge(q: str, f: str, lo: str, hi: str, kf: str, ku: str) -> list[str]:
        # along the edge where one coordinate is f, q = kf f^2 + 2 b f u + ku u^2 in the other coordinate u
        # is least at u = -b f / ku, clamped to the edge [lo, hi] (ku > 0 where the test counts)
        return [f"{q}u = tl.minimum(tl.maximum(-k1 * {f} / tl.maximum({ku}, 1e-30), {lo}), {hi})",
                f"{q} = {kf} * {f} * {f} + 2.0 * k1 * {f} * {q}u + {ku} * {q}u * {q}u"]

    hit = [f"lx = (tx * {t}).to(tl.float32) + {pc} - x", f"hx = lx + {t - 1}.0",
           f"ly = (ty * {t}).to(tl.float32) + {pc} - y", f"hy = ly + {t - 1}.0"]
    hit += edge("qa", "lx", "ly", "hy", "k0", "k2") + edge("qb", "hx", "ly", "hy", "k0", "k2")
    hit += edge("qc", "ly", "lx", "hx", "k2", "k0") + edge("qd", "hy", "lx", "hx", "k2", "k0")
    hit += ["q = tl.minimum(tl.minimum(qa, qb), tl.minimum(qc, qd))",
            "inside = (lx <= 0.0) & (hx >= 0.0) & (ly <= 0.0) & (hy >= 0.0)",
            "definite = (k0 > 0.0) & (k2 > 0.0) & (k0 * k2 - k1 * k1 > 0.0)",
            "return inside | (q <= thr) | (~definite)"]
    return f'''

@triton.jit
def _shape_{name}(g, ok, {_shape_args(spec)}):
    x = tl.load({o["means2d"].at("g", "0")}, mask=ok, other=0.0).to(tl.float32)
    y = tl.load({o["means2d"].at("g", "1")}, mask=ok, other=0.0).to(tl.float32)
    k0 = tl.load({o["conics"].at("g", "0")}, mask=ok, other=1.0).to(tl.float32)
    k1 = tl.load({o["conics"].at("g", "1")}, mask=ok, other=0.0).to(tl.float32)
    k2 = tl.load({o["conics"].at("g", "2")}, mask=ok, other=1.0).to(tl.float32)
    op = tl.load({o["opacities"].at("g")}, mask=ok, other=0.0).to(tl.float32)
    # q <= 2 ln(255 o) where alpha >= 1/255; no pixel at all when o * 255 <= 0
    lim = 2.0 * tl.log(tl.maximum(op * 255.0, 1e-30))
    thr = lim + 1e-3 + 1e-4 * tl.abs(lim)
    return x, y, k0, k1, k2, thr


@triton.jit
def _hit_{name}(x, y, k0, k1, k2, thr, tx, ty):
''' + "".join(f"    {ln}\n" for ln in hit)


def count(spec: RasterSpec, p: dict[str, str]) -> str:
    """`{name}_count`: the rectangle's tiles that pass the ellipse test, per Gaussian."""
    name = spec.name
    rect = ", ".join(dict.fromkeys((spec.ops["means2d"].arg, spec.ops["radii"].arg)))
    return f'''
@triton.jit
def {name}_count({p["count"]}):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = g < {spec.N}
    x0, y0, w, cnt = _rect_{name}(g, ok, {rect})
    x, y, k0, k1, k2, thr = _shape_{name}(g, ok, {_shape_args(spec)})
    ws = tl.maximum(w, 1)
    hits = tl.zeros([BLOCK_G], tl.int32)
    for j in range(0, tl.max(cnt, 0)):
        keep = (j < cnt) & _hit_{name}(x, y, k0, k1, k2, thr, x0 + j % ws, y0 + j // ws)
        hits += keep.to(tl.int32)
    tl.store(counts + g, hits, mask=ok)
'''


def emit(spec: RasterSpec, p: dict[str, str]) -> str:
    """`{name}_emit`: keys of the tiles that pass, in the rectangle's row-major order."""
    name, o = spec.name, spec.ops
    rect = ", ".join(dict.fromkeys((o["means2d"].arg, o["radii"].arg)))
    return f'''

@triton.jit
def {name}_emit({p["emit"]}):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = g < {spec.N}
    x0, y0, w, cnt = _rect_{name}(g, ok, {rect})
    x, y, k0, k1, k2, thr = _shape_{name}(g, ok, {_shape_args(spec)})
    base = tl.load(offsets + g, mask=ok, other=0)
    d = tl.load({o["depths"].at("g")}, mask=ok, other=0.0).to(tl.float32)
    dbits = d.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    ws = tl.maximum(w, 1)
    k = tl.zeros([BLOCK_G], tl.int32)
    for j in range(0, tl.max(cnt, 0)):
        tx = x0 + j % ws
        ty = y0 + j // ws
        keep = (j < cnt) & _hit_{name}(x, y, k0, k1, k2, thr, tx, ty)
        tid = ty * {spec.gx} + tx
        tl.store(keys + base + k, (tid.to(tl.int64) << 32) | dbits, mask=keep)
        tl.store(ids + base + k, g, mask=keep)
        k += keep.to(tl.int32)
'''
