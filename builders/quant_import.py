"""Graph inputs from quantized checkpoints: the tensors an AWQ, GPTQ or bitsandbytes-NF4 checkpoint stores
(numpy arrays or torch tensors, e.g. read with `safetensors`) turned into the inputs of the matching
dequantize (builders/quant.py), with the attributes to build it with.

    w = awq_weights(qweight, qzeros, scales)       -> dequantize_awq(qw, qz, s, group_size=w.attrs[...])
    w = gptq_weights(qweight, qzeros, scales, g_idx) -> dequantize(qw, s, z, pack_axis=0, symmetric=False, ...)
    w = nf4_weights(weight, absmax, nested_absmax, offset, nested_code, shape=(out, in))
                                                   -> dequantize_nf4(qw, ac, s2, off, ...) of W [out, in]

GPTQ stores its zero points packed along N, which the IR's zero operand cannot express next to codes
packed along K: they are unpacked here (and AutoGPTQ's `zeros - 1` storage undone). bitsandbytes stores W
as [out_features, in_features] row-major (x @ W.T in the layer); the dequantize here is that W."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TilefuseError
from ..ir.quant_op import unpack
from .quant import AWQ_PACK_ORDER, NF4_CODEBOOK

__all__ = ["QuantWeights", "awq_weights", "gptq_weights", "nf4_weights"]


class CheckpointError(TilefuseError):
    """A checkpoint tensor of the wrong shape or dtype, or a layout tilefuse cannot express."""


@dataclass
class QuantWeights:
    """Graph inputs by operand name (numpy arrays in the dequantize's dtypes) and the dequantize's attrs."""

    inputs: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)


def _np(x: Any, name: str) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU, detached) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    if isinstance(x, (np.generic, float, int)):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise CheckpointError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    return x


def _int32(x: Any, name: str, ndim: int = 2) -> np.ndarray:
    a = _np(x, name)
    if a.dtype not in (np.int32, np.uint32) or a.ndim != ndim:
        raise CheckpointError(f"{name}: expected a {ndim}-d int32 tensor, got {a.dtype}{list(a.shape)}")
    return a.view(np.int32)


def _group(k: int, groups: int, name: str) -> int:
    if groups <= 0 or k % groups:
        raise CheckpointError(f"{name}: {groups} scale rows do not divide K={k} into groups")
    return k // groups


def awq_weights(qweight: Any, qzeros: Any, scales: Any) -> QuantWeights:
    """AWQ (GEMM layout): qweight i32 [K, N/8] and qzeros i32 [K/G, N/8] in AWQ's nibble order, scales
    f16 [K/G, N]. They are already the IR's layout; this checks them and finds G."""
    qw, qz, s = _int32(qweight, "qweight"), _int32(qzeros, "qzeros"), _np(scales, "scales")
    k, n = qw.shape[0], qw.shape[1] * 8
    if s.shape[1:] != (n,) or qz.shape != (s.shape[0], n // 8):
        raise CheckpointError(f"scales {list(s.shape)} / qzeros {list(qz.shape)}: expected [K/G, {n}] and "
                              f"[K/G, {n // 8}] for qweight {list(qw.shape)}")
    g = _group(k, s.shape[0], "scales")
    return QuantWeights({"qweight": qw, "qzeros": qz, "scales": s},
                        {"group_size": g, "shape": (k, n), "pack_order": AWQ_PACK_ORDER})


def gptq_weights(qweight: Any, qzeros: Any, scales: Any, g_idx: Any = None, bits: int = 4,
                 zero_offset: int = 1) -> QuantWeights:
    """GPTQ (AutoGPTQ / exllama layout): qweight i32 [K*bits/32, N] packed along K, qzeros i32
    [K/G, N*bits/32] packed along N (each stored as z - zero_offset: 1 for AutoGPTQ's v1 format, 0 for
    v2), scales [K/G, N], g_idx [K] which must be sequential (k // G): act-order checkpoints are refused."""
    if bits not in (2, 3, 4, 8):
        raise CheckpointError(f"bits={bits}: GPTQ checkpoints are 2, 3, 4 or 8 bit")
    qw, qz, s = _int32(qweight, "qweight"), _int32(qzeros, "qzeros"), _np(scales, "scales")
    k, n = qw.shape[0] * 32 // bits, qw.shape[1]
    if s.shape[1:] != (n,) or qz.shape != (s.shape[0], n * bits // 32):
        raise CheckpointError(f"scales {list(s.shape)} / qzeros {list(qz.shape)}: expected [K/G, {n}] and "
                              f"[K/G, {n * bits // 32}] for qweight {list(qw.shape)} at {bits} bits")
    g = _group(k, s.shape[0], "scales")
    if g_idx is not None:
        gi = _np(g_idx, "g_idx").astype(np.int64)
        if gi.shape != (k,):
            raise CheckpointError(f"g_idx: expected shape [{k}], got {list(gi.shape)}")
        if not np.array_equal(gi, np.arange(k) // g):
            raise CheckpointError("g_idx is not sequential (k // group_size): act-order (desc_act) GPTQ "
                                  "checkpoints permute K, which the dequantize cannot express; requantize "
                                  "without act-order or permute x's columns and the weight rows first")
    z = unpack(qz, bits, 32, 1, tuple(range(32 // bits if 32 % bits == 0 else 32))) + zero_offset
    return QuantWeights({"qweight": qw, "scales": s, "zeros": z.astype(np.int32)},
                        {"group_size": g, "shape": (k, n), "bits": bits, "pack_axis": 0})


def nf4_weights(weight: Any, absmax: Any, nested_absmax: Any, offset: Any, nested_code: Any,
                shape: tuple[int, int], code: Any = None, blocksize: int = 64,
                nested_blocksize: int = 256) -> QuantWeights:
    """bitsandbytes NF4 with double quantization (QLoRA): `weight` u8 [(out*in+1)//2, 1] (two codes a
    byte, the first in the high nibble) of W [out, in] row-major, `absmax` u8 codes [out*in/blocksize],
    `nested_absmax` f32 per nested block, `offset` the scalar added back, `nested_code` the 256-entry map
    of the absmax codes, `code` (optional) the NF4 map, which must be the standard one."""
    out_f, in_f = shape
    if in_f % blocksize or in_f % 2:
        raise CheckpointError(f"shape {list(shape)}: in_features must be a multiple of blocksize={blocksize}")
    w, am = _np(weight, "weight"), _np(absmax, "absmax")
    if w.dtype != np.uint8 or w.size != out_f * in_f // 2:
        raise CheckpointError(f"weight: expected {out_f * in_f // 2} uint8 bytes, got {w.dtype}{list(w.shape)}")
    if am.dtype != np.uint8 or am.size != out_f * in_f // blocksize:
        raise CheckpointError(f"absmax: expected {out_f * in_f // blocksize} uint8 codes (double quantized), "
                              f"got {am.dtype}{list(am.shape)}")
    if code is not None and not np.allclose(_np(code, "code").astype(np.float64), NF4_CODEBOOK, atol=1e-6):
        raise CheckpointError("code: not the NF4 code map (FP4 and custom maps are not supported)")
    scb = _np(nested_code, "nested_code").astype(np.float32)
    if scb.shape != (256,):
        raise CheckpointError(f"nested_code: expected 256 entries, got {list(scb.shape)}")
    s2 = _np(nested_absmax, "nested_absmax").astype(np.float32).reshape(-1)
    if s2.size != -(-am.size // nested_blocksize):
        raise CheckpointError(f"nested_absmax: expected {-(-am.size // nested_blocksize)} values, got {s2.size}")
    off = np.asarray(_np(offset, "offset"), dtype=np.float32).reshape(1)
    return QuantWeights({"qweight": w.reshape(out_f, in_f // 2), "absmax": am.reshape(out_f, in_f // blocksize),
                         "absmax2": s2, "offset": off},
                        {"shape": (out_f, in_f), "block": blocksize, "dq_block": nested_blocksize,
                         "scale_codebook": tuple(float(v) for v in scb)})
