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

The kernel consumes the compact CSR form of `BlockLists`: per (pattern, query block) row, the key
blocks needing no mask first, then the masked ones. Numpy block classes, block masks and top-k lists
are compacted by the numpy reference here; torch tensors by the generated Triton kernel of
kernels/mask_compact.py, on their own device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...ir import expr as ex
from ...ir.expr import E, Expr
from ...ir.reference import eval_expr

EMPTY, PARTIAL, FULL = 0, 1, 2
REFINE_BUDGET = 1 << 26  # elements evaluated exactly per analysis before falling back to "partial"
_CHUNK = 1 << 21
Loader = Callable[[int, list[np.ndarray]], np.ndarray]
Ival = tuple[np.ndarray, np.ndarray]


# ---- interval evaluation -------------------------------------------------------------------------
def _unknown(e: Expr, shape: tuple[int, ...]) -> Ival:
    if e.dtype.is_bool:
        return np.zeros(shape), np.ones(shape)
    return np.full(shape, -np.inf), np.full(shape, np.inf)


def _clean(lo: np.ndarray, hi: np.ndarray) -> Ival:
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _truth(true: np.ndarray, false: np.ndarray) -> Ival:
    return true.astype(np.float64), 1.0 - false.astype(np.float64)


def _point_const(iv: Ival) -> float | None:
    lo, hi = iv
    if lo.size and np.all(lo == hi) and np.all(lo == lo.flat[0]) and np.isfinite(lo.flat[0]):
        return float(lo.flat[0])
    return None


def _compare(op: E, a: Ival, b: Ival) -> Ival:
    (alo, ahi), (blo, bhi) = a, b
    if op is E.LT:
        return _truth(ahi < blo, alo >= bhi)
    if op is E.LE:
        return _truth(ahi <= blo, alo > bhi)
    if op is E.GT:
        return _truth(alo > bhi, ahi <= blo)
    if op is E.GE:
        return _truth(alo >= bhi, ahi < blo)
    same = (alo == ahi) & (blo == bhi) & (alo == blo)
    apart = (ahi < blo) | (bhi < alo)
    return _truth(same, apart) if op is E.EQ else _truth(apart, same)


def _int_div(op: E, a: Ival, c: float) -> Ival:
    lo, hi = a
    if op is E.IDIV:  # truncation toward zero is monotone non-decreasing for c > 0
        return np.trunc(lo / c), np.trunc(hi / c)
    same_period = (lo >= 0) & (np.floor(lo / c) == np.floor(hi / c))
    nonneg = lo >= 0
    return (np.where(same_period, np.mod(lo, c), np.where(nonneg, 0.0, -(c - 1))),
            np.where(same_period, np.mod(hi, c), c - 1))


def _load(e: Expr, srcs: list[Ival], loads: Loader | None, shape: tuple[int, ...]) -> Ival:
    """A load decides a block pair only where all its indices are constant over the pair."""
    out = _unknown(e, shape)
    if loads is None:
        return out
    point = np.ones(shape, dtype=bool)
    idx = []
    for lo, hi in srcs:
        point &= np.broadcast_to((lo == hi) & np.isfinite(lo), shape)
        idx.append(np.where(np.isfinite(lo), lo, 0).astype(np.int64))
    if not point.any():
        return out
    try:
        val = np.broadcast_to(np.asarray(loads(e.arg, idx), dtype=np.float64), shape)
    except (IndexError, RuntimeError, ValueError):
        return out
    return np.where(point, val, out[0]), np.where(point, val, out[1])


def eval_interval(e: Expr, env: dict[str, Ival], shape: tuple[int, ...], loads: Loader | None = None) -> Ival:
    """Bounds (lo, hi) of `e` over each cell of the block grid, given the bounds of its VARs
    (bools are 0/1). Sound for every expression; ops without a rule give unbounded results."""
    memo: dict[int, Ival] = {}
    with np.errstate(all="ignore"):
        for n in ex.toposort([e]):
            s = [memo[id(x)] for x in n.src]
            memo[id(n)] = _rule(n, s, env, shape, loads)
    lo, hi = memo[id(e)]
    return np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)


