"""Training and evaluation protocols: hold out whole workloads, compare the XGBoost ranker with the
roofline and random baselines, and measure transfer from one device to another."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import evaluate, measured
from .models import CostModel, ModelError, RandomModel, RooflineModel, XGBRankModel

logger = logging.getLogger(__name__)


def summarize(records: Sequence[Any]) -> dict[str, Any]:
    """Counts of a record set: records, measured (verified OK), workloads, devices."""
    return {"records": len(records), "measured": len(measured(records)),
            "workloads": len({r.workload_key for r in records}),
            "devices": sorted({r.device_key for r in records})}


def split_by_workload(records: Sequence[Any], holdout_frac: float = 0.2,
                      seed: int = 0) -> tuple[list[Any], list[Any]]:
    """(train, test): a seeded `holdout_frac` of the workloads, with every record of them, go to test."""
    if not 0.0 <= holdout_frac < 1.0:
        raise ValueError(f"holdout fraction {holdout_frac} must be in [0, 1)")
    keys = sorted({r.workload_key for r in records})
    if holdout_frac == 0.0:
        return list(records), []
    if len(keys) < 2:
        raise ValueError(f"holding out workloads needs at least 2 of them, the records hold {len(keys)}; "
                         "tune more kernels or use --holdout 0")
    n_test = min(len(keys) - 1, max(1, int(round(holdout_frac * len(keys)))))
    rng = np.random.default_rng(seed)
    test_keys = {keys[i] for i in rng.permutation(len(keys))[:n_test]}
    train = [r for r in records if r.workload_key not in test_keys]
    test = [r for r in records if r.workload_key in test_keys]
    return train, test


def _xgb(seed: int, xgb_params: dict[str, Any] | None) -> XGBRankModel:
    params = dict(xgb_params or {})
    params.setdefault("seed", seed)
    return XGBRankModel(**params)


def compare(models: dict[str, CostModel], test: Sequence[Any]) -> dict[str, dict[str, float]]:
    """evaluate() of each model on the same test records."""
    return {name: evaluate(m, test) for name, m in models.items()}


def train_and_eval(records: Sequence[Any], holdout_frac: float = 0.2, seed: int = 0,
                   xgb_params: dict[str, Any] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Train XGBoost on the training workloads; report it beside roofline and random on the held-out ones.

    With `out`, a model refit on all records is saved there (the held-out scores describe how it
    generalises to new workloads). With holdout_frac 0 nothing is evaluated."""
    train, test = split_by_workload(records, holdout_frac, seed)
    result: dict[str, Any] = {"train": summarize(train), "test": summarize(test), "metrics": {}, "saved": None}
    if test:
        xgb = _xgb(seed, xgb_params)
        xgb.fit(train)
        result["metrics"] = compare({"xgb": xgb, "roofline": RooflineModel(), "random": RandomModel(seed)}, test)
    if out is not None:
        final = _xgb(seed, xgb_params)
        final.fit(records)
        final.save(out)
        result["saved"] = str(out)
        result["trained_on"] = final.trained_on
    return result


def _few_shot_split(records: Sequence[Any], k: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(shots, rest): k measured records per workload, leaving at least two measured to evaluate on."""
    if k <= 0:
        return [], list(records)
    rng = np.random.default_rng(seed)
    by_workload: dict[str, list[Any]] = defaultdict(list)
    for r in measured(records):
        by_workload[r.workload_key].append(r)
    shot_ids: set[int] = set()
    for key in sorted(by_workload):
        group = by_workload[key]
        take = min(k, max(0, len(group) - 2))
        shot_ids.update(id(group[i]) for i in rng.permutation(len(group))[:take])
    shots = [r for r in records if id(r) in shot_ids]
    rest = [r for r in records if id(r) not in shot_ids]
    return shots, rest


def cross_device(records: Sequence[Any], train_device_key: str, test_device_key: str, few_shot: int = 0,
                 seed: int = 0, xgb_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on one device's records and evaluate on another's.

    "xgb" is trained on the source device only; with few_shot > 0, "xgb+few_shot" also trains on
    `few_shot` records per workload of the new device and "xgb_target_only" on those alone. Every
    model is scored on the same target records (the few-shot ones excluded)."""
    if train_device_key == test_device_key:
        raise ValueError(f"train and test device are the same ({train_device_key[:16]}); pick two devices")
    devices = sorted({r.device_key for r in records})
    src = [r for r in records if r.device_key == train_device_key]
    tgt = [r for r in records if r.device_key == test_device_key]
    for key, rs in ((train_device_key, src), (test_device_key, tgt)):
        if not rs:
            raise ValueError(f"no records of device {key!r}; devices in the records: {', '.join(devices) or 'none'}")
    shots, rest = _few_shot_split(tgt, few_shot, seed)
    models: dict[str, CostModel] = {}
    xgb = _xgb(seed, xgb_params)
    xgb.fit(src)
    models["xgb"] = xgb
    if shots:
        tuned = _xgb(seed, xgb_params)
        tuned.fit(list(src) + shots)
        models["xgb+few_shot"] = tuned
        alone = _xgb(seed, xgb_params)
        try:
            alone.fit(shots)
            models["xgb_target_only"] = alone
        except ModelError as err:  # one shot per workload gives no comparison to learn from
            logger.info("no target-only model: %s", err)
    models["roofline"] = RooflineModel()
    models["random"] = RandomModel(seed)
    return {"train_device": train_device_key, "test_device": test_device_key, "few_shot": few_shot,
            "train": summarize(src), "shots": summarize(shots), "test": summarize(rest),
            "metrics": compare(models, rest)}
