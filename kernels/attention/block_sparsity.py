"""Block-sparsity analysis of attention masks: every (query block, key block) pair of every head is
full (mask all true: no per-element masking), partial (mask applied per element) or empty (skipped).

The analysis evaluates the mask expression over *intervals* (one per block pair, vectorised over
the block grid): sound for any expression, exact for the usual affine masks. Pairs the intervals
cannot decide are then evaluated element by element (static masks only, within a budget), so the
counts are exact for causal, sliding-window, sink + local and strided masks. Heads whose folded mask
expressions are identical share one analysis; heads with identical block classes share one list.

Masks that LOAD operands (block masks, top-k lists, document ids) are analysed at compile time with
the loads unknown (their static part still prunes blocks) and again at run time with the loads bound
to the actual tensors: a load whose indices are constant over a block pair (block masks and top-k
lists aligned to the kernel blocks) then decides the pair exactly.

Heads are grouped before anything is folded: the mask's largest subexpressions that read only b and h
(and fold to constants, e.g. `lt h 16`) are evaluated over all (b, h) at once, and pairs with equal
values fold to one expression. So the cost is O(B x H) vectorised work plus O(distinct patterns)
analyses, within the limits of ir/limits.py (checked before anything is allocated). Interval
evaluation is in intervals.py; the compact CSR lists the kernels read are in block_lists.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...ir import expr as ex
from ...ir.expr import E, Expr
from ...ir.limits import check_cells, check_head_classes, check_heads
from ...ir.reference import eval_expr
from .block_lists import (EMPTY, FULL, PARTIAL, BlockLists, compact, lists_from_block_mask,  # noqa: F401
                          lists_from_topk)
from .intervals import Ival, Loader, eval_interval

REFINE_BUDGET = 1 << 26  # elements evaluated exactly per analysis before falling back to "partial"
_CHUNK = 1 << 21  # elements per step of the exact refinement
_CHUNK_CELLS = 1 << 20  # block pairs per step of the interval evaluation (bounds its memory)


# ---- folding b / h into constants, so heads with one mask share one analysis ----------------------
def fold(e: Expr, values: dict[str, int]) -> Expr:
    """`e` with the VARs in `values` replaced by constants and integer/bool constants folded."""

    def step(n: Expr) -> Expr | None:
        if n.op is E.VAR and n.arg in values:
            return ex.const(values[n.arg], n.dtype)
        return None

    e = ex.substitute(e, step)
    memo: dict[int, Expr] = {}
    for n in ex.toposort([e]):
        src = tuple(memo[id(x)] for x in n.src)
        memo[id(n)] = _fold_node(n, src)
    return memo[id(e)]


def _fold_node(n: Expr, src: tuple[Expr, ...]) -> Expr:
    node = n if all(a is b for a, b in zip(src, n.src)) else Expr(n.op, n.dtype, src, n.arg)
    consts = [x.op is E.CONST for x in src]
    if n.op is E.WHERE and consts[0]:
        return src[1] if src[0].arg else src[2]
    if n.op in (E.AND, E.OR) and n.dtype.is_bool:
        for i in (0, 1):
            if consts[i]:
                absorbing = src[i].arg is (n.op is E.OR)
                return src[i] if absorbing else src[1 - i]
    if src and all(consts) and n.op is not E.LOAD and (n.dtype.is_int or n.dtype.is_bool):
        v = np.asarray(eval_expr(node)).item()
        return ex.const(v, n.dtype)
    return node


# ---- head classes: (b, h) pairs on which the mask folds to one expression -------------------------
def _signature(mask: Expr, used: set[str]) -> list[Expr]:
    """The subexpressions whose values decide `fold(mask, {b, h})` as far as the compile-time analysis
    can tell: nodes that fold to constants for any b and h (the used VARs, and loads-free integer/bool
    nodes of such operands) and that a non-folding node (or nobody: the root) reads. Pairs that agree
    on them fold to the same expression, up to load indices: loads are unknown at compile time whatever
    they index (a [B, H, ...] block mask is one analysis, not one per head)."""
    order = ex.toposort([mask])
    folds: set[int] = set()
    for n in order:
        leaf = n.op is E.CONST or (n.op is E.VAR and n.arg in used)
        int_op = n.src and n.op is not E.LOAD and (n.dtype.is_int or n.dtype.is_bool)
        if leaf or (int_op and all(id(s) in folds for s in n.src)):
            folds.add(id(n))
    read = {id(s) for n in order if id(n) not in folds and n.op is not E.LOAD for s in n.src} | {id(mask)}
    return [n for n in order if id(n) in folds and id(n) in read and n.op is not E.CONST]


def _dense_codes(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 0..K-1 of the K distinct values of a 1-d array, in value order: a lookup table when the
    integer values span little more than the array (no sort: 8M heads in tens of milliseconds)."""
    if v.dtype == np.bool_:  # the usual signature (`lt h 16`): no table needed
        both = bool(v.any()) and not bool(v.all())
        return (v.view(np.int8), 2) if both else (np.zeros(v.size, dtype=np.int8), 1)
    if v.dtype.kind in "iu" and v.size:
        lo, hi = int(v.min()), int(v.max())
        if hi - lo < max(1 << 20, 4 * v.size):
            off = (v.astype(np.int64) - lo) if lo else v.astype(np.int64)
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[off] = True
            rank = np.cumsum(present, dtype=np.int64) - 1
            return rank[off], int(rank[-1]) + 1
    uniq, inverse = np.unique(v, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), len(uniq)


