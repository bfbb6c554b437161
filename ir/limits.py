"""The sizes tilefuse accepts, in one place: tensor dims, integer constants, CUDA launch grids and the
work of the attention block-sparsity analysis. Inputs beyond them are refused where they enter (the
verifier in ir/ops.py, the manifest and the launch, the analysis) with a `LimitError` that states the
limit, before anything is allocated. The README's limits table lists the same numbers."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import TilefuseError

# Every dim of every tensor (and every slice step): Triton program ids and the TVM/Triton index
# arithmetic of a single axis are 32-bit signed.
MAX_DIM = 2**31 - 1
# Elements of one tensor: byte offsets of 8-byte elements (2^62) and the sum of two of them stay
# within int64, the widest index type of every backend.
MAX_ELEMENTS = 2**59
# Integer attributes (sizes, starts, steps, indices) and constants are at most 64-bit: the backends
# hold them in int64 (TVM IntImm, Triton constexpr); integer constants must also fit their own dtype.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# CUDA launch grids: gridDim.x < 2^31, gridDim.y and gridDim.z < 65536.
GRID_MAX = (2**31 - 1, 65535, 65535)
# Attention block-sparsity analysis (kernels/attention/block_sparsity.py): the [B, H] head table it
# builds, how many distinct (b, h) classes it folds the mask for one by one (Python work per class),
# and how many (class, query block, key block) cells it evaluates (0.1-0.2 us each, evaluated in bands,
# so this bounds the time, 15-30 s at the limit, not the memory). 2^27 takes a 1M x 1M causal mask at
# the 128 x 64 blocks of the workload key.
MAX_ANALYSIS_HEADS = 2**24
MAX_HEAD_CLASSES = 4096
MAX_ANALYSIS_CELLS = 2**27


class LimitError(TilefuseError, ValueError):
    """An input beyond a size tilefuse or its backends can take; the message states the limit."""


def pow2_text(n: int) -> str:
    """`n` with its power-of-two form where it has one (2^31 - 1, 2^24), for messages."""
    for k in range(1, 64):
        if n == 2**k:
            return f"{n} (2^{k})"
        if n == 2**k - 1:
            return f"{n} (2^{k} - 1)"
    return str(n)


def check_grid(grid: Sequence[int], kernel_name: str) -> tuple[int, ...]:
    """`grid` as a tuple if CUDA can launch it (x <= 2^31 - 1, y and z <= 65535, all >= 1), else a LimitError."""
    g = tuple(int(x) for x in grid)
    bad = [f"{axis}={n} (limit {pow2_text(lim)})"
           for axis, n, lim in zip("xyz", g, GRID_MAX) if n > lim]
    bad += [f"{axis}={n} (must be >= 1)" for axis, n in zip("xyz", g) if n < 1]
    if len(g) > 3:
        bad.append(f"{len(g)} dimensions (at most 3)")
    if bad:
        raise LimitError(f"kernel {kernel_name}: launch grid {list(g)} exceeds CUDA's grid limits: "
                         f"{', '.join(bad)}; use fewer programs (larger blocks or a smaller batch)")
    return g


def check_heads(b: int, h: int, what: str) -> None:
    """Refuse a block-sparsity analysis whose [B, H] head table exceeds MAX_ANALYSIS_HEADS."""
    if b * h > MAX_ANALYSIS_HEADS:
        raise LimitError(f"{what}: B x H = {b} x {h} = {b * h} (batch, head) pairs exceed the block-sparsity "
                         f"analysis limit of {pow2_text(MAX_ANALYSIS_HEADS)}")


def check_head_classes(classes: int, what: str) -> None:
    """Refuse a mask that takes more than MAX_HEAD_CLASSES distinct forms over (b, h)."""
    if classes > MAX_HEAD_CLASSES:
        raise LimitError(f"{what}: the mask takes {classes} distinct forms over (b, h) (it uses the head or batch "
                         f"index beyond comparisons with constants); the block-sparsity analysis folds at most "
                         f"{MAX_HEAD_CLASSES} per kernel")


def check_cells(patterns: int, nqb: int, nkb: int, what: str) -> None:
    """Refuse an analysis of `patterns` x NQB x NKB block pairs beyond MAX_ANALYSIS_CELLS."""
    cells = patterns * nqb * nkb
    if cells > MAX_ANALYSIS_CELLS:
        raise LimitError(f"{what}: {patterns} pattern(s) x {nqb} x {nkb} (query block, key block) pairs = {cells} "
                         f"exceed the block-sparsity analysis limit of {pow2_text(MAX_ANALYSIS_CELLS)} pairs; "
                         "use larger blocks or a shorter sequence")
