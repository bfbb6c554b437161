"""Knob spaces: a kernel family's knobs on a target, pruned by its constraints before anything
is compiled. Random sampling, grid enumeration, and mutation / crossover for evolutionary search."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import TilefuseError
from ..schedule.config import Config
from ..schedule.target import Target

if TYPE_CHECKING:
    from ..kernels.base import KernelSpec

# Spaces whose full product is at most this many configs are enumerated (and pruned) up front.
ENUMERATE_LIMIT = 200_000
GRID_CAP = 20_000


class SpaceError(TilefuseError, ValueError):
    """A knob space that cannot serve the request (empty, or too large for grid search)."""


class SearchSpace:
    """The legal configs of one kernel on one target (`spec.knob_space` pruned by `spec.constraints`)."""

    def __init__(self, spec: KernelSpec, target: Target):
        self.spec = spec
        self.target = target
        self.knobs: dict[str, tuple[Any, ...]] = {k: tuple(v) for k, v in spec.knob_space(target).items()}
        if not self.knobs or any(not v for v in self.knobs.values()):
            raise SpaceError(f"{spec.name}: empty knob space on {target.name}: {self.knobs}")
        self.names = sorted(self.knobs)
        self.product = 1
        for v in self.knobs.values():
            self.product *= len(v)
        self._legal: list[Config] | None = None
        self._verdicts: dict[Config, bool] = {}

    def __repr__(self) -> str:
        return f"SearchSpace({self.spec.name}, {self.target.name}, {self.product} configs before pruning)"

    # -- legality --
    def is_legal(self, config: Config) -> bool:
        """Whether `config` has exactly the space's knobs, with listed values, and meets the constraints."""
        hit = self._verdicts.get(config)
        if hit is None:
            hit = set(config) == set(self.knobs) and all(config[k] in self.knobs[k] for k in self.names) \
                and not self.spec.constraints(config, self.target)
            self._verdicts[config] = hit
        return hit

    @property
    def enumerable(self) -> bool:
        return self.product <= ENUMERATE_LIMIT

    def legal(self) -> list[Config]:
        """Every legal config in grid order (cached; only for spaces up to ENUMERATE_LIMIT)."""
        if self._legal is None:
            if not self.enumerable:
                raise SpaceError(f"{self.spec.name}: the knob space has {self.product} configs, too many to "
                                 f"enumerate (limit {ENUMERATE_LIMIT}); sample it instead")
            self._legal = [c for c in self._product() if self.is_legal(c)]
            if not self._legal:
                raise SpaceError(f"{self.spec.name}: no config of the knob space is legal on {self.target.name}")
        return self._legal

    def _product(self) -> Iterator[Config]:
        for values in itertools.product(*(self.knobs[k] for k in self.names)):
            yield Config(dict(zip(self.names, values)))

    def size(self) -> int:
        """Number of legal configs (an estimate from the product when the space is not enumerable)."""
        return len(self.legal()) if self.enumerable else self.product

    def default(self) -> Config | None:
        """The family's default config, if it is legal in this space."""
        try:
            cfg = self.spec.default_config(self.target)
        except (NotImplementedError, ValueError):
            return None
        return cfg if self.is_legal(cfg) else None

    # -- enumeration and sampling --
    def grid(self, cap: int = GRID_CAP) -> list[Config]:
        """All legal configs in a deterministic order; SpaceError when there are more than `cap`."""
        if not self.enumerable or len(self.legal()) > cap:
            raise SpaceError(f"{self.spec.name}: {self.size()} legal configs exceed the grid cap of {cap}; "
                             "use the random, tpe or model strategy")
        return list(self.legal())

    def grid_order(self) -> Iterator[Config]:
        """Every legal config exactly once, lazily, in a deterministic space-filling order: flat index
        i * stride mod P (stride coprime to P, near P / golden ratio), so that any prefix of the grid
        spreads over every knob rather than sweeping the last knob first."""
        p = self.product
        stride = max(1, int(p / 1.618033988749895))
        while math.gcd(stride, p) != 1:
            stride += 1
        for i in range(p):
            c = self.config_at((i * stride) % p)
            if self.is_legal(c):
                yield c

    def config_at(self, index: int) -> Config:
        """The config at flat (mixed-radix) `index` of the unpruned product."""
        d = {}
        for k in reversed(self.names):
            values = self.knobs[k]
            index, r = divmod(index, len(values))
            d[k] = values[r]
        return Config(d)

    def sample(self, rng: random.Random, n: int, exclude: Iterable[Config] = ()) -> list[Config]:
        """Up to `n` distinct legal configs not in `exclude`, uniformly at random; fewer only when the space
        has no more (an empty answer is what tells a search that it has measured the whole space)."""
        skip = set(exclude)
        if self.enumerable:
            pool = [c for c in self.legal() if c not in skip]
            return rng.sample(pool, min(n, len(pool)))
        out: list[Config] = []
        for _ in range(max(100, 50 * n)):
            if len(out) >= n:
                break
            c = Config({k: rng.choice(self.knobs[k]) for k in self.names})
            if c not in skip and self.is_legal(c):
                skip.add(c)
                out.append(c)
        if not out and n > 0:
            # Rejection sampling found nothing: legal configs are rare here, or nearly all measured. Give
            # up only after a walk over the whole product, so that "nothing" means "exhausted".
            out = self._walk(rng, n, skip)
        return out

    def _walk(self, rng: random.Random, n: int, skip: set[Config]) -> list[Config]:
        """Up to `n` legal configs not in `skip`, from every config of the product visited once, starting
        at a random one with a random stride coprime to the product (a permutation, in O(1) memory).
        Verdicts are not cached: a walk may visit the whole product."""
        p = self.product
        start = rng.randrange(p)
        stride = rng.randrange(1, p) if p > 1 else 1
        while math.gcd(stride, p) != 1:
            stride += 1
        out: list[Config] = []
        for i in range(p):
            c = self.config_at((start + i * stride) % p)
            if c in skip:
                continue
            legal = self._verdicts.get(c)
            if legal is None:
                legal = set(c) == set(self.knobs) and not self.spec.constraints(c, self.target)
            if legal:
                out.append(c)
                if len(out) >= n:
                    break
        return out

    def mutate(self, config: Config, rng: random.Random, tries: int = 32) -> Config | None:
        """A legal neighbour: one or two knobs moved to an adjacent value (or, 1 time in 4, any value)."""
        for _ in range(tries):
            d = dict(config)
            for k in rng.sample(self.names, min(len(self.names), rng.choice((1, 1, 2)))):
                values = self.knobs[k]
                i = values.index(d[k]) if d[k] in values else rng.randrange(len(values))
                if rng.random() < 0.25 or len(values) < 3:
                    j = rng.randrange(len(values))
                else:
                    j = min(len(values) - 1, max(0, i + rng.choice((-1, 1))))
                d[k] = values[j]
            c = Config(d)
            if c != config and self.is_legal(c):
                return c
        return None

    def crossover(self, a: Config, b: Config, rng: random.Random, tries: int = 16) -> Config | None:
        """A legal child taking each knob from `a` or `b` at random."""
        for _ in range(tries):
            c = Config({k: (a if rng.random() < 0.5 else b)[k] for k in self.names})
            if self.is_legal(c):
                return c
        return None
