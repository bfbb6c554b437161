"""The compact form of block classes the attention kernels read: CSR lists per (pattern, query block)
row, key blocks needing no mask first, then the masked ones. Numpy block classes, block masks and top-k
lists are compacted by the numpy reference here; torch tensors by the generated Triton kernel of
mask_compact.py, on their own device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2


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