def _rule(n: Expr, s: list[Ival], env: dict[str, Ival], shape: tuple[int, ...], loads: Loader | None) -> Ival:
    op = n.op
    if op is E.CONST:
        v = np.array(float(n.arg))
        return v, v
    if op is E.VAR:
        return env[n.arg] if n.arg in env else _unknown(n, shape)
    if op is E.LOAD:
        return _load(n, s, loads, shape)
    if op in ex.COMPARE:
        return _compare(op, s[0], s[1])
    if op is E.WHERE:
        (clo, chi), (alo, ahi), (blo, bhi) = s
        return (np.where(clo == 1, alo, np.where(chi == 0, blo, np.minimum(alo, blo))),
                np.where(clo == 1, ahi, np.where(chi == 0, bhi, np.maximum(ahi, bhi))))
    if n.dtype.is_bool and op in (E.AND, E.OR, E.NOT):
        if op is E.NOT:
            return 1.0 - s[0][1], 1.0 - s[0][0]
        f = np.minimum if op is E.AND else np.maximum
        return f(s[0][0], s[1][0]), f(s[0][1], s[1][1])
    if op is E.NEG:
        return -s[0][1], -s[0][0]
    if op is E.ABS:
        lo, hi = s[0]
        return np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0.0)), np.maximum(np.abs(lo), np.abs(hi))
    if op in (E.ADD, E.SUB):
        (alo, ahi), (blo, bhi) = s
        return _clean(alo + blo, ahi + bhi) if op is E.ADD else _clean(alo - bhi, ahi - blo)
    if op is E.MUL:
        (alo, ahi), (blo, bhi) = s
        corners = [np.nan_to_num(x, nan=0.0, posinf=np.inf, neginf=-np.inf)
                   for x in (alo * blo, alo * bhi, ahi * blo, ahi * bhi)]
        return np.minimum.reduce(corners), np.maximum.reduce(corners)
    if op in (E.MIN, E.MAX):
        f = np.minimum if op is E.MIN else np.maximum
        return f(s[0][0], s[1][0]), f(s[0][1], s[1][1])
    if op in (E.IDIV, E.MOD) and n.dtype.is_int:
        c = _point_const(s[1])
        if c is not None and c > 0:
            return _int_div(op, s[0], c)
    if op is E.CAST:
        src = n.src[0].dtype
        lo, hi = s[0]
        if n.dtype.is_bool:
            return _truth((lo > 0) | (hi < 0), (lo == 0) & (hi == 0))
        if n.dtype.is_int and src.is_float:
            return np.trunc(lo), np.trunc(hi)
        if src.is_int or src.is_bool or n.dtype.name in ("f32", "f64") or n.dtype.is_int:
            return lo, hi
    return _unknown(n, shape)


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
        hs = sorted({int(h) for h in np.nonzero(self.pattern_of == p)[1]})
        runs: list[str] = []
        start = prev = hs[0]
        for h in hs[1:] + [-2]:
            if h != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = h
            prev = h
        return ",".join(runs)

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


def analyze(mask: Expr | None, b: int, h: int, sq: int, sk: int, bm: int, bn: int,
            budget: int = REFINE_BUDGET) -> BlockSparsity:
    """Compile-time block classes of `mask` over [B, H, Sq, Sk] at BLOCK_M x BLOCK_N."""
    env, grid = _block_env(sq, sk, bm, bn)
    if mask is None:
        return BlockSparsity(bm, bn, sq, sk, np.full((1,) + grid, FULL, np.int8), np.zeros((b, h), np.int64),
                             True, False)
    used = ex.vars_used(mask) & {"b", "h"}
    dynamic = any(n.op is E.LOAD for n in ex.toposort([mask]))
    bs = range(b) if "b" in used else [0]
    hs = range(h) if "h" in used else [0]
    folded: dict[int, int] = {}  # id(folded expr) -> group
    groups: list[Expr] = []
    group_of = np.zeros((b, h), np.int64)
    for bi in bs:
        for hi in hs:
            f = fold(mask, {k: v for k, v in (("b", bi), ("h", hi)) if k in used})
            g = folded.setdefault(id(f), len(groups))
            if g == len(groups):
                groups.append(f)
            group_of[bi if "b" in used else slice(None), hi if "h" in used else slice(None)] = g
    left = budget
    exact = not dynamic
    per_group = []
    for f in groups:
        cls = _classify(*eval_interval(f, env, grid))
        if not dynamic and (cls == PARTIAL).any():
            cls, left = _refine(f, cls, sq, sk, bm, bn, left)
            exact &= left > 0 or not (cls == PARTIAL).any()
        per_group.append(cls)
    return _dedupe(per_group, group_of, bm, bn, sq, sk, exact, dynamic)


