"""The structure of a constant sparse matrix (pruned weights known at compile time): density, the spread
of row lengths, how full the blocks that hold a nonzero are at 16/32/64, and whether it is 2:4. The
formats it could run as (CSR, BSR at a block size, 2:4, dense) and their arrays, for the compiler to
rank (sparse_plan.py) and the report to show, as attention's block-sparsity analysis is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir.sparse_op import bsr_from_dense, csr_from_dense, prune_2to4

BLOCKS = (16, 32, 64)
MAX_DENSE_CELLS = 1 << 27  # the analysis and conversions densify the matrix (1 GiB of float64 at this size)


@dataclass(frozen=True)
class PatternStats:
    """What the compiler knows about a constant pattern; `attr` becomes the sparse node's `pattern`
    attribute, which the spmm spec's family_features hand to the cost model."""

    shape: tuple[int, int]
    nnz: int
    row_quantiles: tuple[float, float, float, float]  # row lengths: p50, p90, p99, max
    empty_rows: int
    block_fill: tuple[tuple[int, float], ...]  # (block, nnz over the cells of the blocks holding a nonzero)
    conform_24: float  # fraction of groups of four columns holding at most two nonzeros (1.0: it is 2:4)

    @property
    def density(self) -> float:
        return self.nnz / float(max(1, self.shape[0] * self.shape[1]))

    def formats(self) -> list[str]:
        """The formats this pattern can run as: csr, bsr<b> where b divides both sizes, 2:4, dense."""
        out = ["csr"] + [f"bsr{b}" for b, _ in self.block_fill]
        if self.conform_24 == 1.0:
            out.append("2:4")
        return out + ["dense"]

    def attr(self) -> tuple[float, ...]:
        """The `pattern` attribute of a sparse node (ir/sparse_op.PATTERN_FIELDS order)."""
        fill = dict(self.block_fill)
        return (*self.row_quantiles, float(self.empty_rows), *(fill.get(b, 0.0) for b in BLOCKS), self.conform_24)

    def summary(self) -> str:
        """One line: density, row-length quantiles, block fill, 2:4 conformance."""
        p50, p90, p99, pmax = self.row_quantiles
        fill = ", ".join(f"{b}: {f:.0%}" for b, f in self.block_fill) or "no block size divides the shape"
        return (f"{self.shape[0]}x{self.shape[1]}, nnz {self.nnz} (density {self.density:.1%}), row lengths "
                f"p50/p90/p99/max {p50:g}/{p90:g}/{p99:g}/{pmax:g} ({self.empty_rows} empty), block fill {fill}, "
                f"2:4 conformance {self.conform_24:.0%}")


def analyze(dense: np.ndarray) -> PatternStats:
    """The statistics of the nonzeros of a dense [M, K] matrix."""
    nz = np.asarray(dense) != 0
    m, k = nz.shape
    lengths = nz.sum(axis=1)
    p50, p90, p99, pmax = (float(x) for x in np.quantile(lengths, (0.5, 0.9, 0.99, 1.0)))
    fills = []
    for b in BLOCKS:
        if m % b == 0 and k % b == 0 and (m > b or k > b):
            held = nz.reshape(m // b, b, k // b, b).any(axis=(1, 3)).sum()
            fills.append((b, float(nz.sum()) / float(max(1, held * b * b))))
    conform = float((nz.reshape(m, k // 4, 4).sum(axis=2) <= 2).mean()) if k % 4 == 0 and m else 0.0
    return PatternStats((m, k), int(nz.sum()), (p50, p90, p99, pmax), int((lengths == 0).sum()), tuple(fills),
                        conform)


def convert(dense: np.ndarray, fmt: str, values_dtype: np.dtype) -> dict[str, np.ndarray]:
    """The arrays of `dense` in `fmt` (the operands of a `sparse` node, by role; dense: the matrix)."""
    x = np.asarray(dense)
    if fmt == "dense":
        return {"dense": x.astype(values_dtype)}
    if fmt == "2:4":
        _, vals, meta = prune_2to4(x)  # conformant, so pruning keeps every nonzero
        return {"values": vals.astype(values_dtype), "meta": meta}
    if fmt == "csr":
        ip, ix, v = csr_from_dense(x)
    else:
        b = int(fmt[3:])
        ip, ix, v = bsr_from_dense(x, (b, b))
    return {"indptr": ip, "indices": ix, "values": v.astype(values_dtype)}