def _first_of_each(key: np.ndarray, count: int) -> np.ndarray:
    """The flat index where each code 0..count-1 of `key` first occurs."""
    if count <= 64:  # a short-circuiting argmax per code beats a scatter over millions of heads
        return np.array([int(np.argmax(key == c)) for c in range(count)], dtype=np.int64)
    first = np.full(count, key.size, dtype=np.int64)
    np.minimum.at(first, key, np.arange(key.size, dtype=np.int64))
    return first


def head_classes(mask: Expr, used: set[str], b: int, h: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, rank, reps): a code per (b, h) pair ([B', H'], B' = B if the mask reads b else 1, H'
    likewise), the class of each code (classes numbered in row-major first-appearance order) and the
    flat index of each class's first pair. Pairs of one class fold `mask` to the same expression."""
    nb, nh = (b if "b" in used else 1), (h if "h" in used else 1)
    env = {"b": np.arange(nb, dtype=np.int32).reshape(nb, 1), "h": np.arange(nh, dtype=np.int32).reshape(1, nh)}
    key, count = np.zeros(nb * nh, dtype=np.int8), 1
    signature = _signature(mask, used)
    with np.errstate(all="ignore"):
        for n in signature:
            v = np.broadcast_to(np.asarray(eval_expr(n, variables=env)), (nb, nh)).reshape(-1)
            codes, k = _dense_codes(v)
            if count * k >= 1 << 62:  # keep the combined key within int64
                key, count = _dense_codes(key)
            key, count = (key.astype(np.int64) * k + codes, count * k) if count > 1 else (codes, k)
    if len(signature) > 1:  # combinations of the columns' codes: number those that occur
        key, count = _dense_codes(key)
    check_head_classes(count, what)
    first = _first_of_each(key, count)
    order = np.argsort(first, kind="stable")
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    return key.reshape(nb, nh), rank, first[order]