def _dedupe(per_group: list[np.ndarray], group_of: np.ndarray, bm: int, bn: int, sq: int, sk: int,
            exact: bool, dynamic: bool) -> BlockSparsity:
    uniq: dict[bytes, int] = {}
    remap: list[int] = []
    pats: list[np.ndarray] = []
    for cls in per_group:
        p = uniq.setdefault(cls.tobytes(), len(pats))
        if p == len(pats):
            pats.append(cls)
        remap.append(p)
    return BlockSparsity(bm, bn, sq, sk, np.stack(pats), np.asarray(remap)[group_of], exact, dynamic)


def analyze_runtime(mask: Expr, static: BlockSparsity, b: int, h: int, loads: Loader) -> BlockSparsity:
    """Refine compile-time classes with the loaded operands bound: one pattern per (b, h)."""
    bm, bn, sq, sk = static.block_m, static.block_n, static.sq, static.sk
    env, grid = _block_env(sq, sk, bm, bn)
    shape = (b, h) + grid
    env4: dict[str, Ival] = {k: (lo[None, None], hi[None, None]) for k, (lo, hi) in env.items()}
    bb = np.arange(b, dtype=np.float64).reshape(b, 1, 1, 1)
    hh = np.arange(h, dtype=np.float64).reshape(1, h, 1, 1)
    env4["b"], env4["h"] = (bb, bb), (hh, hh)
    rt = _classify(*eval_interval(mask, env4, shape, loads))
    st = static.classes[static.pattern_of]
    cls = np.where((st == EMPTY) | (rt == EMPTY), EMPTY, np.where((st == FULL) | (rt == FULL), FULL, PARTIAL))
    flat = cls.reshape((b * h,) + grid).astype(np.int8)
    return _dedupe(list(flat), np.arange(b * h).reshape(b, h), bm, bn, sq, sk, False, True)


def block_aligned_loads(mask: Expr, sq: int, sk: int, bm: int, bn: int) -> bool:
    """Whether every load in `mask` reads one element per block pair (block masks, top-k lists
    whose blocks are multiples of the kernel's), so run-time analysis decides pairs exactly."""
    env, grid = _block_env(sq, sk, bm, bn)
    env = {**env, "b": (np.array(0.0), np.array(0.0)), "h": (np.array(0.0), np.array(0.0))}
    for n in ex.toposort([mask]):
        if n.op is E.LOAD:
            for i in n.src:
                lo, hi = eval_interval(i, env, grid)
                if not np.all(lo == hi):
                    return False
    return any(n.op is E.LOAD for n in ex.toposort([mask]))


# ---- the compact form the kernel reads ------------------------------------------------------------------
# Numpy inputs take the host reference (numpy out); torch tensors are compacted where they live by the
# generated kernel of kernels/mask_compact.py (the Triton interpreter on CPU, JIT on CUDA), which raises
# MaskCompactError where Triton cannot run. `host=True` asks for the host reference on torch tensors
# (torch out, on their device); there is no silent fallback between the two.
@dataclass
class BlockLists:
    """CSR lists: row r = pattern * NQB + q block; kv_idx[kv_ptr[r]:kv_ptr[r] + kv_nfull[r]] need no
    mask, kv_idx[kv_ptr[r] + kv_nfull[r]:kv_ptr[r + 1]] are masked; head_pat [B * H] -> pattern.
    Each part is ascending."""

    kv_ptr: Any
    kv_nfull: Any
    kv_idx: Any
    head_pat: Any

    def as_list(self) -> list[Any]:
        return [self.kv_ptr, self.kv_nfull, self.kv_idx, self.head_pat]


def _numpy(x: Any) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def _to_device(lists: BlockLists, device: Any) -> BlockLists:
    import torch

    return BlockLists(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in lists.as_list()))


def _masked_col(sk: int, bn: int, nkb: int) -> int:
    """The key block that is always masked: a ragged last one (its columns past Sk must be), else none."""
    return nkb - 1 if sk % bn != 0 else -1


def compact(classes: Any, pattern_of: Any, sk: int, bn: int, host: bool = False) -> BlockLists:
    """The CSR lists of block classes [P, NQB, NKB] (any strides) and pattern_of [B, H]: numpy in,
    numpy out (host reference); torch in, torch out on the same device (generated kernel, or the
    host reference with `host`). A ragged last key block is always masked."""
    if isinstance(classes, np.ndarray):
        return _compact_host(classes, np.asarray(pattern_of), sk, bn)
    if host:
        return _to_device(_compact_host(_numpy(classes), _numpy(pattern_of), sk, bn), classes.device)
    import torch

    from .mask_compact import compact_rows

    if classes.dim() != 3:
        raise ValueError(f"compact: block classes must be [P, NQB, NKB], got shape {list(classes.shape)}")
    nkb = classes.shape[-1]
    ptr, nfull, idx = compact_rows(classes[:, None], "classes", nkb, _masked_col(sk, bn, nkb))
    pat = torch.as_tensor(pattern_of, device=classes.device).reshape(-1).to(torch.int32)
    return BlockLists(ptr, nfull, idx, pat)


