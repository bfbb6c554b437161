"""Size buckets of dynamic graph parameters: each range is cut at the powers of two (or at user-given
sizes) and at its top; a kernel's config is chosen, tuned and stored per bucket, and one bucket's
graph is the graph bound at the bucket's upper ends."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Union

from .dims import DynamicSizeError, DynParam
from .graph import Graph

Ranges = tuple[tuple[str, int, int], ...]  # (parameter, lo, hi) per dynamic parameter, by name
Buckets = Union[Sequence[int], Mapping[str, Sequence[int]], None]


def bucket_edges(p: DynParam, given: Sequence[int] | None = None) -> list[int]:
    """Upper ends of `p`'s size buckets, ascending, the last one `p.hi`: the powers of two in the range by
    default, else the `given` sizes inside it (a DynamicSizeError names one that is not a positive int)."""
    if given is None:
        edges = {1 << k for k in range(p.hi.bit_length() + 1) if p.lo <= 1 << k < p.hi}
    else:
        bad = [b for b in given if isinstance(b, bool) or not isinstance(b, int) or b < 1]
        if bad:
            raise DynamicSizeError(f"buckets for {p.name}: {bad} are not positive integers")
        edges = {b for b in given if p.lo <= b < p.hi}
    return sorted(edges | {p.hi})


def bucket_of(edges: Sequence[int], value: int) -> int:
    """Index of the bucket holding `value`: the first whose upper end is at least `value`."""
    for i, e in enumerate(edges):
        if value <= e:
            return i
    return len(edges) - 1


def given_for(buckets: Buckets, name: str) -> Sequence[int] | None:
    if buckets is None or not isinstance(buckets, Mapping):
        return buckets
    return buckets.get(name)


def all_edges(g: Graph, buckets: Buckets = None) -> dict[str, list[int]]:
    """Each dynamic parameter's bucket upper ends (`buckets`: for all of them, or per name)."""
    if isinstance(buckets, Mapping):
        unknown = sorted(set(buckets) - set(g.params))
        if unknown:
            raise DynamicSizeError(f"buckets given for {unknown}, which are not dynamic parameters of {g.name} "
                                   f"(those are {sorted(g.params)})")
    return {n: bucket_edges(p, given_for(buckets, n)) for n, p in g.params.items()}


def bucket_graphs(g: Graph, edges: dict[str, list[int]]) -> list[tuple[Ranges, Graph]]:
    """Every bucket (the product of each parameter's, in name order) and the graph bound at its upper ends."""
    names = sorted(edges)
    per = []
    for n in names:
        lows = [g.params[n].lo] + [e + 1 for e in edges[n][:-1]]
        per.append([(n, lo, hi) for lo, hi in zip(lows, edges[n])])
    out = []
    for ranges in itertools.product(*per):
        out.append((tuple(ranges), g.at({n: hi for n, _, hi in ranges})))
    return out
