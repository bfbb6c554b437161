"""The dequantize op: packed low-bit weights + scales (+ zeros) -> a dense [K, N] float tensor.

    dequantize(packed, scales [, zeros] [, scales2, offset]) {shape=[K, N], bits, ...}

`shape` may be left out: it is then the packed shape with the pack axis unpacked (whole units).

Operands, in order: `packed` (codes), `scales`, `zeros` (only when symmetric=false), and
`scales2`, `offset` (only when double_quant=true).

Codes. `packed` holds `bits`-bit codes (bits in 2, 3, 4, 8) in integer containers (`pack_dtype`
i32, i16, u8 or i8; it must equal the operand's dtype). Along `pack_axis` (default 1, N) the
containers form a little-endian bit stream cut into units of lcm(bits, container bits) bits:
a unit holds E = lcm/bits logical elements in C = lcm/container_bits consecutive containers
(int4 in i32: E=8, C=1; int3 in i32: E=32, C=3, GPTQ's layout; int2 in u8: E=4, C=1).
Logical element j of a unit occupies stream bits [bits*pack_order[j], bits*pack_order[j] + bits),
so pack_order[j] is the *sub-word slot* of element j, counted from the lowest bits:
identity = element 0 in the low bits; AWQ int4-in-int32 is (0, 4, 1, 5, 2, 6, 3, 7) (slot i holds
element (0, 2, 4, 6, 1, 3, 5, 7)[i]); bitsandbytes NF4 in u8 is (1, 0) (element 0 in the high nibble).
The packed shape is the logical shape with the pack axis divided by E and multiplied by C.
A code is read unsigned in [0, 2^bits), or as two's complement when `signed` is true.
Alternatively `packed` may be f8e4m3/f8e5m2 (bits=8, no packing): its values are the codes.

Values. With a `codebook` (2^bits floats, e.g. NF4's 16 entries) the value is codebook[code].
Otherwise it is the integer code (or the fp8 value). Then:
    symmetric:   w = (value - z0) * s,  z0 = 2^(bits-1) for unsigned integer codes, else 0
    asymmetric:  w = (code - z) * s,     z from the `zeros` operand (integer codes, packed like
                 `packed` when zeros_packed=true, e.g. AWQ qzeros, or plain ints/floats)

Scale (and zero) grids. `scale_layout` names how elements share a scale; `group_size` G (-1 = a
whole axis) sets the group length:
    "group_k": groups of G consecutive rows per column   -> grid [ceil(K/G), N]  (AWQ, GPTQ)
    "group_n": groups of G consecutive columns per row  -> grid [K, ceil(N/G)]  (bitsandbytes)
    "block":   G x G tiles (G may be a pair (GK, GN))    -> grid [ceil(K/GK), ceil(N/GN)] (fp8)
    "tensor":  one scale                                 -> grid [1, 1]
The operand may also drop the grid's size-1 axes ([N] for per-channel, [] for per-tensor).
`zero_layout` (default: scale_layout) does the same for the zeros with the same group_size.

Double quantization (QLoRA). With double_quant=true, `scales` holds u8/i8 codes on the grid; the
level-1 scale is round_f32(lut(code) * scales2[i // dq_block] + offset[0]) where i is the
row-major position in the grid, lut is `scale_codebook[code & 0xFF]` (256 floats, e.g. the
bitsandbytes dynamic map) or the integer code itself, `scales2` is f32 [ceil(grid/dq_block)]
and `offset` is f32 [] or [1].

Everything is computed exactly in float64 and rounded once to `out_dtype` (f16, bf16 or f32).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import dtypes as dt
from .ops import Node, Op, Shape, VerifyError, fmt_shape, register
from .reference import evaluator, rnd

CONTAINERS = {dt.i32: 32, dt.i16: 16, dt.u8: 8, dt.i8: 8}
FP8 = (dt.f8e4m3, dt.f8e5m2)
LAYOUTS = ("group_k", "group_n", "block", "tensor")
OUT_DTYPES = (dt.f16, dt.bf16, dt.f32)


def unit(bits: int, container_bits: int) -> tuple[int, int]:
    """(elements, containers) per packing unit of `bits`-bit codes in `container_bits` containers."""
    lcm = bits * container_bits // math.gcd(bits, container_bits)
    return lcm // bits, lcm // container_bits


def grid_block(layout: str, group_size: Any, shape: Shape) -> tuple[int, int]:
    """(rows, cols) of the logical tile that shares one scale."""
    k, n = shape

    def full(g: int, axis_len: int) -> int:
        return axis_len if g == -1 else g

    if layout == "group_k":
        return full(group_size, k), 1
    if layout == "group_n":
        return 1, full(group_size, n)
    if layout == "block":
        gk, gn = group_size if isinstance(group_size, tuple) else (group_size, group_size)
        return full(gk, k), full(gn, n)
    return k, n


def grid_shape(layout: str, group_size: Any, shape: Shape) -> tuple[int, int]:
    """Shape of the scale grid for `layout` over a logical [K, N] tensor."""
    bk, bn = grid_block(layout, group_size, shape)
    return -(-shape[0] // bk), -(-shape[1] // bn)


def packed_shape(logical: Shape, axis: int, bits: int, container_bits: int) -> Shape:
    """Container shape holding `logical` codes packed along `axis`."""
    e, c = unit(bits, container_bits)
    out = list(logical)
    out[axis] = logical[axis] // e * c
    return tuple(out)


def _squeezed(s: Shape) -> Shape:
    return tuple(x for x in s if x != 1)


def _check_grid(x: Node, name: str, grid: Shape, what: str) -> None:
    if x.shape != grid and x.shape != _squeezed(grid):
        raise VerifyError(f"{what}: {name} is {x.dtype}{fmt_shape(x.shape)}; the grid needs "
                          f"{fmt_shape(grid)} (or {fmt_shape(_squeezed(grid))})")


def _check_packed(x: Node, name: str, logical: Shape, axis: int, bits: int, what: str) -> None:
    cb = CONTAINERS[x.dtype]
    e, _ = unit(bits, cb)
    if logical[axis] % e:
        raise VerifyError(f"{what}: {name} axis {axis} has {logical[axis]} codes, not a multiple of the "
                          f"{e} codes per {bits}-bit packing unit in {x.dtype}")
    want = packed_shape(logical, axis, bits, cb)
    if x.shape != want:
        raise VerifyError(f"{what}: {name} {x.dtype}{fmt_shape(x.shape)} should be {fmt_shape(want)} "
                          f"({bits}-bit codes of {fmt_shape(logical)} packed along axis {axis})")


def _norm_group(gs: Any, layout: str, what: str) -> Any:
    if layout == "block" and isinstance(gs, tuple) and len(gs) == 2:
        vals: tuple[Any, ...] = gs
    else:
        vals = (gs,)
    for g in vals:
        if isinstance(g, bool) or not isinstance(g, int) or not (g == -1 or g > 0):
            raise VerifyError(f"{what}: group_size {gs!r} must be a positive int or -1"
                              + (" (or a pair for block)" if layout == "block" else ""))
    return gs


def _logical_of_packed(p: Node, a: dict[str, Any]) -> tuple[int, ...]:
    """The logical [K, N] when the `shape` attribute is left out: the packed operand's shape with its packed
    axis unpacked (whole units; () when it cannot tell, so the shape check names the missing attribute)."""
    bits, axis = a.get("bits", 4), a.get("pack_axis", 1)
    if p.dtype in FP8:
        return tuple(p.shape)
    if p.dtype not in CONTAINERS or len(p.shape) != 2 or bits not in (2, 3, 4, 8) or axis not in (0, 1):
        return ()
    e, c = unit(bits, CONTAINERS[p.dtype])
    dims = list(p.shape)
    dims[axis] = dims[axis] // c * e
    return tuple(dims)


def _header(srcs: tuple[Node, ...], a: dict[str, Any], what: str) -> dict[str, Any]:
    """Shape, bits, out_dtype, symmetric, double_quant, scale layout and group, and the operand count."""
    shape = tuple(a.get("shape", ())) or _logical_of_packed(srcs[0], a)
    if len(shape) != 2 or any(not isinstance(s, int) or s <= 0 for s in shape):
        raise VerifyError(f"{what}: shape {shape} must be the logical [K, N] of positive ints")
    bits = a.get("bits", 4)
    if bits not in (2, 3, 4, 8) or isinstance(bits, bool):
        raise VerifyError(f"{what}: bits {bits!r} not in (2, 3, 4, 8)")
    out = dt.dtype(a.get("out_dtype", "f16"))
    if out not in OUT_DTYPES:
        raise VerifyError(f"{what}: out_dtype {out} not in {[str(d) for d in OUT_DTYPES]}")
    sym = a.get("symmetric", True)
    dq = a.get("double_quant", False)
    if not isinstance(sym, bool) or not isinstance(dq, bool):
        raise VerifyError(f"{what}: symmetric and double_quant must be true or false")
    want_n = 2 + (not sym) + 2 * dq
    if len(srcs) != want_n:
        raise VerifyError(f"{what}: expected {want_n} operands (packed, scales"
                          + (", zeros" if not sym else "") + (", scales2, offset" if dq else "")
                          + f") for symmetric={sym}, double_quant={dq}; got {len(srcs)}")
    layout = a.get("scale_layout", "group_k")
    if layout not in LAYOUTS:
        raise VerifyError(f"{what}: scale_layout {layout!r} not in {LAYOUTS}")
    gs = _norm_group(a.get("group_size", 128), layout, what)
    return {"shape": shape, "bits": bits, "out_dtype": out, "symmetric": sym, "scale_layout": layout,
            "group_size": gs}


def _codes(p: Node, a: dict[str, Any], norm: dict[str, Any], what: str) -> None:
    """Check the packed codes (fp8 values or integer containers) and the codebook; record their attributes."""
    shape, bits, sym = norm["shape"], norm["bits"], norm["symmetric"]
    codebook = a.get("codebook")
    if p.dtype in FP8:
        if bits != 8 or codebook is not None or not sym:
            raise VerifyError(f"{what}: fp8 codes need bits=8, no codebook and symmetric=true")
        if p.shape != shape:
            raise VerifyError(f"{what}: fp8 codes are unpacked; packed must have the logical shape {fmt_shape(shape)}")
    elif p.dtype in CONTAINERS:
        norm.update(_packing(p, a, shape, bits, what))
    else:
        raise VerifyError(f"{what}: packed codes must be in {[str(d) for d in CONTAINERS]} containers or fp8")
    if codebook is not None:
        codebook = tuple(codebook)
        if len(codebook) != 1 << bits or not all(isinstance(c, (int, float)) for c in codebook):
            raise VerifyError(f"{what}: codebook needs {1 << bits} numbers for {bits}-bit codes, got {len(codebook)}")
        if not sym:
            raise VerifyError(f"{what}: a codebook format has no zero point; use symmetric=true")
        norm["codebook"] = tuple(float(c) for c in codebook)


def _packing(p: Node, a: dict[str, Any], shape: Shape, bits: int, what: str) -> dict[str, Any]:
    """pack_dtype, pack_axis, pack_order and signed of codes in integer containers."""
    pd = dt.dtype(a.get("pack_dtype", p.dtype))
    if pd != p.dtype:
        raise VerifyError(f"{what}: pack_dtype {pd} disagrees with the packed operand's dtype {p.dtype}")
    axis = a.get("pack_axis", 1)
    if axis not in (0, 1):
        raise VerifyError(f"{what}: pack_axis {axis!r} must be 0 or 1")
    e, _ = unit(bits, CONTAINERS[p.dtype])
    order = tuple(a.get("pack_order", range(e)))
    if sorted(order) != list(range(e)):
        raise VerifyError(f"{what}: pack_order {order} must be a permutation of 0..{e - 1} "
                          f"({e} {bits}-bit codes per unit in {p.dtype})")
    _check_packed(p, "packed", shape, axis, bits, what)
    signed = a.get("signed", False)
    if not isinstance(signed, bool):
        raise VerifyError(f"{what}: signed must be true or false")
    return {"pack_dtype": p.dtype, "pack_axis": axis, "pack_order": order, "signed": signed}


def _scales(srcs: tuple[Node, ...], a: dict[str, Any], norm: dict[str, Any], grid: Shape, what: str) -> None:
    """Check the scales operand (and scales2, offset with double quantization)."""
    s = srcs[1]
    if not a.get("double_quant", False):
        if not s.dtype.is_float or s.dtype in FP8:
            raise VerifyError(f"{what}: scales must be f16/bf16/f32/f64, got {s.dtype}")
        _check_grid(s, "scales", grid, what)
        return
    if s.dtype not in (dt.u8, dt.i8):
        raise VerifyError(f"{what}: double-quantized scales must be u8/i8 codes, got {s.dtype}")
    _check_grid(s, "scales", grid, what)
    dq_block = a.get("dq_block", 256)
    if isinstance(dq_block, bool) or not isinstance(dq_block, int) or dq_block <= 0:
        raise VerifyError(f"{what}: dq_block {dq_block!r} must be a positive int")
    s2, off = srcs[-2], srcs[-1]
    nblk = -(-(grid[0] * grid[1]) // dq_block)
    if s2.dtype != dt.f32 or s2.shape != (nblk,):
        raise VerifyError(f"{what}: scales2 is {s2.dtype}{fmt_shape(s2.shape)}; want f32[{nblk}] "
                          f"(one per {dq_block} level-1 scales)")
    if off.dtype != dt.f32 or off.shape not in ((), (1,)):
        raise VerifyError(f"{what}: offset is {off.dtype}{fmt_shape(off.shape)}; want f32[] or f32[1]")
    norm.update(double_quant=True, dq_block=dq_block)
    scb = a.get("scale_codebook")
    if scb is not None:
        if len(scb) != 256:
            raise VerifyError(f"{what}: scale_codebook needs 256 numbers, got {len(scb)}")
        norm["scale_codebook"] = tuple(float(c) for c in scb)


def _zeros(srcs: tuple[Node, ...], a: dict[str, Any], norm: dict[str, Any], what: str) -> None:
    """Check the zeros operand of an asymmetric format."""
    if srcs[0].dtype in FP8:
        raise VerifyError(f"{what}: fp8 codes have no zero point")
    z = srcs[2]
    zl = a.get("zero_layout", norm["scale_layout"])
    if zl not in LAYOUTS:
        raise VerifyError(f"{what}: zero_layout {zl!r} not in {LAYOUTS}")
    zgrid = grid_shape(zl, norm["group_size"], norm["shape"])
    zp = a.get("zeros_packed", False)
    if zp:
        if z.dtype not in CONTAINERS:
            raise VerifyError(f"{what}: packed zeros must be in integer containers, got {z.dtype}")
        _check_packed(z, "zeros", zgrid, norm["pack_axis"], norm["bits"], what)
    else:
        if z.dtype.packed or z.dtype.is_bool or z.dtype in FP8:
            raise VerifyError(f"{what}: zeros must be integer codes or floats, got {z.dtype}")
        _check_grid(z, "zeros", zgrid, what)
    norm.update(zero_layout=zl, zeros_packed=bool(zp))


def _whole_groups(norm: dict[str, Any], what: str) -> None:
    """K groups (AWQ, GPTQ, BitDistiller) must tile K: those formats store ceil(K/G) scale rows only when
    K % G == 0, and a ragged last group is a packing mistake, not a layout. (fp8 blocks and column groups
    may be ragged: DeepSeek-V3's 128x128 scales cover K and N that are not multiples of 128.)"""
    gs, k = norm["group_size"], norm["shape"][0]
    if norm["scale_layout"] == "group_k" and isinstance(gs, int) and isinstance(k, int) and gs > 0 and k % gs:
        raise VerifyError(f"{what}: K={k} is not a multiple of group_size {gs} (group_k scales need whole "
                          f"groups of rows; {k // gs * gs} or {-(-k // gs) * gs} rows would be)")


@register(Op.DEQUANTIZE, (2, 5))
def _infer_dequantize(srcs: tuple[Node, ...], a: dict[str, Any]) -> Any:
    p = srcs[0]
    what = f"dequantize of {p.dtype}{fmt_shape(p.shape)}"
    norm = _header(srcs, a, what)
    _whole_groups(norm, what)
    _codes(p, a, norm, what)
    _scales(srcs, a, norm, grid_shape(norm["scale_layout"], norm["group_size"], norm["shape"]), what)
    if not norm["symmetric"]:
        _zeros(srcs, a, norm, what)
    return norm["out_dtype"], norm["shape"], norm


# ---- reference -------------------------------------------------------------------------------
def unpack(words: np.ndarray, bits: int, container_bits: int, axis: int, order: tuple[int, ...]) -> np.ndarray:
    """Unsigned codes of `words` (integer containers, any sign) unpacked along `axis`."""
    e, c = unit(bits, container_bits)
    w = np.moveaxis(np.asarray(words, dtype=np.int64), axis, -1)
    w = (w & ((1 << container_bits) - 1)).astype(np.uint64)
    w = w.reshape(*w.shape[:-1], w.shape[-1] // c, c)
    mask = np.uint64((1 << bits) - 1)
    cols = []
    for j in range(e):
        pos = order[j] * bits
        word, off = divmod(pos, container_bits)
        v = w[..., word] >> np.uint64(off)
        if off + bits > container_bits:  # the code straddles two containers (3-bit codes)
            v = v | (w[..., word + 1] << np.uint64(container_bits - off))
        cols.append(v & mask)
    out = np.stack(cols, axis=-1).astype(np.int64)
    out = out.reshape(*out.shape[:-2], out.shape[-2] * e)
    return np.moveaxis(out, -1, axis)


def expand_grid(g: np.ndarray, layout: str, group_size: Any, shape: Shape) -> np.ndarray:
    """Broadcast a scale/zero grid to the logical [K, N] shape."""
    grid = grid_shape(layout, group_size, shape)
    bk, bn = grid_block(layout, group_size, shape)
    g = np.asarray(g).reshape(grid)
    return np.repeat(np.repeat(g, bk, axis=0), bn, axis=1)[: shape[0], : shape[1]]


def _level1_scales(n: Node, xs: list[Any]) -> np.ndarray:
    if not n.attr("double_quant"):
        return np.asarray(xs[1], dtype=np.float64)
    codes = np.asarray(xs[1], dtype=np.int64).reshape(-1)
    scb = n.attr("scale_codebook")
    lut = np.asarray(scb, dtype=np.float64)[codes & 0xFF] if scb is not None else codes.astype(np.float64)
    s2 = np.asarray(xs[-2], dtype=np.float64)
    off = float(np.asarray(xs[-1], dtype=np.float64).reshape(-1)[0])
    blk = np.arange(codes.size) // n.attr("dq_block")
    return rnd(lut * s2[blk] + off, dt.f32)


@evaluator(Op.DEQUANTIZE)
def _eval_dequantize(n: Node, xs: list[Any]) -> np.ndarray:
    shape = n.attr("shape")
    bits = n.attr("bits")
    layout, gs = n.attr("scale_layout"), n.attr("group_size")
    p = n.src[0]
    if p.dtype in FP8:
        val = np.asarray(xs[0], dtype=np.float64)
    else:
        cb = CONTAINERS[p.dtype]
        q = unpack(xs[0], bits, cb, n.attr("pack_axis"), n.attr("pack_order"))
        if n.attr("signed"):
            q = np.where(q >= 1 << (bits - 1), q - (1 << bits), q)
        codebook = n.attr("codebook")
        val = np.asarray(codebook, dtype=np.float64)[q] if codebook is not None else q.astype(np.float64)
    s = expand_grid(_level1_scales(n, xs), layout, gs, shape)
    if n.attr("symmetric"):
        z0 = 1 << (bits - 1) if (p.dtype not in FP8 and n.attr("codebook") is None and not n.attr("signed")) else 0
        w = (val - z0) * s
    else:
        zl = n.attr("zero_layout")
        if n.attr("zeros_packed"):
            zgrid = grid_shape(zl, gs, shape)
            z = unpack(xs[2], bits, CONTAINERS[n.src[2].dtype], n.attr("pack_axis"), n.attr("pack_order"))
            z = z.reshape(zgrid)
        else:
            z = np.asarray(xs[2], dtype=np.float64)
        w = (val - expand_grid(z, zl, gs, shape)) * s
    return rnd(w, n.dtype)
