"""Data types of the IR: names, widths, packing of sub-byte integers, numpy/torch/triton spellings."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from ..errors import TilefuseError


class Kind(enum.Enum):
    FLOAT = "float"
    INT = "int"
    UINT = "uint"
    BOOL = "bool"


@dataclass(frozen=True)
class DType:
    """A scalar element type. Packed sub-byte integers name their in-byte packing order."""

    name: str
    bits: int
    kind: Kind
    # For packed types: the order in which logical elements occupy the nibbles/crumbs of a
    # byte, lowest bits first. (0, 1) means element 0 sits in the low nibble.
    pack_order: tuple[int, ...] = ()

    @property
    def is_float(self) -> bool:
        return self.kind is Kind.FLOAT

    @property
    def is_int(self) -> bool:
        return self.kind in (Kind.INT, Kind.UINT)

    @property
    def is_bool(self) -> bool:
        return self.kind is Kind.BOOL

    @property
    def is_signed(self) -> bool:
        return self.kind in (Kind.INT, Kind.FLOAT)

    @property
    def packed(self) -> bool:
        return self.bits < 8 and self.kind is not Kind.BOOL

    @property
    def itemsize(self) -> int:
        """Bytes per element as stored (packed types report their container byte)."""
        return max(1, self.bits // 8)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"dtypes.{self.name}"


f64 = DType("f64", 64, Kind.FLOAT)
f32 = DType("f32", 32, Kind.FLOAT)
f16 = DType("f16", 16, Kind.FLOAT)
bf16 = DType("bf16", 16, Kind.FLOAT)
f8e4m3 = DType("f8e4m3", 8, Kind.FLOAT)
f8e5m2 = DType("f8e5m2", 8, Kind.FLOAT)
i64 = DType("i64", 64, Kind.INT)
i32 = DType("i32", 32, Kind.INT)
i16 = DType("i16", 16, Kind.INT)
i8 = DType("i8", 8, Kind.INT)
u8 = DType("u8", 8, Kind.UINT)
bool_ = DType("bool", 8, Kind.BOOL)
# Packed sub-byte integers: two (4-bit) or four (2-bit) logical elements per byte.
int4 = DType("int4", 4, Kind.INT, pack_order=(0, 1))
uint4 = DType("uint4", 4, Kind.UINT, pack_order=(0, 1))
int2 = DType("int2", 2, Kind.INT, pack_order=(0, 1, 2, 3))

ALL: tuple[DType, ...] = (f64, f32, f16, bf16, f8e4m3, f8e5m2, i64, i32, i16, i8, u8, bool_, int4, uint4, int2)
_BY_NAME: dict[str, DType] = {d.name: d for d in ALL}
_ALIASES = {
    "float64": f64, "float32": f32, "float16": f16, "bfloat16": bf16, "half": f16, "float": f32,
    "int64": i64, "int32": i32, "int16": i16, "int8": i8, "uint8": u8, "fp8e4m3": f8e4m3,
    "fp8e5m2": f8e5m2, "e4m3": f8e4m3, "e5m2": f8e5m2,
}
FLOATS = frozenset(d for d in ALL if d.is_float)
INTS = frozenset(d for d in ALL if d.is_int and not d.packed)
PACKED = frozenset(d for d in ALL if d.packed)


class DTypeError(TilefuseError, ValueError):
    """An unknown dtype name or an unsupported dtype use."""


def dtype(x: str | DType) -> DType:
    """Look a dtype up by canonical name or common alias ("f16", "float16", "bf16")."""
    if isinstance(x, DType):
        return x
    d = _BY_NAME.get(x) or _ALIASES.get(x)
    if d is None:
        raise DTypeError(f"unknown dtype {x!r}; accepted: {', '.join(sorted(_BY_NAME))}")
    return d


def promote(a: DType, b: DType) -> DType:
    """Result dtype of a binary arithmetic op: the wider float, else the wider int."""
    if a == b:
        return a
    if a.is_float or b.is_float:
        fa = [d for d in (a, b) if d.is_float]
        if len(fa) == 1:
            return fa[0]
        if {a, b} == {f16, bf16}:
            return f32
        return a if a.bits >= b.bits else b
    if a.is_bool:
        return b
    if b.is_bool:
        return a
    return a if a.bits >= b.bits else b


# ---- numpy ---------------------------------------------------------------------------------
_NP = {f64: np.float64, f32: np.float32, f16: np.float16, i64: np.int64, i32: np.int32, i16: np.int16,
       i8: np.int8, u8: np.uint8, bool_: np.bool_, int4: np.uint8, uint4: np.uint8, int2: np.uint8}


def to_numpy(d: DType) -> Any:
    """The numpy dtype that stores `d` on the host. bf16 and fp8 are held as float32 values
    that are exactly representable in `d`; packed integers are held as their container bytes."""
    if d in (bf16, f8e4m3, f8e5m2):
        return np.float32
    return _NP[d]


def storage_numpy(d: DType) -> Any:
    """The numpy dtype that holds `d`'s bits on the host for kernels (bf16 via ml_dtypes); unlike
    to_numpy, which picks the reference's working representation."""
    if d == bf16:
        import ml_dtypes

        return ml_dtypes.bfloat16
    return to_numpy(d)


