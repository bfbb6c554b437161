"""Builders for dynamic activation quantization (the `quantize` op) and the W8A8 int8 linear layer."""

from __future__ import annotations

from ..frontend import Tensor, matmul
from ..ir import dtypes as dt
from ..ir.ops import Op, VerifyError, fmt_shape, make


def quantize(x: Tensor, out_dtype: str = "i8", group_size: int = -1) -> tuple[Tensor, Tensor]:
    """(codes, scales) of `x` quantized per token (group_size=-1) or per group of `group_size` along the
    last axis by absmax: i8 codes in [-127, 127] (s = absmax/127) or f8e4m3 (s = absmax/448); x ~ codes * s.
    See ir/quantize_op.py."""
    n = make(Op.QUANTIZE, [x.node], out_dtype=dt.dtype(out_dtype), group_size=group_size)
    return Tensor(make(Op.RESULT, [n], index=0)), Tensor(make(Op.RESULT, [n], index=1))


def _expect(what: str, name: str, t: Tensor, dtypes: tuple[dt.DType, ...], shapes: tuple[tuple[int, ...], ...]) -> None:
    if t.dtype in dtypes and t.shape in shapes:
        return
    want = " or ".join(f"{'/'.join(str(d) for d in dtypes)}{fmt_shape(s)}" for s in shapes)
    raise VerifyError(f"{what}: {name} must be {want}, got {t.dtype}{fmt_shape(t.shape)}")


def w8a8_linear(x: Tensor, q_w: Tensor, s_w: Tensor, bias: Tensor | None = None,
                out_dtype: str | None = None) -> Tensor:
    """y = x @ (q_w * s_w) (+ bias) the W8A8 way: x is quantized per token to i8 (one row kernel), then an
    i8 x i8 -> i32 GEMM applies both scales (and the bias, and whatever pointwise ops follow) in its
    epilogue. q_w is i8 [K, N] (symmetric, per output channel), s_w f32 [N] or [1, N], bias [N].
    The result has `out_dtype` (default: x's dtype)."""
    k = x.shape[-1]
    what = f"w8a8_linear of x {x.dtype}{fmt_shape(x.shape)}"
    if q_w.ndim != 2 or q_w.shape[0] != k:
        raise VerifyError(f"{what}: q_w must be i8[{k}, N] (K = x's last axis), got {q_w.dtype}{fmt_shape(q_w.shape)}")
    n = q_w.shape[1]
    _expect(what, "q_w", q_w, (dt.i8,), ((k, n),))
    _expect(what, "s_w", s_w, (dt.f32,), ((n,), (1, n)))
    if bias is not None:
        _expect(what, "bias", bias, (dt.f16, dt.bf16, dt.f32), ((n,),))
    q_x, s_x = quantize(x)
    y = matmul(q_x, q_w).to(dt.f32) * s_x * s_w
    if bias is not None:
        y = y + bias.to(dt.f32)
    return y.to(out_dtype or x.dtype)
