"""The run-time block-list builder as a generated Triton kernel: a dense block mask, a block class
tensor or a top-k index list in, the compact CSR form of `block_sparsity.BlockLists` out.

The input is a strided 4-d tensor [D0, D1, D2, W] (zero strides broadcast, so a [1, H, QB, KB] block
mask expanded to [B, H, QB, KB] is read in place); row r = (i0 * D1 + i1) * D2 + i2 is one
(b, h, query block) -- or (pattern, query block) -- row of the lists, over N key-block columns.
What makes column n of a row live (visited) and full (visited without a mask) depends on the mode:

    mask     bool / u8 block mask [.., N]: nonzero -> live and full
    classes  int8 block classes [.., N] (EMPTY 0 / PARTIAL 1 / FULL 2): != 0 -> live, == 2 -> full
    topk     int kv block ids [.., K]: n live and full iff n is one of the K ids (so -1 padding,
             out-of-range ids and duplicates drop out, and the ids come out ascending)

Column `masked_col` (the ragged last key block, or -1) is never full. Three launches, one module:

1. `{name}_count`, one program per row: kv_nfull[r] and the row's live count (into kv_ptr[r + 1]).
2. `{name}_offsets`, one program: kv_ptr[1:] scanned in place in SCAN-sized chunks, kv_ptr[0] = 0.
3. `{name}_scatter`, one program per row: CHUNK columns at a time, an exclusive tl.cumsum gives each
   live column its slot; full columns go to kv_idx[kv_ptr[r]:], partial ones after the row's
   kv_nfull[r] full ones. Columns are visited in order, so each part is ascending.

kv_idx is written only below kv_ptr[R]: a caller's buffer keeps its contents past that. The lists
are built where the tensors live: under the Triton interpreter for CPU tensors (or whenever
TRITON_INTERPRET=1), JIT-compiled on CUDA; any other device raises MaskCompactError (numpy inputs
to the `block_sparsity` builders are the explicit host path). `build_aot` builds the three kernels
for an sm_XX without a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from ...errors import TilefuseError
from ...schedule.config import Config, sha256_json
from ..lowering import next_pow2

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODES = ("mask", "classes", "topk")
FNS = ("count", "offsets", "scatter")
IND = "    "
ROW_ARGS = "x, D1, D2, N, K, s0, s1, s2, s3, masked_col"
CONSTEXPRS = "CHUNK: tl.constexpr, BLOCK_K: tl.constexpr"
MAX_TOPK_TILE = 1 << 13  # elements of the [BLOCK_K, CHUNK] id-vs-column compare of the topk mode

# The top-k ids of a row, loaded once before the column loop.
_PROLOGUE: dict[str, tuple[str, ...]] = {
    "topk": (f"{IND}kk = tl.arange(0, BLOCK_K)",
             f"{IND}ids = tl.load(x + row + kk.to(tl.int64) * s3, mask=kk < K, other=-1)"),
}
# How a chunk's `cols` (in range where `inb`) become `live` and `full` in each mode; `row` is the
# row's element offset in x.
_CLASSIFY: dict[str, tuple[str, ...]] = {
    "mask": ("v = tl.load(x + row + cols.to(tl.int64) * s3, mask=inb, other=0)",
             "live = v != 0",
             "full = live"),
    "classes": ("v = tl.load(x + row + cols.to(tl.int64) * s3, mask=inb, other=0)",
                "live = v != 0",
                "full = v == 2"),
    "topk": ("hits = tl.sum((ids[:, None] == cols[None, :]).to(tl.int32), 0)",
             "live = (hits > 0) & inb",
             "full = live"),
}


class MaskCompactError(TilefuseError, RuntimeError):
    """The block-list kernel cannot run on these tensors (device, dtype, shape or output buffers)."""


def kernel_name(mode: str) -> str:
    """The module's kernel name prefix for `mode`."""
    return f"mask_compact_{mode}"


