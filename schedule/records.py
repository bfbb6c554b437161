"""Tuning records: what one measurement of one config of one workload on one device produced.
Shared by runners (which make them), the database (which stores them) and the cost model
(which learns from them)."""

from __future__ import annotations

import enum
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Config, canonical_json, sha256_json

RECORD_SCHEMA = 1


class Status(enum.Enum):
    """Outcome of compiling, running and verifying a candidate."""

    OK = "ok"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    WRONG_RESULT = "wrong_result"
    REJECTED = "rejected"  # illegal on the device: pruned by constraints, never compiled


@dataclass(frozen=True)
class Measurement:
    """A runner's verdict on one config: status, every timing sample (seconds), verification."""

    status: Status
    samples: tuple[float, ...] = ()
    verified: bool = False
    max_error: float | None = None
    error: str = ""  # compiler/runtime message for failed candidates
    compile_seconds: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)  # static report of the binary (GPU)
    # The workload's reference kernel (its family default), timed interleaved with the candidate:
    # reference[i] was taken just before samples[i]; empty for runners that do not pair (GPU, fake).
    reference: tuple[float, ...] = ()

    @property
    def median(self) -> float | None:
        """Median time in seconds; None unless the run succeeded and was verified."""
        if self.status is not Status.OK or not self.verified or not self.samples:
            return None
        return float(statistics.median(self.samples))

    @property
    def relative(self) -> float | None:
        """Median of samples[i] / reference[i]: the time as a multiple of the reference kernel's, timed
        in the same moments, so a slow phase of a shared machine cancels out; None without a full
        reference or unless the run succeeded and was verified."""
        if self.median is None or len(self.reference) != len(self.samples) or min(self.reference) <= 0:
            return None
        return float(statistics.median(s / r for s, r in zip(self.samples, self.reference)))

    @property
    def spread(self) -> float | None:
        """(max - min) / median of the samples."""
        m = self.median
        if m is None or m == 0:
            return None
        return (max(self.samples) - min(self.samples)) / m


def comparable_seconds(measurements: Sequence[Measurement]) -> list[float | None]:
    """Times (seconds) that can be ranked against each other, for measurements of ONE workload on ONE
    device: a paired measurement counts as its `relative` times the median of every reference sample
    of the group (the reference kernel's typical time), an unpaired one as its own median; None for
    failures. Ranking the paired ones this way is ranking their `relative`s, which drift on a shared
    machine does not move (one median moves 15-20% there from one second to the next)."""
    rels = [m.relative for m in measurements]
    pool = [t for m, rel in zip(measurements, rels) if rel is not None for t in m.reference]
    ref = float(statistics.median(pool)) if pool else 0.0
    return [rel * ref if rel is not None and ref > 0 else m.median for m, rel in zip(measurements, rels)]


def corrected_seconds(records: Iterable[Record]) -> dict[str, float]:
    """Record.key -> `comparable_seconds` for every timed record, each (workload, device) its own group."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.workload_key, r.device_key), []).append(r)
    out: dict[str, float] = {}
    for rs in groups.values():
        for r, t in zip(rs, comparable_seconds([r.measurement for r in rs])):
            if t is not None:
                out[r.key] = t
    return out


def ranked(records: Iterable[Record]) -> list[tuple[float, Record]]:
    """(seconds, record) of every timed record, fastest first by `corrected_seconds`. Ties go by the
    config's key, as in the tuner's own pick (search._best), so `tune` reports the config the database
    then serves; then by the record's key."""
    rs = list(records)
    seconds = corrected_seconds(rs)
    keyed = sorted((seconds[k], r.config.key, k, r) for r, k in ((r, r.key) for r in rs) if k in seconds)
    return [(t, r) for t, _, _, r in keyed]


@dataclass(frozen=True)
class Record:
    """One row of the tuning database."""

    workload_key: str  # KernelSpec.key
    family: str
    workload: dict[str, Any]  # KernelSpec.describe()
    device_key: str  # Device.key
    device: dict[str, Any]  # Device.fingerprint
    config: Config
    measurement: Measurement
    toolchain: dict[str, str]  # {"triton": ..., "tvm": ..., "torch": ..., "tilefuse": ...}
    features: dict[str, float] = field(default_factory=dict)  # cost-model features at record time
    created: float = 0.0  # unix time
    schema: int = RECORD_SCHEMA

    @property
    def key(self) -> str:
        """Identity of (workload, device, config, toolchain): a second measurement replaces none."""
        return sha256_json({"w": self.workload_key, "d": self.device_key, "c": dict(self.config),
                            "t": self.toolchain, "schema": self.schema})

    def to_json(self) -> str:
        """One JSON line (used by `tilefuse db export` and bench/data datasets)."""
        m = self.measurement
        return canonical_json({
            "schema": self.schema, "workload_key": self.workload_key, "family": self.family,
            "workload": self.workload, "device_key": self.device_key, "device": self.device,
            "config": dict(self.config), "status": m.status.value, "samples": list(m.samples),
            "verified": m.verified, "max_error": m.max_error, "error": m.error,
            "compile_seconds": m.compile_seconds, "resources": m.resources, "reference": list(m.reference),
            "toolchain": self.toolchain,
            "features": self.features, "created": self.created,
        })

    @staticmethod
    def from_json(line: str) -> Record:
        """Parse one JSON line written by `to_json`; raises ValueError naming what is wrong."""
        import json

        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"tuning record is not JSON: {err}") from None
        if d.get("schema") != RECORD_SCHEMA:
            raise ValueError(f"tuning record schema {d.get('schema')!r} is not {RECORD_SCHEMA}")
        try:
            m = Measurement(Status(d["status"]), tuple(d["samples"]), bool(d["verified"]), d.get("max_error"),
                            d.get("error", ""), float(d.get("compile_seconds", 0.0)), d.get("resources") or {},
                            tuple(float(t) for t in d.get("reference") or ()))
            return Record(d["workload_key"], d["family"], d["workload"], d["device_key"], d["device"],
                          Config(d["config"]), m, d["toolchain"], d.get("features") or {},
                          float(d.get("created", 0.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"tuning record is missing or has a bad field: {err}") from None
