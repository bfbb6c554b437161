"""The forward attention kernel's register estimate (RegisterModel), fitted per arch to AOT builds."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RegisterModel:
    """Coefficients of the forward's register estimate (32-bit registers per thread) on one arch:
    (BLOCK_M x Dv accumulator + score x BLOCK_M x BLOCK_N + kv x BLOCK_N x (D + Dv)) / threads <= limit.
    `score` counts f32 score-sized tiles live at once; the k/v fraction `kv` depends on pipelining: with
    num_stages 1 the k and v tiles pass through registers on their way to shared memory (no cp.async),
    and every stage beyond two keeps another set of copies in flight."""

    score: float
    score_post: float  # more score tiles in a post_mod kernel (p, post_mod's value, the keep mask)
    kv: float
    kv_unpipelined: float  # added at num_stages 1
    kv_unpipelined_post: float  # added at num_stages 1 in a post_mod kernel
    kv_per_stage: float  # added per stage beyond two
    limit: int

    def estimate(self, bm: int, bn: int, d: int, dv: int, warps: int, stages: int, post: bool) -> int:
        """Registers per thread of a BLOCK_M x BLOCK_N tile at head dims d / dv (padded)."""
        kv = self.kv + self.kv_per_stage * max(0, stages - 2)
        if stages == 1:
            kv += self.kv_unpipelined + (self.kv_unpipelined_post if post else 0.0)
        score = self.score + (self.score_post if post else 0.0)
        return math.ceil((bm * dv + score * bm * bn + kv * bn * (d + dv)) / (warps * 32))


# Fitted to AOT builds of causal f16 attention with and without a post_mod: BLOCK_M and BLOCK_N in 32 / 64 / 128,
# 4 / 8 warps, 1-3 stages at hdim 64 and 128, and BLOCK_N 16 / 32 / 64 with 1-2 stages at hdim 256. The
# defaults must pass; how many accepted builds still spill is in constraints().
FWD_REGISTERS = {
    80: RegisterModel(score=1.5, score_post=1.0, kv=0.0, kv_unpipelined=0.125, kv_unpipelined_post=0.25,
                      kv_per_stage=0.125, limit=168),
    90: RegisterModel(score=1.0, score_post=0.0, kv=0.125, kv_unpipelined=0.25, kv_unpipelined_post=0.25,
                      kv_per_stage=0.0, limit=200),
}