def default_config(mode: str, n_cols: int, k: int = 0) -> Config:
    """CHUNK columns per step (a power of two, 16..256), BLOCK_K >= K for top-k, SCAN rows per scan step;
    one warp per 512 elements of a step's tile, at most 4."""
    _check_mode(mode)
    chunk = max(16, min(256, next_pow2(max(1, n_cols))))
    block_k = max(2, next_pow2(k)) if mode == "topk" else 1
    if mode == "topk":
        chunk = max(16, min(chunk, MAX_TOPK_TILE // block_k))
    warps = max(1, min(4, chunk * block_k // 512))
    return Config(CHUNK=chunk, BLOCK_K=block_k, SCAN=512, num_warps=warps)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise MaskCompactError(f"mask_compact: unknown mode {mode!r}; accepted: {', '.join(MODES)}")


# ---- rendering -----------------------------------------------------------------------------------
def workload_key(mode: str) -> str:
    """sha256 of what determines the source besides the Config: the family, mode and schema."""
    return sha256_json({"family": "mask_compact", "mode": mode, "schema": SCHEMA_VERSION})


def _row_lines() -> list[str]:
    """`r` (this program's row) and `row`, its element offset in x. Inlined rather than a jitted
    helper: the interpreter re-patches triton.language on every nested call (half its run time)."""
    return [f"{IND}r = tl.program_id(0)",
            f"{IND}i2 = r % D2",
            f"{IND}i1 = (r // D2) % D1",
            f"{IND}i0 = r // (D2 * D1)",
            f"{IND}row = i0.to(tl.int64) * s0 + i1.to(tl.int64) * s1 + i2.to(tl.int64) * s2"]


def _classify_lines(mode: str) -> list[str]:
    """`live` and `full` flags of the chunk `cols`; masked_col is never full."""
    i2 = IND * 2
    return ([f"{i2}inb = cols < N"] + [i2 + line for line in _CLASSIFY[mode]]
            + [f"{i2}full = full & (cols != masked_col)"])


def render(mode: str, config: Config) -> str:
    """Readable, deterministic Triton source of the three kernels for `mode` (Config in the header)."""
    _check_mode(mode)
    name = kernel_name(mode)
    i2 = IND * 2
    L = [f"# tilefuse generated triton kernel: {name}",
         f"# family: mask_compact   workload: {workload_key(mode)[:16]}",
         f"# config: {config.to_json()}",
         "import triton", "import triton.language as tl", "", ""]
    L += ["@triton.jit",
          f"def {name}_count({ROW_ARGS}, kv_ptr, kv_nfull, {CONSTEXPRS}):",
          f'{IND}"""kv_nfull[r] and the live count of row r (into kv_ptr[r + 1], scanned next)."""',
          *_row_lines(),
          *_PROLOGUE.get(mode, ()),
          f"{IND}n_live = tl.full([CHUNK], 0, dtype=tl.int32)",
          f"{IND}n_full = tl.full([CHUNK], 0, dtype=tl.int32)",
          f"{IND}for c0 in range(0, N, CHUNK):",
          f"{i2}cols = c0 + tl.arange(0, CHUNK)",
          *_classify_lines(mode),
          f"{i2}n_live += live.to(tl.int32)",
          f"{i2}n_full += full.to(tl.int32)",
          f"{IND}tl.store(kv_nfull + r, tl.sum(n_full, 0))",
          f"{IND}tl.store(kv_ptr + r + 1, tl.sum(n_live, 0))", "", ""]
    L += ["@triton.jit",
          f"def {name}_offsets(kv_ptr, R, SCAN: tl.constexpr):",
          f'{IND}"""Row counts in kv_ptr[1:] -> row starts: an inclusive scan, carried across chunks."""',
          f"{IND}carry = tl.full([], 0, dtype=tl.int32)",
          f"{IND}tl.store(kv_ptr, carry)",
          f"{IND}for c0 in range(0, R, SCAN):",
          f"{i2}i = c0 + tl.arange(0, SCAN)",
          f"{i2}c = tl.load(kv_ptr + 1 + i, mask=i < R, other=0)",
          f"{i2}tl.store(kv_ptr + 1 + i, carry + tl.cumsum(c, 0), mask=i < R)",
          f"{i2}carry += tl.sum(c, 0)", "", ""]
    L += ["@triton.jit",
          f"def {name}_scatter({ROW_ARGS}, kv_ptr, kv_nfull, kv_idx, {CONSTEXPRS}):",
          f'{IND}"""Row r\'s full columns to kv_idx[kv_ptr[r]:], its partial ones after them, ascending."""',
          *_row_lines(),
          *_PROLOGUE.get(mode, ()),
          f"{IND}next_full = tl.load(kv_ptr + r)",
          f"{IND}next_part = next_full + tl.load(kv_nfull + r)",
          f"{IND}for c0 in range(0, N, CHUNK):",
          f"{i2}cols = c0 + tl.arange(0, CHUNK)",
          *_classify_lines(mode),
          f"{i2}part = live & (full == 0)",
          f"{i2}f = full.to(tl.int32)",
          f"{i2}p = part.to(tl.int32)",
          f"{i2}tl.store(kv_idx + next_full + tl.cumsum(f, 0) - f, cols, mask=full)",
          f"{i2}tl.store(kv_idx + next_part + tl.cumsum(p, 0) - p, cols, mask=part)",
          f"{i2}next_full += tl.sum(f, 0)",
          f"{i2}next_part += tl.sum(p, 0)"]
    return "\n".join(L) + "\n"


def signature(fn: str, x_type: str) -> dict[str, str]:
    """Triton argument types of kernel `fn` (count / offsets / scatter) for an input of type `x_type`."""
    if fn == "offsets":
        return {"kv_ptr": "*i32", "R": "i32"}
    sig = {"x": x_type, **{a: "i32" for a in ROW_ARGS.split(", ")[1:]}, "kv_ptr": "*i32", "kv_nfull": "*i32"}
    if fn == "scatter":
        sig["kv_idx"] = "*i32"
    return sig


def constexprs(fn: str, config: Config) -> dict[str, int]:
    """The constexpr arguments of kernel `fn` under `config`."""
    if fn == "offsets":
        return {"SCAN": config.int("SCAN")}
    return {"CHUNK": config.int("CHUNK"), "BLOCK_K": config.int("BLOCK_K")}


def build_aot(mode: str, config: Config, x_type: str, arch: int, cache: Any = "default") -> dict[str, Any]:
    """Cubins of the three kernels for sm_`arch` (kernel function name -> TritonBinary), no GPU needed;
    `x_type` is the input's Triton pointer type ('*u8' for bool / u8 masks, '*i8' classes, '*i32' ids)."""
    from ...codegen.aot import build_triton
    from ...codegen.cache import default_cache

    source = render(mode, config)
    out = {}
    for fn in FNS:
        name = f"{kernel_name(mode)}_{fn}"
        out[name] = build_triton(source, name, signature(fn, x_type), constexprs(fn, config), arch=arch,
                                 num_warps=config.int("num_warps"), num_stages=1,
                                 cache=default_cache() if cache == "default" else cache)
    return out


# ---- running -------------------------------------------------------------------------------------
def _interpret_for(device: Any) -> bool:
    """Whether launches on `device` run under the Triton interpreter (CPU) or JIT (CUDA)."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        raise MaskCompactError("mask_compact: triton is not installed; build the block lists from numpy arrays "
                               "(or pass host=True) to use the host path")
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        from ...settings import get_settings

        return get_settings().triton_interpret
    raise MaskCompactError(f"mask_compact: Triton cannot run on device {device}; accepted: cpu (interpreter) or "
                           "cuda tensors, or numpy arrays / host=True for the host path")


def _check_out(out: tuple[Any, Any, Any], rows: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    ptr, nfull, idx = out
    for name, t, n in (("kv_ptr", ptr, rows + 1), ("kv_nfull", nfull, rows), ("kv_idx", idx, None)):
        if t.dtype != torch.int32 or t.device != device or t.dim() != 1 or not t.is_contiguous():
            raise MaskCompactError(f"mask_compact: out {name} must be a contiguous 1-d int32 tensor on {device}, "
                                   f"got {t.dtype} {tuple(t.shape)} on {t.device}")
        if n is not None and t.numel() != n:
            raise MaskCompactError(f"mask_compact: out {name} needs {n} elements for {rows} rows, got {t.numel()}")
    return ptr, nfull, idx


def compact_rows(x: Any, mode: str, n_cols: int, masked_col: int = -1, out: tuple[Any, Any, Any] | None = None,
                 config: Config | None = None) -> tuple[Any, Any, Any]:
    """(kv_ptr [R + 1], kv_nfull [R], kv_idx) int32 of the rows of a 4-d torch tensor `x` [D0, D1, D2, W]
    over `n_cols` key blocks (W == n_cols, or K for top-k). With `out`, kv_idx may hold R * n_cols
    elements (no device sync) or fewer (checked against kv_ptr[R], a sync); only kv_idx[:kv_ptr[R]]
    is written. Without it, kv_idx is allocated to exactly kv_ptr[R] elements."""
    import torch

    from ...codegen.triton_runtime import launch, load_module

    _check_mode(mode)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise MaskCompactError(f"mask_compact: expected a 4-d torch tensor [D0, D1, D2, W], got "
                               f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if mode != "topk" and x.shape[3] != n_cols:
        raise MaskCompactError(f"mask_compact: a {mode} input {tuple(x.shape)} must have {n_cols} key-block columns")
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)  # same bytes; Triton's i1 pointers are not portable across backends
    if x.dtype.is_floating_point or x.dtype.is_complex:
        raise MaskCompactError(f"mask_compact: {mode} input must be bool or integer, got {x.dtype}")
    interpret = _interpret_for(x.device)
    d0, d1, d2, w = x.shape
    rows = d0 * d1 * d2
    k = w if mode == "topk" else 0
    config = config or default_config(mode, n_cols, k)
    if out is None:
        ptr = torch.empty(rows + 1, dtype=torch.int32, device=x.device)
        nfull = torch.empty(rows, dtype=torch.int32, device=x.device)
        idx = None
    else:
        ptr, nfull, idx = _check_out(out, rows, x.device)
    mod = load_module(render(mode, config), interpret)
    name = kernel_name(mode)
    row_args = [x, d1, d2, n_cols, k, *x.stride(), masked_col]
    cex = constexprs("count", config)
    opts = {"num_warps": config.int("num_warps"), "num_stages": 1}
    if rows:
        launch(getattr(mod, f"{name}_count"), (rows,), row_args + [ptr, nfull], cex, opts, interpret)
    launch(getattr(mod, f"{name}_offsets"), (1,), [ptr, rows], constexprs("offsets", config), opts, interpret)
    if idx is None or idx.numel() < rows * n_cols:
        nnz = int(ptr[rows])
        if idx is None:
            idx = torch.empty(nnz, dtype=torch.int32, device=x.device)
        elif idx.numel() < nnz:
            raise MaskCompactError(f"mask_compact: out kv_idx holds {idx.numel()} elements, the lists need {nnz}")
    if rows:
        launch(getattr(mod, f"{name}_scatter"), (rows,), row_args + [ptr, nfull, idx], cex, opts, interpret)
    logger.debug("%s: %d rows x %d key blocks", name, rows, n_cols)
    return ptr, nfull, idx
