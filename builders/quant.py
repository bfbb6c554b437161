"""Builders for the dequantize op: the general form and the AWQ, NF4 (QLoRA) and FP8-block presets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..frontend import Tensor
from ..ir import dtypes as dt
from ..ir.ops import Op, VerifyError, make

# bitsandbytes' NF4 code book (QLoRA), indexed by the 4-bit code.
NF4_CODEBOOK = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0)
# AWQ int4-in-int32: the sub-word slot of logical element j (slot i holds element (0,2,4,6,1,3,5,7)[i]).
AWQ_PACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def dequantize(packed: Tensor, scales: Tensor, zeros: Tensor | None = None, *, shape: Sequence[int],
               bits: int = 4, group_size: Any = 128, scale_layout: str = "group_k", out_dtype: str = "f16",
               pack_axis: int = 1, pack_order: Sequence[int] | None = None, signed: bool = False,
               codebook: Sequence[float] | None = None, zeros_packed: bool = False,
               zero_layout: str | None = None, double_quant: tuple[Tensor, Tensor] | None = None,
               dq_block: int = 256, scale_codebook: Sequence[float] | None = None) -> Tensor:
    """The general dequantize op (see ir/quant_op.py); symmetric iff `zeros` is None.
    `double_quant=(scales2, offset)` makes `scales` level-2 quantized codes."""
    kw: dict[str, Any] = {"shape": tuple(shape), "bits": bits, "group_size": group_size,
                          "scale_layout": scale_layout, "out_dtype": dt.dtype(out_dtype),
                          "symmetric": zeros is None}
    if packed.dtype not in (dt.f8e4m3, dt.f8e5m2):
        kw.update(pack_axis=pack_axis, signed=signed)
        if pack_order is not None:
            kw["pack_order"] = tuple(pack_order)
    if codebook is not None:
        kw["codebook"] = tuple(codebook)
    srcs = [packed.node, scales.node]
    if zeros is not None:
        srcs.append(zeros.node)
        kw.update(zeros_packed=zeros_packed, zero_layout=zero_layout or scale_layout)
    if double_quant is not None:
        srcs += [double_quant[0].node, double_quant[1].node]
        kw.update(double_quant=True, dq_block=dq_block)
        if scale_codebook is not None:
            kw["scale_codebook"] = tuple(scale_codebook)
    return Tensor(make(Op.DEQUANTIZE, srcs, **kw))


def dequantize_awq(qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int = 128) -> Tensor:
    """AWQ W4: qweight i32 [K, N/8], qzeros i32 [K/G, N/8], scales [K/G, N]; w = (q - z) * s."""
    k, n8 = qweight.shape
    return dequantize(qweight, scales, qzeros, shape=(k, n8 * 8), bits=4, group_size=group_size,
                      pack_order=AWQ_PACK_ORDER, zeros_packed=True, out_dtype=str(scales.dtype))


def dequantize_nf4(packed: Tensor, absmax_codes: Tensor, absmax2: Tensor, offset: Tensor, shape: Sequence[int],
                   block: int = 64, dq_block: int = 256, scale_codebook: Sequence[float] | None = None,
                   out_dtype: str = "bf16") -> Tensor:
    """QLoRA NF4: u8 [K, N/2] codes (first element in the high nibble), blocks of `block` along N,
    absmax stored as u8 codes with an f32 level-2 scale per `dq_block` and an offset."""
    return dequantize(packed, absmax_codes, shape=shape, bits=4, group_size=block, scale_layout="group_n",
                      pack_order=(1, 0), codebook=NF4_CODEBOOK, double_quant=(absmax2, offset),
                      dq_block=dq_block, scale_codebook=scale_codebook, out_dtype=out_dtype)


def dequantize_fp8_block(w: Tensor, scales: Tensor, block: int = 128, out_dtype: str = "bf16",
                         layout: str = "kn") -> Tensor:
    """FP8 e4m3 weights with one f32 scale per block x block tile: w [K, N] and scales [ceil(K/b), ceil(N/b)],
    or with layout="nk" a checkpoint's [N, K] weight and [ceil(N/b), ceil(K/b)] scales (DeepSeek-V3's
    `weight` and `weight_scale_inv`), read transposed (a view: no copy)."""
    if layout not in ("kn", "nk"):
        raise VerifyError(f"dequantize_fp8_block: layout {layout!r} not in ('kn', 'nk')")
    if layout == "nk":
        w, scales = w.T, scales.T
    return dequantize(w, scales, shape=w.shape, bits=8, group_size=block, scale_layout="block",
                      out_dtype=out_dtype)


def dequantize_fp8_act(x: Tensor, scales: Tensor, group: int = 128, out_dtype: str = "f32") -> Tensor:
    """FP8 activations [M, K] with one f32 scale per token and `group` consecutive K ([M, ceil(K/group)]),
    DeepGEMM's activation format. `dequantize_fp8_act(xq, sx) @ dequantize_fp8_block(wq, sw)` compiles to
    one block-scaled FP8 GEMM (the scales applied to each 128-K step's f32 product)."""
    return dequantize(x, scales, shape=x.shape, bits=8, group_size=group, scale_layout="group_n",
                      out_dtype=out_dtype)
