"""Cost models behind one small interface (fit, predict, save, load): an XGBoost pairwise ranker
grouped by workload, an analytic roofline baseline and a random baseline.

A saved model is a directory: ``meta.json`` (schema-versioned: kind, feature names and schema,
what it was trained on, library versions, the model file's sha256) plus, for XGBoost, ``model.json``
in XGBoost's own JSON format (never pickle). Both are written atomically, the model file first, so
``meta.json`` is the commit point and its sha256 catches a model file from another save.
"""

from __future__ import annotations

from ..deps import require
from ..errors import TilefuseError
from ..fileio import write_atomic

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .features import FEATURE_SCHEMA, record_features, to_matrix

logger = logging.getLogger(__name__)

META_SCHEMA = 1
META_FILE = "meta.json"
XGB_FILE = "model.json"
SMALL_TRAINING_SET = 4096


class ModelError(TilefuseError, RuntimeError):
    """A cost model that cannot be trained, used, saved or loaded; the message says why and what to do."""


@runtime_checkable
class CostModel(Protocol):
    """Scores configs: higher = predicted faster; only the order within one workload matters."""

    name: str

    def fit(self, records: Sequence[Any]) -> None: ...

    def predict(self, features: Sequence[dict[str, float]]) -> np.ndarray: ...

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> CostModel: ...


# -- files --
def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / META_FILE, (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())


def read_meta(path: str | Path) -> dict[str, Any]:
    """The validated metadata of a saved model directory; ModelError names the file and the problem."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ModelError(f"{path}: not a saved cost model (no {META_FILE}); save one with "
                         "`tilefuse costmodel train --out DIR`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: JSON, UTF-8 or a too long integer
        raise ModelError(f"{meta_path}: corrupt cost-model metadata ({err}); retrain the model") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: cost-model metadata must be a JSON object")
    if not _is_int(meta.get("schema")) or meta["schema"] != META_SCHEMA:
        raise ModelError(f"{meta_path}: metadata schema {meta.get('schema')!r}; this tilefuse reads {META_SCHEMA}")
    if meta.get("kind") not in MODELS:
        raise ModelError(f"{meta_path}: unknown model kind {meta.get('kind')!r}; accepted: {', '.join(MODELS)}")
    return meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A JSON number that converts to a finite float (not NaN, infinity, a boolean or a 400-digit integer)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300


# meta.json fields of an XGBoost model beyond read_meta's: name -> (accepts the value, what is accepted).
# An absent field takes the default that XGBRankModel.load gives it; None counts as absent where noted.
_XGB_META: dict[str, tuple[Any, str]] = {
    "versions": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                 "an object of version strings"),
    "params": (lambda v: v is None or isinstance(v, dict), "an object"),
    "trained_on": (lambda v: v is None or isinstance(v, dict), "an object"),
    "num_boost_round": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "failed_as_worst": (lambda v: isinstance(v, bool), "true or false"),
    "model_file": (lambda v: isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v,
                   "a file name inside the model directory"),
    "model_sha256": (lambda v: isinstance(v, str), "a hex string"),
}
_XGB_PARAMS: dict[str, tuple[Any, str]] = {
    "max_depth": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "eta": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "min_child_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "seed": (_is_int, "an integer"),
}


def _check_xgb_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """ModelError listing every field of an XGBoost model's meta.json whose value has the wrong type
    (a meta.json with a valid checksum can still be edited or written by something else)."""
    bad = [f"{name} must be {what}, got {meta[name]!r}" for name, (ok, what) in _XGB_META.items()
           if name in meta and not ok(meta[name])]
    params = meta.get("params")
    if isinstance(params, dict):
        bad += [f"params.{name} must be {what}, got {params[name]!r}" for name, (ok, what) in _XGB_PARAMS.items()
                if name in params and not ok(params[name])]
    if bad:
        raise ModelError(f"{Path(path) / META_FILE}: {'; '.join(bad)}; retrain the model")


# -- XGBoost ranking model --
def _labelled(records: Sequence[Any], failed_as_worst: bool) -> dict[tuple[str, str], list[tuple[Any, float]]]:
    """(record, label) per (workload, device) group; label = best time / time, 0 for failures, with the
    group's times from records.comparable_seconds (drift-corrected where paired)."""
    from ..schedule.records import comparable_seconds

    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in records:
        groups[(r.workload_key, r.device_key)].append(r)
    out: dict[tuple[str, str], list[tuple[Any, float]]] = {}
    for key, rs in sorted(groups.items()):
        times = comparable_seconds([r.measurement for r in rs])
        ok = [(r, t) for r, t in zip(rs, times) if t is not None and t > 0]
        if not ok:
            continue
        best = min(t for _, t in ok)
        rows = [(r, best / t) for r, t in ok]
        if failed_as_worst:
            rows += [(r, 0.0) for r in rs if r.measurement.median is None]
        out[key] = rows
    return out


