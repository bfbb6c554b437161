"""Triton template of the tile-binned rasterizer (kernels/splat/raster_spec.py): six functions of
one module, each with the parameters its launch in the plan passes, in that order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codegen.headers import header
from ...schedule.config import Config
from . import raster_ellipse as tighter
from . import raster_features as features

if TYPE_CHECKING:
    from .raster_spec import RasterSpec


def _params(spec: RasterSpec, config: Config) -> dict[str, str]:
    """Function suffix -> its parameter list (the launch's argument names, then its constexprs)."""
    out = {}
    for ln in spec.launch_plan(config).launches:
        names = [a.name for a in ln.args] + [f"{k}: tl.constexpr" for k in ln.constexprs]
        out[ln.fn[len(spec.name) + 1:]] = ", ".join(names)
    return out


def _rect(spec: RasterSpec) -> str:
    """The rectangle rule (ir/splat_op.py tile_rect): clamp in float, then truncate toward zero."""
    o, t = spec.ops, spec.tile
    return f'''
@triton.jit
def _rect_{spec.name}(g, ok, {", ".join(dict.fromkeys((o["means2d"].arg, o["radii"].arg)))}):
    x = tl.load({o["means2d"].at("g", "0")}, mask=ok, other=0.0).to(tl.float32)
    y = tl.load({o["means2d"].at("g", "1")}, mask=ok, other=0.0).to(tl.float32)
    r = tl.load({o["radii"].at("g")}, mask=ok, other=0)
    rf = r.to(tl.float32)
    x0 = tl.minimum(tl.maximum((x - rf) / {t}.0, 0.0), {spec.gx}.0).to(tl.int32)
    y0 = tl.minimum(tl.maximum((y - rf) / {t}.0, 0.0), {spec.gy}.0).to(tl.int32)
    x1 = tl.minimum(tl.maximum((x + rf + {t - 1}.0) / {t}.0, 0.0), {spec.gx}.0).to(tl.int32)
    y1 = tl.minimum(tl.maximum((y + rf + {t - 1}.0) / {t}.0, 0.0), {spec.gy}.0).to(tl.int32)
    w = tl.maximum(x1 - x0, 0)
    cnt = tl.where(ok & (r > 0), w * tl.maximum(y1 - y0, 0), 0)
    return x0, y0, w, cnt
'''


def _binning(spec: RasterSpec, p: dict[str, str], ellipse: bool = False) -> str:
    """count -> scan -> emit (device), then sort (a host step) and ranges: the tile binning launches; with
    `ellipse`, count and emit keep only the rectangle's tiles the Gaussian's ellipse reaches (raster_ellipse.py)."""
    if ellipse:
        count, emit = tighter.count(spec, p), tighter.emit(spec, p)
    else:
        count, emit = _count(spec, p), _emit(spec, p)
    return count + _scan(spec, p) + emit + "\n" + _sort_and_ranges(spec, p)


def _rect_args(spec: RasterSpec) -> str:
    return ", ".join(dict.fromkeys((spec.ops["means2d"].arg, spec.ops["radii"].arg)))


def _count(spec: RasterSpec, p: dict[str, str]) -> str:
    name = spec.name
    return f'''
@triton.jit
def {name}_count({p["count"]}):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = g < {spec.N}
    x0, y0, w, cnt = _rect_{name}(g, ok, {_rect_args(spec)})
    tl.store(counts + g, cnt, mask=ok)
'''


def _scan(spec: RasterSpec, p: dict[str, str]) -> str:
    n = spec.N
    return f'''

@triton.jit
def {spec.name}_scan({p["scan"]}):
    carry = tl.zeros([], tl.int32)
    for start in range(0, {n}, SCAN):
        i = start + tl.arange(0, SCAN)
        c = tl.load(counts + i, mask=i < {n}, other=0)
        tl.store(offsets + i, carry + tl.cumsum(c, 0) - c, mask=i < {n})
        carry += tl.sum(c, 0)
    tl.store(offsets + {n}, carry)
'''


def _emit(spec: RasterSpec, p: dict[str, str]) -> str:
    o, n, name = spec.ops, spec.N, spec.name
    return f'''

@triton.jit
def {name}_emit({p["emit"]}):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = g < {n}
    x0, y0, w, cnt = _rect_{name}(g, ok, {_rect_args(spec)})
    base = tl.load(offsets + g, mask=ok, other=0)
    d = tl.load({o["depths"].at("g")}, mask=ok, other=0.0).to(tl.float32)
    # depth >= 0 (checked on the host), so its float bits order like the floats; the low 32 bits only
    dbits = d.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    ws = tl.maximum(w, 1)
    for j in range(0, tl.max(cnt, 0)):
        m = j < cnt
        tid = (y0 + j // ws) * {spec.gx} + x0 + j % ws
        tl.store(keys + base + j, (tid.to(tl.int64) << 32) | dbits, mask=m)
        tl.store(ids + base + j, g, mask=m)
'''


def _sort_and_ranges(spec: RasterSpec, p: dict[str, str]) -> str:
    n, name = spec.N, spec.name
    return f'''
def {name}_sort({p["sort"]}):
    """Host step: sort the keys (stable, so equal depths keep index order) and gather the ids."""
    import torch

    total = int(offsets[{n}])
    k, order = torch.sort(keys[:total], stable=True)
    keys[:total] = k
    sids[:total] = ids[:total][order]


@triton.jit
def {name}_ranges({p["ranges"]}):
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    total = tl.load(offsets + {n})
    ok = i < total
    t = (tl.load(keys + i, mask=ok, other=0) >> 32).to(tl.int32)
    tp = (tl.load(keys + i - 1, mask=ok & (i > 0), other=-1) >> 32).to(tl.int32)
    tn = (tl.load(keys + i + 1, mask=(i + 1) < total, other=-1) >> 32).to(tl.int32)
    tl.store(ranges + t * 2, i, mask=ok & ((i == 0) | (t != tp)))
    tl.store(ranges + t * 2 + 1, i + 1, mask=ok & ((i + 1 == total) | (t != tn)))
'''


def _render_batch(spec: RasterSpec, acc: list[str] | None = None) -> list[str]:
    """One batch: alphas of BATCH Gaussians at every pixel, composited by a cumulative product; `acc` are
    the lines adding the batch's weights `wgt` [pixels, BATCH] times its features (one accumulator per
    channel when not given)."""
    o = spec.ops
    lines = ["j = b + jj", "jm = j < end", "gid = tl.load(sids + j, mask=jm, other=0)",
             f"mx = tl.load({o['means2d'].at('gid', '0')}, mask=jm, other=0.0).to(tl.float32)",
             f"my = tl.load({o['means2d'].at('gid', '1')}, mask=jm, other=0.0).to(tl.float32)"]
    lines += [f"k{i} = tl.load({o['conics'].at('gid', str(i))}, mask=jm, other=0.0).to(tl.float32)"
              for i in range(3)]
    lines += [f"op = tl.load({o['opacities'].at('gid')}, mask=jm, other=0.0).to(tl.float32)",
              "dx = mx[None, :] - fxp[:, None]", "dy = my[None, :] - fyp[:, None]",
              "power = -0.5 * (k0[None, :] * dx * dx + k2[None, :] * dy * dy) - k1[None, :] * dx * dy",
              "alpha = tl.minimum(0.99, op[None, :] * tl.exp(tl.minimum(power, 0.0)))",
              "live = jm[None, :] & (power <= 0.0) & (alpha >= 1.0 / 255.0) & (done == 0)[:, None]",
              "om = tl.where(live, 1.0 - alpha, 1.0)",
              "cp = tl.cumprod(om, axis=1)",
              "tt = T[:, None] * cp",
              "stop = live & (tt < 1e-4)",
              "fs = tl.min(tl.where(stop, jj[None, :], BATCH), axis=1)",
              "add = live & (jj[None, :] < fs[:, None])",
              "wgt = tl.where(add, alpha * (T[:, None] * (cp / om)), 0.0)"]
    for c in range(spec.C if acc is None else 0):
        lines += [f"col{c} = tl.load({o['colors'].at('gid', str(c))}, mask=jm, other=0.0).to(tl.float32)",
                  f"acc{c} += tl.sum(wgt * col{c}[None, :], axis=1)"]
    lines += acc or []
    lines += ["T = tl.minimum(T, tl.min(tl.where(add, tt, 2.0), axis=1))",
              "last = tl.maximum(last, tl.max(tl.where(add, j[None, :], -1), axis=1))",
              "done = done | (fs < BATCH).to(tl.int32)",
              "b += BATCH", "alive = tl.sum(1 - done, 0)"]
    return lines


def _render(spec: RasterSpec, p: dict[str, str]) -> str:
    t, w, h = spec.tile, spec.width, spec.height
    pc = repr(float(spec.pixel_center))
    head = ["t = tl.program_id(0)", f"pix = tl.arange(0, {t * t})",
            f"px = (t % {spec.gx}) * {t} + pix % {t}", f"py = (t // {spec.gx}) * {t} + pix // {t}",
            f"inside = (px < {w}) & (py < {h})", f"fxp = px.to(tl.float32) + {pc}", f"fyp = py.to(tl.float32) + {pc}",
            "b = tl.load(ranges + t * 2)", "end = tl.load(ranges + t * 2 + 1)", "jj = tl.arange(0, BATCH)",
            f"T = tl.full([{t * t}], 1.0, tl.float32)", "done = (~inside).to(tl.int32)",
            f"last = tl.full([{t * t}], -1, tl.int32)", "alive = tl.sum(1 - done, 0)"]
    head += [f"acc{c} = tl.zeros([{t * t}], tl.float32)" for c in range(spec.C)]
    tail, outs = [], spec.outs
    pix = f"py * {w} + px"
    if "image" in outs:
        tail += [f"tl.store({outs['image']} + ({pix}) * {spec.C} + {c}, acc{c} + T * {spec.background[c]!r}, "
                 "mask=inside)" for c in range(spec.C)]
    if "final_T" in outs:
        tail.append(f"tl.store({outs['final_T']} + {pix}, T, mask=inside)")
    if "last" in outs:
        tail += ["lid = tl.load(sids + last, mask=inside & (last >= 0), other=-1)",
                 f"tl.store({outs['last']} + {pix}, lid, mask=inside)"]
    body = [f"    {ln}" for ln in head] + ["    while (b < end) & (alive > 0):"]
    body += [f"        {ln}" for ln in _render_batch(spec)] + [f"    {ln}" for ln in tail]
    return f"\n\n@triton.jit\ndef {spec.name}_render({p['render']}):\n" + "\n".join(body) + "\n"


def _render_features(spec: RasterSpec, p: dict[str, str]) -> str:
    """The feature render (raster_features.py): the same traversal and compositing, channels as tiles."""
    head, acc, tail = features.render_parts(spec)
    # A counted loop with the early exit as an `if`: Triton 3.6 fails to compile (TritonGPURemoveLayout-
    # Conversions, sm_80 and sm_90) a `while` whose loop-carried values include a tl.dot accumulator.
    body = [f"    {ln}" for ln in head] + ["    for _ in range(0, tl.cdiv(end - b, BATCH)):", "        if alive > 0:"]
    body += [f"            {ln}" for ln in _render_batch(spec, acc)] + [f"    {ln}" for ln in tail]
    return f"\n\n@triton.jit\ndef {spec.name}_render({p['render']}):\n" + "\n".join(body) + "\n"


def render(spec: RasterSpec, config: Config, interpret: bool = False) -> str:
    """The rasterizer's module: the rectangle helper and the six functions of its launch plan."""
    p = _params(spec, config)
    draw = _render_features if spec.feature_render else _render
    ellipse = spec.ellipse(config)
    return (header(spec, config, "triton") + "import triton\nimport triton.language as tl\n\n" + _rect(spec)
            + (tighter.helpers(spec) if ellipse else "") + _binning(spec, p, ellipse) + draw(spec, p))