# ---- the analysis ----------------------------------------------------------------------------------
@dataclass
class BlockSparsity:
    """Block classes [P, NQB, NKB] (EMPTY/PARTIAL/FULL) for P head patterns; `pattern_of` [B, H]."""

    block_m: int
    block_n: int
    sq: int
    sk: int
    classes: np.ndarray
    pattern_of: np.ndarray
    exact: bool  # every class is exact (False: some pairs kept "partial" conservatively)
    data_dependent: bool

    @property
    def num_patterns(self) -> int:
        return int(self.classes.shape[0])

    def counts(self) -> list[dict[str, int]]:
        """Per pattern: how many block pairs are full, partial and empty."""
        return [{"full": int((c == FULL).sum()), "partial": int((c == PARTIAL).sum()),
                 "empty": int((c == EMPTY).sum())} for c in self.classes]

    def density(self) -> float:
        """Fraction of (b, h, q block, kv block) pairs that the kernel visits."""
        live = (self.classes != EMPTY).reshape(self.num_patterns, -1).mean(axis=1)
        return float(live[self.pattern_of].mean())

    def heads_of(self, p: int) -> str:
        """The heads of pattern `p` as runs ("0-15,20"), vectorised: a table may hold millions of heads."""
        hs = np.flatnonzero((self.pattern_of == p).any(axis=0))
        breaks = np.flatnonzero(np.diff(hs) != 1)
        starts, ends = np.concatenate((hs[:1], hs[breaks + 1])), np.concatenate((hs[breaks], hs[-1:]))
        return ",".join(f"{s}" if s == e else f"{s}-{e}" for s, e in zip(starts.tolist(), ends.tolist()))

    def summary(self) -> list[str]:
        """One line per head pattern: heads, full / partial / empty block pairs, density."""
        note = "" if self.exact else " (conservative)"
        kind = "runtime-refined, " if self.data_dependent else ""
        out = [f"block sparsity at {self.block_m}x{self.block_n} ({kind}{self.num_patterns} head pattern(s), "
               f"density {self.density():.3f}){note}"]
        total = self.classes.shape[1] * self.classes.shape[2]
        for p, c in enumerate(self.counts()):
            out.append(f"  pattern {p} heads {self.heads_of(p)}: full {c['full']}, partial {c['partial']}, "
                       f"empty {c['empty']} of {total}")
        return out

    def describe(self) -> dict[str, Any]:
        """JSON data identifying the block structure (for workload keys)."""
        return {"block": [self.block_m, self.block_n], "counts": self.counts(),
                "pattern_of": self.pattern_of.tolist(), "exact": self.exact,
                "classes_sha256": hashlib.sha256(np.ascontiguousarray(self.classes).tobytes()).hexdigest()}

    def lists(self, device: Any = None, transposed: bool = False) -> BlockLists:
        """The CSR lists over (pattern, query block) rows, or with `transposed` over (pattern, key block)
        rows (the backward's dK/dV walk): numpy when `device` is None (host reference), else torch
        tensors built on `device` by the generated kernel (kernels/mask_compact.py)."""
        cls: Any = self.classes
        pat: Any = self.pattern_of
        if device is not None:
            import torch

            cls, pat = torch.from_numpy(cls).to(device), torch.from_numpy(pat).to(device)
        if transposed:
            return compact(cls.swapaxes(1, 2), pat, self.sq, self.block_m)
        return compact(cls, pat, self.sk, self.block_n)