class XGBRankModel:
    """XGBoost with objective rank:pairwise, one query group per (workload, device).

    Labels are relative speeds within the group (best time / time, in (0, 1]), so groups with
    different absolute times train together. Only verified OK records train unless failed_as_worst,
    which adds failed candidates with label 0. Defaults follow TVM MetaSchedule (max_depth 10, eta 0.2).
    nthread 0 picks one thread for small training sets and XGBoost's default otherwise.
    An untrained model raises ModelError from predict and save."""

    name = "xgb"

    def __init__(self, max_depth: int = 10, eta: float = 0.2, num_boost_round: int = 200, min_child_weight: float = 0.0,
                 seed: int = 0, nthread: int = 0, failed_as_worst: bool = False):
        self.params: dict[str, Any] = {"max_depth": int(max_depth), "eta": float(eta),
                                       "min_child_weight": float(min_child_weight), "seed": int(seed)}
        self.num_boost_round = int(num_boost_round)
        self.nthread = int(nthread)
        self.failed_as_worst = bool(failed_as_worst)
        self.feature_names: list[str] = []
        self.trained_on: dict[str, Any] = {}
        self._booster: Any = None

    @property
    def trained(self) -> bool:
        return self._booster is not None

    def _train_params(self, rows: int) -> dict[str, Any]:
        p = {"objective": "rank:pairwise", "verbosity": 0, "tree_method": "hist", **self.params}
        if self.nthread > 0:
            p["nthread"] = self.nthread
        elif rows < SMALL_TRAINING_SET:
            p["nthread"] = 1  # thread start-up costs more than a few thousand rows of work
        return p

    def fit(self, records: Sequence[Any]) -> None:
        """Train on `records` (Record objects carrying features); ModelError when nothing can train."""
        xgb = require("xgboost", "the XGBoost cost model")

        groups = _labelled(records, self.failed_as_worst)
        rows: list[dict[str, float]] = []
        labels: list[float] = []
        sizes: list[int] = []
        skipped = 0
        stale = 0
        used: list[Any] = []
        for rs in groups.values():
            feats = [(record_features(r), y, r) for r, y in rs]
            kept = [(f, y) for f, y, _ in feats if f]
            used += [r for f, _, r in feats if f]
            skipped += len(feats) - len(kept)
            stale += sum(1 for f, _, r in feats if not f and r.features)
            if kept:
                rows += [f for f, _ in kept]
                labels += [y for _, y in kept]
                sizes.append(len(kept))
        if skipped:
            logger.warning("%d records have no features and were left out of training%s", skipped,
                           f" ({stale} carry features of another schema, stored by an older tilefuse; re-tune "
                           f"those workloads to refresh them)" if stale else "")
        if not rows:
            raise ModelError(f"no training data: {len(records)} records given, none verified OK with features; "
                             "tune some kernels first (`tilefuse tune`) or pass a dataset (--data FILE.jsonl)")
        if max(sizes) < 2:
            raise ModelError(f"no workload has two measured configs ({len(sizes)} workloads, one record each): "
                             "a ranking model learns from comparisons within a workload")
        names = sorted({k for f in rows for k in f})
        dtrain = xgb.DMatrix(to_matrix(rows, names), label=np.asarray(labels, dtype=np.float32),
                             feature_names=names, missing=np.nan)
        dtrain.set_group(sizes)
        self._booster = xgb.train(self._train_params(len(rows)), dtrain, num_boost_round=self.num_boost_round)
        self.feature_names = names
        self.trained_on = {
            "records": len(rows), "groups": len(sizes),
            "failed": labels.count(0.0),
            "workloads": len({r.workload_key for r in used}),
            "devices": sorted({r.device_key for r in used}),
            "families": sorted({r.family for r in used}),
        }

    def predict(self, features: Sequence[dict[str, float]]) -> np.ndarray:
        """Scores (higher = predicted faster) for feature dicts; missing features are NaN to XGBoost."""
        if self._booster is None:
            raise ModelError("the XGBoost cost model is not trained: call fit(records) or load a saved model")
        if len(features) == 0:
            return np.zeros(0, dtype=np.float64)
        xgb = require("xgboost", "the XGBoost cost model")

        x = xgb.DMatrix(to_matrix(features, self.feature_names), feature_names=self.feature_names, missing=np.nan)
        return np.asarray(self._booster.predict(x), dtype=np.float64)

    def save(self, path: str | Path) -> None:
        """Write model.json (XGBoost JSON) and meta.json into directory `path`, atomically each."""
        if self._booster is None:
            raise ModelError("cannot save an untrained XGBoost cost model: call fit(records) first")
        xgb = require("xgboost", "the XGBoost cost model")

        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        raw = bytes(self._booster.save_raw(raw_format="json"))
        write_atomic(directory / XGB_FILE, raw)
        _write_meta(directory, {
            "schema": META_SCHEMA, "kind": self.name, "feature_schema": FEATURE_SCHEMA,
            "feature_names": self.feature_names, "params": self.params, "num_boost_round": self.num_boost_round,
            "failed_as_worst": self.failed_as_worst, "trained_on": self.trained_on,
            "model_file": XGB_FILE, "model_sha256": hashlib.sha256(raw).hexdigest(),
            "versions": {"xgboost": xgb.__version__, "tilefuse": _tilefuse_version()},
        })

    @classmethod
    def load(cls, path: str | Path) -> XGBRankModel:
        """Load a directory written by save; ModelError on a missing, corrupt or mismatched file."""
        meta = read_meta(path)
        if meta["kind"] != cls.name:
            raise ModelError(f"{path}: holds a {meta['kind']!r} model, not {cls.name!r}; use load_model()")
        if meta.get("feature_schema") != FEATURE_SCHEMA:
            raise ModelError(f"{path}: trained on feature schema {meta.get('feature_schema')!r}, this tilefuse "
                             f"computes schema {FEATURE_SCHEMA}; retrain the model")
        names = meta.get("feature_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ModelError(f"{path}/{META_FILE}: feature_names must be a non-empty list of strings")
        _check_xgb_meta(path, meta)
        model_path = Path(path) / str(meta.get("model_file", XGB_FILE))
        try:
            raw = model_path.read_bytes()
        except OSError as err:
            raise ModelError(f"{model_path}: cannot read the XGBoost model ({err.strerror})") from None
        if hashlib.sha256(raw).hexdigest() != meta.get("model_sha256"):
            raise ModelError(f"{model_path}: sha256 differs from {META_FILE}: the model file is corrupt or from "
                             "another save; retrain the model")
        xgb = require("xgboost", "the XGBoost cost model")

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(raw))
        except xgb.core.XGBoostError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
            raise ModelError(f"{model_path}: not a valid XGBoost JSON model: {first}") from None
        if booster.num_features() != len(names) or (booster.feature_names and list(booster.feature_names) != names):
            raise ModelError(f"{path}: {META_FILE} lists {len(names)} features that do not match the "
                             f"{booster.num_features()} features of {model_path.name}; retrain the model")
        saved = meta.get("versions", {}).get("xgboost")
        if saved != xgb.__version__:
            logger.info("cost model %s was saved by xgboost %s, loading with %s", path, saved, xgb.__version__)
        params = dict(meta.get("params") or {})
        model = cls(max_depth=params.get("max_depth", 10), eta=params.get("eta", 0.2),
                    num_boost_round=int(meta.get("num_boost_round", 200)),
                    min_child_weight=params.get("min_child_weight", 0.0), seed=params.get("seed", 0),
                    failed_as_worst=bool(meta.get("failed_as_worst", False)))
        model._booster = booster
        model.feature_names = names
        model.trained_on = dict(meta.get("trained_on") or {})
        return model