def round_to(x: np.ndarray, d: DType) -> np.ndarray:
    """Round float64 values to the nearest value representable in `d` (returned as float64/int)."""
    if d.is_float:
        if d == f64:
            return x.astype(np.float64)
        if d == f32:
            return x.astype(np.float32).astype(np.float64)
        if d == f16:
            return x.astype(np.float16).astype(np.float64)
        if d == bf16:
            return _round_bf16(x.astype(np.float32)).astype(np.float64)
        return _round_fp8(x.astype(np.float64), d)
    if d.is_bool:
        return x != 0
    if d.packed:
        raise DTypeError(f"cannot round values to packed dtype {d}; unpack with dequantize instead")
    arr = np.asarray(x)
    # Integer casts truncate toward zero, as C and Triton do; out-of-range values wrap.
    ints = np.trunc(np.nan_to_num(arr)).astype(np.int64) if arr.dtype.kind == "f" else arr.astype(np.int64)
    return ints.astype(_NP[d]).astype(np.int64)


def _round_bf16(x32: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16 << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x32), np.float32(np.nan), out)


def _round_fp8(x: np.ndarray, d: DType) -> np.ndarray:
    man, emin, maxv = (3, -6, 448.0) if d == f8e4m3 else (2, -14, 57344.0)
    ax = np.minimum(np.abs(x), 2 * maxv)  # inf saturates like any value past the largest (NaN stays NaN)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(np.where(ax > 0, ax, 1.0)))
    e = np.maximum(e, emin)
    q = 2.0 ** (e - man)
    r = np.round(ax / q) * q  # numpy rounds half to even
    r = np.minimum(r, maxv)  # saturate, as the "satfinite" conversions do
    return np.where(np.isnan(x), np.nan, np.sign(x) * r)


def tolerance(d: DType) -> tuple[float, float]:
    """(rtol, atol) for comparing a kernel's output of dtype `d` with the f64 reference."""
    return {
        f64: (1e-9, 1e-9), f32: (1e-4, 1e-5), f16: (1e-2, 1e-2), bf16: (5e-2, 5e-2),
        f8e4m3: (0.15, 0.1), f8e5m2: (0.3, 0.2),
    }.get(d, (0.0, 0.0))


# ---- torch / triton (lazy: torch is optional) ----------------------------------------------
_TORCH_NAMES = {f64: "float64", f32: "float32", f16: "float16", bf16: "bfloat16", f8e4m3: "float8_e4m3fn",
                f8e5m2: "float8_e5m2", i64: "int64", i32: "int32", i16: "int16", i8: "int8", u8: "uint8",
                bool_: "bool", int4: "uint8", uint4: "uint8", int2: "uint8"}
_TRITON_NAMES = {f64: "fp64", f32: "fp32", f16: "fp16", bf16: "bf16", f8e4m3: "fp8e4nv", f8e5m2: "fp8e5",
                 i64: "i64", i32: "i32", i16: "i16", i8: "i8", u8: "u8", bool_: "i1", int4: "u8",
                 uint4: "u8", int2: "u8"}
_TL_NAMES = {f64: "tl.float64", f32: "tl.float32", f16: "tl.float16", bf16: "tl.bfloat16",
             f8e4m3: "tl.float8e4nv", f8e5m2: "tl.float8e5", i64: "tl.int64", i32: "tl.int32",
             i16: "tl.int16", i8: "tl.int8", u8: "tl.uint8", bool_: "tl.int1"}


def to_torch(d: DType) -> Any:
    """The torch dtype that stores `d` (packed types: uint8 containers)."""
    import torch

    return getattr(torch, _TORCH_NAMES[d])


def from_torch(t: Any) -> DType:
    """The IR dtype of a torch dtype."""
    name = str(t).removeprefix("torch.")
    for d, n in _TORCH_NAMES.items():
        if n == name and not d.packed:
            return d
    raise DTypeError(f"torch dtype {t} has no tilefuse equivalent")


def torch_of_triton_sig(name: str) -> Any:
    """The torch dtype of a Triton pointer element spelling ("i32" -> torch.int32; "u8" is uint8)."""
    for d, n in _TRITON_NAMES.items():
        if n == name and not d.packed:
            return to_torch(d)
    raise DTypeError(f"Triton element type {name!r} has no torch dtype; accepted: "
                     f"{', '.join(sorted(set(_TRITON_NAMES.values())))}")


def triton_sig(d: DType) -> str:
    """Triton signature spelling of a pointer element type ("fp16", "bf16", "i32", ...)."""
    return _TRITON_NAMES[d]


def triton_lang(d: DType) -> str:
    """Triton language spelling of a dtype ("tl.float16")."""
    if d not in _TL_NAMES:
        raise DTypeError(f"dtype {d} has no Triton register type (packed types are unpacked by dequantize)")
    return _TL_NAMES[d]
