"""Tile-size helpers of the matmul family (CPU padding to whole tiles)."""

from __future__ import annotations


def padded(size: int, tile: int) -> int:
    """`size` rounded up to whole tiles (the CPU template pads every dimension to its tile)."""
    return -(-size // tile) * tile


def fitted_tiles(size: int, grains: tuple[int, ...], lo: int, hi: int, count: int = 3) -> tuple[int, ...]:
    """Up to `count` tile sizes in [lo, hi], multiples of a grain, that pad `size` by at most 1%
    (largest first): an odd size such as 777 gets tiles of 112 or 156 where the power-of-two list
    would pad it to 896."""
    found = {t for g in grains for n in range(1, 65)
             if lo <= (t := padded(-(-size // n), g)) <= hi and padded(size, t) - size <= size // 100}
    return tuple(sorted(found, reverse=True)[:count])