def _block_env(sq: int, sk: int, bm: int, bn: int) -> tuple[dict[str, Ival], tuple[int, int]]:
    nqb, nkb = -(-sq // bm), -(-sk // bn)
    m, n = np.arange(nqb, dtype=np.float64)[:, None], np.arange(nkb, dtype=np.float64)[None, :]
    env = {"q_idx": (m * bm, np.minimum((m + 1) * bm, sq) - 1), "kv_idx": (n * bn, np.minimum((n + 1) * bn, sk) - 1)}
    return env, (nqb, nkb)


def _classify(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.where(lo >= 1, FULL, np.where(hi <= 0, EMPTY, PARTIAL)).astype(np.int8)


def _refine(e: Expr, cls: np.ndarray, sq: int, sk: int, bm: int, bn: int, budget: int) -> tuple[np.ndarray, int]:
    """Exact classes of the PARTIAL pairs of `cls` (a [NQB, NKB] copy), within `budget` elements."""
    cls = cls.copy()
    ms, ns = np.nonzero(cls == PARTIAL)
    per = max(1, _CHUNK // (bm * bn))
    left = budget
    for i in range(0, len(ms), per):
        if left <= 0:
            break
        m, n = ms[i:i + per], ns[i:i + per]
        q = m[:, None, None] * bm + np.arange(bm)[None, :, None]
        kv = n[:, None, None] * bn + np.arange(bn)[None, None, :]
        valid = (q < sq) & (kv < sk)
        val = np.broadcast_to(np.asarray(eval_expr(e, variables={"q_idx": q, "kv_idx": kv}), dtype=bool), valid.shape)
        all_true = np.all(val | ~valid, axis=(1, 2))
        any_true = np.any(val & valid, axis=(1, 2))
        cls[m, n] = np.where(all_true, FULL, np.where(any_true, PARTIAL, EMPTY))
        left -= len(m) * bm * bn
    return cls, left


def _interval_classes(e: Expr, env: dict[str, Ival], grid: tuple[int, int]) -> np.ndarray:
    """Interval classes of `e` over the [NQB, NKB] block grid, a band of query blocks at a time."""
    nqb, nkb = grid
    rows = max(1, _CHUNK_CELLS // nkb)
    out = np.empty(grid, dtype=np.int8)
    qlo, qhi = env["q_idx"]
    for r0 in range(0, nqb, rows):
        r1 = min(nqb, r0 + rows)
        band = {**env, "q_idx": (qlo[r0:r1], qhi[r0:r1])}
        out[r0:r1] = _classify(*eval_interval(e, band, (r1 - r0, nkb)))
    return out


def _fold_classes(mask: Expr, used: set[str], reps: np.ndarray, nh: int) -> tuple[list[Expr], np.ndarray]:
    """The distinct folded masks, in order of first appearance, and the group of each head class."""
    folded: dict[int, int] = {}  # id(folded expr) -> group
    groups: list[Expr] = []
    group_of_class = np.empty(len(reps), dtype=np.int64)
    for c, flat in enumerate(reps.tolist()):
        bi, hi = divmod(flat, nh)
        f = fold(mask, {k: v for k, v in (("b", bi), ("h", hi)) if k in used})
        g = folded.setdefault(id(f), len(groups))
        if g == len(groups):
            groups.append(f)
        group_of_class[c] = g
    return groups, group_of_class


def analyze(mask: Expr | None, b: int, h: int, sq: int, sk: int, bm: int, bn: int,
            budget: int = REFINE_BUDGET) -> BlockSparsity:
    """Compile-time block classes of `mask` over [B, H, Sq, Sk] at BLOCK_M x BLOCK_N; a LimitError
    (ir/limits.py) before any allocation when the head table or the block grid is beyond the limits."""
    what = f"attention block-sparsity analysis at {bm}x{bn} of [{b}, {h}, {sq}, {sk}]"
    check_heads(b, h, what)
    nqb, nkb = -(-sq // bm), -(-sk // bn)
    check_cells(1, nqb, nkb, what)
    env, grid = _block_env(sq, sk, bm, bn)
    if mask is None:
        return BlockSparsity(bm, bn, sq, sk, np.full((1,) + grid, FULL, np.int8), np.zeros((b, h), np.int64),
                             True, False)
    used = ex.vars_used(mask) & {"b", "h"}
    dynamic = any(n.op is E.LOAD for n in ex.toposort([mask]))
    codes, rank, reps = head_classes(mask, used, b, h, what)
    groups, group_of_class = _fold_classes(mask, used, reps, codes.shape[1])
    check_cells(len(groups), nqb, nkb, what)
    left = budget
    exact = not dynamic
    per_group = []
    for f in groups:
        cls = _interval_classes(f, env, grid)
        if not dynamic and (cls == PARTIAL).any():
            cls, left = _refine(f, cls, sq, sk, bm, bn, left)
            exact &= left > 0 or not (cls == PARTIAL).any()
        per_group.append(cls)
    pats, remap = _unique_patterns(per_group)
    pattern_of = remap[group_of_class][rank][codes]  # one gather over the heads: code -> class -> group -> pattern
    if pattern_of.shape != (b, h):
        pattern_of = np.ascontiguousarray(np.broadcast_to(pattern_of, (b, h)))
    return BlockSparsity(bm, bn, sq, sk, pats, pattern_of, exact, dynamic)


def _unique_patterns(per_group: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct block-class arrays [P, NQB, NKB] (first-appearance order) and the pattern of each group."""
    uniq: dict[bytes, int] = {}
    remap: list[int] = []
    pats: list[np.ndarray] = []
    for cls in per_group:
        p = uniq.setdefault(cls.tobytes(), len(pats))
        if p == len(pats):
            pats.append(cls)
        remap.append(p)
    return np.stack(pats), np.asarray(remap, dtype=np.int64)


def _runtime_classes(mask: Expr, env: dict[str, Ival], b: int, h: int, grid: tuple[int, int],
                     loads: Loader) -> np.ndarray:
    """Interval classes [B * H, NQB, NKB] of `mask` with the loads bound, in chunks of (b, h) pairs
    and bands of query blocks (bounded memory)."""
    nqb, nkb = grid
    rows = min(nqb, max(1, _CHUNK_CELLS // nkb))
    pairs = max(1, _CHUNK_CELLS // (rows * nkb))
    out = np.empty((b * h, nqb, nkb), dtype=np.int8)
    (qlo, qhi), kv = env["q_idx"], env["kv_idx"]
    for p0 in range(0, b * h, pairs):
        bh = np.arange(p0, min(b * h, p0 + pairs))
        bb, hh = (bh // h).astype(np.float64)[:, None, None], (bh % h).astype(np.float64)[:, None, None]
        for r0 in range(0, nqb, rows):
            r1 = min(nqb, r0 + rows)
            band = {"q_idx": (qlo[None, r0:r1], qhi[None, r0:r1]), "kv_idx": (kv[0][None], kv[1][None]),
                    "b": (bb, bb), "h": (hh, hh)}
            out[p0:p0 + len(bh), r0:r1] = _classify(*eval_interval(mask, band, (len(bh), r1 - r0, nkb), loads))
    return out


def analyze_runtime(mask: Expr, static: BlockSparsity, b: int, h: int, loads: Loader) -> BlockSparsity:
    """Refine compile-time classes with the loaded operands bound: one pattern per (b, h)."""
    bm, bn, sq, sk = static.block_m, static.block_n, static.sq, static.sk
    what = f"attention run-time block analysis at {bm}x{bn} of [{b}, {h}, {sq}, {sk}]"
    check_heads(b, h, what)
    env, grid = _block_env(sq, sk, bm, bn)
    check_cells(b * h, *grid, what)
    rt = _runtime_classes(mask, env, b, h, grid, loads)
    st = static.classes[static.pattern_of.reshape(-1)]
    full = np.where((st == FULL) | (rt == FULL), np.int8(FULL), np.int8(PARTIAL))  # int8: B x H x blocks bytes
    cls = np.where((st == EMPTY) | (rt == EMPTY), np.int8(EMPTY), full)
    pats, remap = _unique_patterns(list(cls))
    return BlockSparsity(bm, bn, sq, sk, pats, remap.reshape(b, h), False, True)


def block_aligned_loads(mask: Expr, sq: int, sk: int, bm: int, bn: int) -> bool:
    """Whether every load in `mask` reads one element per block pair (block masks, top-k lists
    whose blocks are multiples of the kernel's), so run-time analysis decides pairs exactly."""
    check_cells(1, -(-sq // bm), -(-sk // bn), f"attention block-load analysis at {bm}x{bn} of [{sq}, {sk}]")
    env, grid = _block_env(sq, sk, bm, bn)
    env = {**env, "b": (np.array(0.0), np.array(0.0)), "h": (np.array(0.0), np.array(0.0))}
    for n in ex.toposort([mask]):
        if n.op is E.LOAD:
            for i in n.src:
                lo, hi = eval_interval(i, env, grid)
                if not np.all(lo == hi):
                    return False
    return any(n.op is E.LOAD for n in ex.toposort([mask]))
