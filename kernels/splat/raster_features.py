"""Feature splatting in the rasterizer's render launch (kernels/splat/raster_template.py composes these
lines with its batch traversal and compositing, which are the same as for RGB):

- dense features, C > 4 channels: the grid's second axis is the channel chunk (CHUNK channels, a knob),
  so the accumulator [pixels, CHUNK] stays bounded in registers at any C; each batch adds
  tl.dot(wgt [pixels, BATCH], features [BATCH, CHUNK]). Every chunk's program walks the tile's
  Gaussians (recomputing the alphas, the price of bounded registers); the first chunk writes final_T
  and the last contributors.
- sparse coefficients (LangSplatV2): each Gaussian's K (index, weight) pairs are scattered into a
  [BATCH, L] coefficient tile in registers and splatted into an L-channel accumulator [PIX, L]; after
  the traversal the pixels are multiplied by the codebook [L, C] one CHUNK of channels at a time. The
  accumulator must live through the traversal, so its registers are bounded by taking PIX of the
  tile's pixels per program (a knob; grid axis 1), each program walking the tile's Gaussians. No
  per-Gaussian C-vector is ever formed (nor written to memory).

Products are float32 `tl.dot(..., input_precision="ieee")`: no TF32 rounding, so the image matches the
float64 reference as the RGB path does."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .raster_spec import RasterSpec

DOT = 'input_precision="ieee"'


def _head(spec: RasterSpec) -> list[str]:
    """The render program's set-up: its tile's pixels, the tile's range of sorted Gaussians and the
    compositing state (the same as raster_template._render's, without the per-channel accumulators)."""
    t, w, h = spec.tile, spec.width, spec.height
    pc = repr(float(spec.pixel_center))
    # the sparse render's programs take PIX of the tile's pixels each (grid axis 1), the dense one all
    pix, n = ("tl.program_id(1) * PIX + tl.arange(0, PIX)", "PIX") if spec.sparse else (f"tl.arange(0, {t * t})",
                                                                                       str(t * t))
    return ["t = tl.program_id(0)", f"pix = {pix}",
            f"px = (t % {spec.gx}) * {t} + pix % {t}", f"py = (t // {spec.gx}) * {t} + pix // {t}",
            f"inside = (px < {w}) & (py < {h})", f"fxp = px.to(tl.float32) + {pc}", f"fyp = py.to(tl.float32) + {pc}",
            "b = tl.load(ranges + t * 2)", "end = tl.load(ranges + t * 2 + 1)", "jj = tl.arange(0, BATCH)",
            f"T = tl.full([{n}], 1.0, tl.float32)", "done = (~inside).to(tl.int32)",
            f"last = tl.full([{n}], -1, tl.int32)", "alive = tl.sum(1 - done, 0)"]


def _background(spec: RasterSpec) -> list[str]:
    """bgv [CHUNK]: the background of channels `ch` (a where per nonzero channel when they differ)."""
    vals = spec.background
    if len(set(vals)) == 1:
        return [f"bgv = tl.full([CHUNK], {vals[0]!r}, tl.float32)"]
    return ["bgv = tl.zeros([CHUNK], tl.float32)"] + [f"bgv = tl.where(ch == {c}, {v!r}, bgv)"
                                                      for c, v in enumerate(vals) if v != 0.0]


def _state_stores(spec: RasterSpec, first: str) -> list[str]:
    """final_T and the last contributors, written by the programs where `first` holds."""
    outs, pix, lines = spec.outs, f"py * {spec.width} + px", []
    if "final_T" in outs:
        lines.append(f"tl.store({outs['final_T']} + {pix}, T, mask=inside & {first})")
    if "last" in outs:
        lines += [f"lid = tl.load(sids + last, mask=inside & (last >= 0) & {first}, other=-1)",
                  f"tl.store({outs['last']} + {pix}, lid, mask=inside & {first})"]
    return lines


def _dense(spec: RasterSpec) -> tuple[list[str], list[str], list[str]]:
    c, p = spec.C, spec.tile * spec.tile
    col = spec.ops["colors"]
    head = ["c0 = tl.program_id(1) * CHUNK", "ch = c0 + tl.arange(0, CHUNK)", f"cm = ch < {c}",
            f"acc = tl.zeros([{p}, CHUNK], tl.float32)"]
    acc = [f"cv = tl.load({col.at('gid[:, None]', 'ch[None, :]')}, mask=jm[:, None] & cm[None, :], "
           "other=0.0).to(tl.float32)", f"acc += tl.dot(wgt, cv, {DOT})"]
    tail = []
    if "image" in spec.outs:
        tail = _background(spec) + [
            f"tl.store({spec.outs['image']} + (py * {spec.width} + px)[:, None] * {c} + ch[None, :], "
            "acc + T[:, None] * bgv[None, :], mask=inside[:, None] & cm[None, :])"]
    return head, acc, tail + _state_stores(spec, "(tl.program_id(1) == 0)")


def _sparse(spec: RasterSpec) -> tuple[list[str], list[str], list[str]]:
    c, lp, o = spec.C, spec.lpad, spec.ops
    head = [f"lr = tl.arange(0, {lp})", f"acc = tl.zeros([PIX, {lp}], tl.float32)"]
    acc = [f"sw = tl.zeros([BATCH, {lp}], tl.float32)"]
    for k in range(spec.K):
        acc += [f"ik{k} = tl.load({o['indices'].at('gid', str(k))}, mask=jm, other=-1)",
                f"wk{k} = tl.load({o['colors'].at('gid', str(k))}, mask=jm, other=0.0).to(tl.float32)",
                f"sw += tl.where(ik{k}[:, None] == lr[None, :], wk{k}[:, None], 0.0)"]
    acc.append(f"acc += tl.dot(wgt, sw, {DOT})")
    tail = []
    if "image" in spec.outs:
        book = o["codebook"].at("lr[:, None]", "ch[None, :]")
        loop = ["ch = c0 + tl.arange(0, CHUNK)", f"cm = ch < {c}",
                f"cb = tl.load({book}, mask=(lr < {spec.L})[:, None] & cm[None, :], other=0.0).to(tl.float32)",
                *_background(spec),
                f"tl.store({spec.outs['image']} + (py * {spec.width} + px)[:, None] * {c} + ch[None, :], "
                f"tl.dot(acc, cb, {DOT}) + T[:, None] * bgv[None, :], mask=inside[:, None] & cm[None, :])"]
        tail = [f"for c0 in range(0, {c}, CHUNK):"] + [f"    {ln}" for ln in loop]
    return head, acc, tail + _state_stores(spec, "(t >= 0)")


def render_parts(spec: RasterSpec) -> tuple[list[str], list[str], list[str]]:
    """(set-up lines, per-batch accumulation lines, final store lines) of the feature render."""
    head, acc, tail = _sparse(spec) if spec.sparse else _dense(spec)
    return _head(spec) + head, acc, tail