def _compact_host(classes: np.ndarray, pattern_of: np.ndarray, sk: int, bn: int) -> BlockLists:
    """The reference: the CSR lists of numpy block classes [P, NQB, NKB]."""
    nkb = classes.shape[-1]
    full = classes == FULL
    if sk % bn != 0:
        full[..., nkb - 1] = False
    part = (classes != EMPTY) & ~full
    both = np.concatenate((full[..., None, :], part[..., None, :]), axis=-2)
    count = both.sum((-1, -2)).reshape(-1)
    return BlockLists(np.concatenate([[0], np.cumsum(count)]).astype(np.int32),
                      full.sum(-1).reshape(-1).astype(np.int32),
                      np.nonzero(both.reshape(-1, nkb))[1].astype(np.int32),
                      pattern_of.reshape(-1).astype(np.int32))


def _check_mask_shape(what: str, x: Any, b: int, h: int, last: int | None) -> None:
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[0] not in (1, b) or shape[1] not in (1, h) or (last is not None and shape[3] != last):
        want = f"[{b}|1, {h}|1, NQB, {last if last is not None else 'K'}]"
        raise ValueError(f"{what}: shape {list(shape)} is not {want}")


def lists_from_block_mask(block_mask: Any, b: int, h: int, sk: int, bn: int, host: bool = False) -> BlockLists:
    """CSR lists straight from a dense bool block mask [B|1, H|1, NQB, NKB] (numpy: host reference;
    torch: the generated kernel, reading the mask in place): true blocks are visited, masked per
    element only where ragged; one pattern per (b, h)."""
    nkb = -(-sk // bn)
    _check_mask_shape("lists_from_block_mask", block_mask, b, h, nkb)
    if isinstance(block_mask, np.ndarray) or host:
        cls = np.broadcast_to(np.where(_numpy(block_mask), FULL, EMPTY), (b, h) + tuple(block_mask.shape[2:]))
        cls = cls.reshape((b * h,) + tuple(block_mask.shape[2:])).astype(np.int8)
        lists = _compact_host(cls, np.arange(b * h).reshape(b, h), sk, bn)
        return lists if isinstance(block_mask, np.ndarray) else _to_device(lists, block_mask.device)
    return _kernel_lists(block_mask, "mask", b, h, sk, bn)


def lists_from_topk(index: Any, b: int, h: int, sk: int, bn: int, host: bool = False) -> BlockLists:
    """CSR lists from top-k key-block ids [B|1, H|1, NQB, K] (numpy: host reference; torch: the
    generated kernel): each query block visits the distinct ids in [0, NKB), ascending; -1 padding,
    out-of-range ids and duplicates drop out, as `topk_block_mask` reads them. One pattern per (b, h)."""
    nkb = -(-sk // bn)
    _check_mask_shape("lists_from_topk", index, b, h, None)
    if isinstance(index, np.ndarray) or host:
        ids = np.broadcast_to(_numpy(index), (b, h) + tuple(index.shape[2:]))
        dense = np.zeros((b, h, ids.shape[2], nkb), dtype=bool)
        ok = (ids >= 0) & (ids < nkb)
        bi, hi, qi, _ = np.nonzero(ok)
        dense[bi, hi, qi, ids[ok]] = True
        lists = lists_from_block_mask(dense, b, h, sk, bn)
        return lists if isinstance(index, np.ndarray) else _to_device(lists, index.device)
    return _kernel_lists(index, "topk", b, h, sk, bn)


def _kernel_lists(x: Any, mode: str, b: int, h: int, sk: int, bn: int) -> BlockLists:
    import torch

    from .mask_compact import compact_rows

    nkb = -(-sk // bn)
    ptr, nfull, idx = compact_rows(x.expand((b, h) + tuple(x.shape[2:])), mode, nkb, _masked_col(sk, bn, nkb))
    return BlockLists(ptr, nfull, idx, torch.arange(b * h, dtype=torch.int32, device=x.device))