def _tilefuse_version() -> str:
    from .. import __version__

    return __version__


# -- baselines --
class RooflineModel:
    """Analytic baseline: score = -roofline_time (tile traffic and idle units charged); fit is a no-op."""

    name = "roofline"

    def fit(self, records: Sequence[Any]) -> None:
        """Nothing to learn."""

    def predict(self, features: Sequence[dict[str, float]]) -> np.ndarray:
        """-roofline_time per row (-roofline_time_min, else 0, when absent)."""
        return np.asarray([-float(f.get("roofline_time", f.get("roofline_time_min", 0.0))) for f in features],
                          dtype=np.float64)

    def save(self, path: str | Path) -> None:
        """Write meta.json (there are no weights)."""
        _write_meta(Path(path), {"schema": META_SCHEMA, "kind": self.name, "feature_schema": FEATURE_SCHEMA})

    @classmethod
    def load(cls, path: str | Path) -> RooflineModel:
        meta = read_meta(path)
        if meta["kind"] != cls.name:
            raise ModelError(f"{path}: holds a {meta['kind']!r} model, not {cls.name!r}; use load_model()")
        return cls()


class RandomModel:
    """Random baseline: uniform scores from a seeded generator; fit is a no-op."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def fit(self, records: Sequence[Any]) -> None:
        """Nothing to learn."""

    def predict(self, features: Sequence[dict[str, float]]) -> np.ndarray:
        return self._rng.random(len(features))

    def save(self, path: str | Path) -> None:
        """Write meta.json with the seed."""
        _write_meta(Path(path), {"schema": META_SCHEMA, "kind": self.name, "feature_schema": FEATURE_SCHEMA,
                                 "seed": self.seed})

    @classmethod
    def load(cls, path: str | Path) -> RandomModel:
        meta = read_meta(path)
        if meta["kind"] != cls.name:
            raise ModelError(f"{path}: holds a {meta['kind']!r} model, not {cls.name!r}; use load_model()")
        seed = meta.get("seed", 0)
        if not _is_int(seed):
            raise ModelError(f"{path}/{META_FILE}: seed must be an integer, got {seed!r}")
        return cls(seed)


MODELS: dict[str, type[Any]] = {"xgb": XGBRankModel, "roofline": RooflineModel, "random": RandomModel}


def load_model(path: str | Path) -> CostModel:
    """Load any saved cost model, dispatching on the metadata's "kind"."""
    meta = read_meta(path)
    model: CostModel = MODELS[meta["kind"]].load(path)
    return model
