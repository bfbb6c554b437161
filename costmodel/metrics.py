"""Ranking metrics of a cost model on measured configs: TenSet top-k score, pairwise accuracy and
Kendall tau-b. Latencies are seconds (lower is better); scores are model outputs (higher = predicted
faster). Only the order within one workload on one device is compared."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

logger = logging.getLogger(__name__)

Values = Union[Sequence[float], np.ndarray]  # latencies or scores of one group


def _pair(latencies: Values, scores: Values) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(latencies, dtype=np.float64).ravel()
    sc = np.asarray(scores, dtype=np.float64).ravel()
    if lat.shape != sc.shape:
        raise ValueError(f"{lat.size} latencies but {sc.size} scores: one score per measured config is needed")
    if lat.size == 0:
        raise ValueError("no latencies: a metric needs at least one measured config")
    if not (np.all(np.isfinite(lat)) and np.all(lat > 0)):
        raise ValueError("latencies must be finite and positive (seconds of verified runs)")
    if not np.all(np.isfinite(sc)):
        raise ValueError("scores must be finite")
    return lat, sc


def topk_score(latencies: Values, scores: Values, k: int) -> float:
    """TenSet top-k score: best latency / best latency among the k highest-scored configs (1.0 = perfect).

    Equal scores are broken by position (the earlier config is picked first), deterministically."""
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    lat, sc = _pair(latencies, scores)
    picks = np.argsort(-sc, kind="stable")[:k]
    return float(lat.min() / lat[picks].min())


def _sign_matrix(x: np.ndarray) -> np.ndarray:
    """sign(x[j] - x[i]) for the pairs i < j, flattened."""
    i, j = np.triu_indices(x.size, k=1)
    return np.sign(x[j] - x[i])


def pairwise_accuracy(latencies: Values, scores: Values) -> float:
    """Fraction of pairs with distinct latencies whose scores order them correctly (faster = higher).

    A pair the model scores equally counts one half (a constant model scores 0.5, as a coin would).
    With no pair of distinct latencies there is nothing to order: the result is 1.0."""
    lat, sc = _pair(latencies, scores)
    dl = _sign_matrix(-lat)  # +1 where config j is faster than config i
    ds = _sign_matrix(sc)
    mask = dl != 0
    n = int(mask.sum())
    if n == 0:
        return 1.0
    agree = float(np.sum(dl[mask] == ds[mask]))
    ties = float(np.sum(ds[mask] == 0))
    return (agree + 0.5 * ties) / n


def kendall_tau(latencies: Values, scores: Values) -> float:
    """Kendall tau-b between speed (-latency) and score: 1 = same order, -1 = reversed.

    tau_b = (concordant - discordant) / sqrt((n0 - ties_speed) * (n0 - ties_score)). When either side is
    all ties the correlation is undefined; 0.0 (no association) is returned instead of NaN."""
    lat, sc = _pair(latencies, scores)
    a = _sign_matrix(-lat)
    b = _sign_matrix(sc)
    n0 = a.size
    ties_a = int(np.sum(a == 0))
    ties_b = int(np.sum(b == 0))
    denom = math.sqrt(float(n0 - ties_a) * float(n0 - ties_b))
    if denom == 0.0:
        return 0.0
    return float(np.sum(a * b)) / denom


def measured(records: Sequence[Any]) -> list[Any]:
    """The records whose time counts: status OK, verified, with samples (Measurement.median set)."""
    return [r for r in records if r.measurement.median is not None and r.measurement.median > 0]


def group_records(records: Sequence[Any], groups_by: str = "workload") -> dict[tuple[str, str], list[Any]]:
    """Measured records grouped by (workload key, device key): latencies only compare within one."""
    if groups_by != "workload":
        raise ValueError(f"groups_by={groups_by!r}: accepted: 'workload' (one group per workload and device)")
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in measured(records):
        groups[(r.workload_key, r.device_key)].append(r)
    return dict(sorted(groups.items()))


def evaluate(model: Any, records: Sequence[Any], groups_by: str = "workload") -> dict[str, float]:
    """Mean top-1, top-5, pairwise accuracy and Kendall tau of `model` over the groups of `records`.

    Groups with fewer than two measured configs say nothing about ranking and are skipped."""
    from ..schedule.records import corrected_seconds
    from .features import record_features

    rows: list[tuple[float, float, float, float]] = []
    n_records = 0
    for key, all_of_group in group_records(records, groups_by).items():
        group = [r for r in all_of_group if record_features(r)]  # none, or of another feature schema
        if len(group) < 2:
            logger.debug("skipping group %s: %d measured config", key, len(group))
            continue
        seconds = corrected_seconds(all_of_group)
        lat = [seconds[r.key] for r in group]
        sc = np.asarray(model.predict([record_features(r) for r in group]), dtype=np.float64)
        rows.append((topk_score(lat, sc, 1), topk_score(lat, sc, 5), pairwise_accuracy(lat, sc),
                     kendall_tau(lat, sc)))
        n_records += len(group)
    if not rows:
        return {"groups": 0.0, "records": 0.0, "top1": math.nan, "top5": math.nan, "pairwise": math.nan,
                "kendall_tau": math.nan}
    m = np.asarray(rows, dtype=np.float64).mean(axis=0)
    return {"groups": float(len(rows)), "records": float(n_records), "top1": float(m[0]), "top5": float(m[1]),
            "pairwise": float(m[2]), "kendall_tau": float(m[3])}
