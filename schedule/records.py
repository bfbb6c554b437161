"""Tuning records: what one measurement of one config of one workload on one device produced.
Shared by runners (which make them), the database (which stores them) and the cost model
(which learns from them)."""

from __future__ import annotations

import enum
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import TilefuseError
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
        """Parse one JSON line written by `to_json`; RecordError (a ValueError) names what is wrong."""
        return Record.from_dict(parse_record_json(line))

    @staticmethod
    def from_dict(d: Any) -> Record:
        """A Record from its `to_json` form, validated field by field (`check_record_dict`)."""
        check_record_dict(d)
        m = Measurement(Status(d["status"]), tuple(d["samples"]), d["verified"], d.get("max_error"), d.get("error", ""),
                        float(d.get("compile_seconds", 0.0)), d.get("resources") or {},
                        tuple(float(t) for t in d.get("reference") or ()))
        return Record(d["workload_key"], d["family"], d["workload"], d["device_key"], d["device"],
                      Config(d["config"]), m, d["toolchain"], d.get("features") or {}, float(d.get("created", 0.0)))


# ------------------------------------------------------------------------- validating outside records

class RecordError(TilefuseError, ValueError):
    """A tuning record from outside (a JSON line, a dict) that does not match the record schema."""


MAX_LINE_CHARS = 1 << 24  # a record is a few KiB; a longer line is not one (and /dev/zero never ends)
_KEY_CHARS = 255  # the database's key columns
_REQUIRED = ("schema", "workload_key", "family", "workload", "device_key", "device", "config", "status", "samples",
             "verified", "toolchain")
_OPTIONAL = ("max_error", "error", "compile_seconds", "resources", "reference", "features", "created")


def _show(v: Any) -> str:
    text = repr(v)
    return f"{text[:40]}..." if len(text) > 43 else text


def _no_constant(name: str) -> Any:
    raise RecordError(f"tuning record holds {name}, which is not a number JSON allows")


def parse_record_json(line: str) -> Any:
    """The JSON value of one line (NaN and Infinity refused); RecordError when it is not JSON."""
    try:
        return json.loads(line, parse_constant=_no_constant)
    except RecordError:
        raise
    except RecursionError:
        raise RecordError("tuning record is not JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, or an integer too long to convert
        raise RecordError(f"tuning record is not JSON: {err}") from None


def _finite_json(value: Any, field_name: str) -> None:
    """Every number inside `value` finite, every object key a string (iteratively: no depth limit)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise RecordError(f"tuning record field {field_name!r} has an object key that is not a string")
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise RecordError(f"tuning record field {field_name!r} holds {v!r}; numbers must be finite")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**63:
            raise RecordError(f"tuning record field {field_name!r} holds an integer beyond 64 bits")
        elif not (v is None or isinstance(v, (str, bool, int, float))):
            raise RecordError(f"tuning record field {field_name!r} holds {_show(v)}, which is not JSON")


def _number(v: Any, what: str, *, positive: bool = False) -> None:
    """`v` a finite number (not a boolean), >= 0, and > 0 when `positive`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(f"tuning record field {what} must be a finite number, got {_show(v)}")
    if v < 0 or (positive and v == 0):
        raise RecordError(f"tuning record field {what} must be {'positive' if positive else '>= 0'}, got {v!r}")


def _of_type(d: dict[str, Any], name: str, kind: type, accepted: str) -> None:
    v = d[name]
    if not isinstance(v, kind):
        raise RecordError(f"tuning record field {name!r} must be {accepted}, got {_show(v)}")


def check_record_dict(d: Any) -> None:
    """RecordError naming the first field of `d` (a record's `to_json` form) that breaks the record
    schema: the one check for every record that comes from outside (import, datasets, training data)."""
    if not isinstance(d, dict):
        raise RecordError(f"tuning record must be a JSON object, got {_show(d)}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise RecordError(f"tuning record is missing the field(s) {', '.join(missing)}")
    unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise RecordError(f"tuning record has unknown field(s) {', '.join(unknown)}; accepted: "
                          f"{', '.join(_REQUIRED + _OPTIONAL)}")
    if d["schema"] != RECORD_SCHEMA or isinstance(d["schema"], bool):
        raise RecordError(f"tuning record schema {_show(d['schema'])} is not {RECORD_SCHEMA}")
    for name in d:
        _finite_json(d[name], name)
    for name in ("workload_key", "family", "device_key"):
        _of_type(d, name, str, "a string")
        if not 0 < len(d[name]) <= _KEY_CHARS:
            raise RecordError(f"tuning record field {name!r} must have 1 to {_KEY_CHARS} characters")
    for name in ("workload", "device", "config"):
        _of_type(d, name, dict, "a JSON object")
    _of_type(d, "toolchain", dict, "a JSON object of version strings")
    if not all(isinstance(v, str) for v in d["toolchain"].values()):
        raise RecordError(f"tuning record field 'toolchain' must map tools to version strings, got "
                          f"{_show(d['toolchain'])}")
    if not isinstance(d["status"], str) or d["status"] not in {s.value for s in Status}:
        raise RecordError(f"tuning record field 'status' is {_show(d['status'])}; accepted: "
                          f"{', '.join(s.value for s in Status)}")
    _of_type(d, "verified", bool, "true or false")
    _check_timings(d)
    _check_optional(d)
    try:
        Config(d["config"])
    except ValueError as err:  # ConfigError: a value that is not a JSON scalar
        raise RecordError(f"tuning record field 'config': {err}") from None


def _check_timings(d: dict[str, Any]) -> None:
    """samples and reference: lists of positive seconds, paired one to one when both are present."""
    _of_type(d, "samples", list, "a list of seconds")
    for i, t in enumerate(d["samples"]):
        _number(t, f"'samples'[{i}]", positive=True)
    ref = d.get("reference")
    if ref is not None:
        _of_type(d, "reference", list, "a list of seconds")
        for i, t in enumerate(ref):
            _number(t, f"'reference'[{i}]", positive=True)
        if ref and len(ref) != len(d["samples"]):
            raise RecordError(f"tuning record field 'reference' has {len(ref)} samples, 'samples' "
                              f"{len(d['samples'])}; a paired measurement has one of each per timing")
    if d["status"] == Status.OK.value and d["verified"] and not d["samples"]:
        raise RecordError("tuning record is ok and verified but has no 'samples'")


def _check_optional(d: dict[str, Any]) -> None:
    if d.get("max_error") is not None:
        _number(d["max_error"], "'max_error'")
    if "error" in d:
        _of_type(d, "error", str, "a string")
    for name in ("compile_seconds", "created"):
        if name in d:
            _number(d[name], repr(name))
    for name in ("resources", "features"):
        if d.get(name) is not None:
            _of_type(d, name, dict, "a JSON object")
    for k, v in (d.get("features") or {}).items():  # negative values are allowed: -1 marks a missing resource
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RecordError(f"tuning record field 'features'[{k!r}] must be a number, got {_show(v)}")


def read_jsonl(fp: IO[str], name: str) -> list[Record]:
    """Every record of a JSON-lines stream, validated; RecordError naming `name`, the line number and
    the field for the first bad line (nothing is returned then), also for text that is not UTF-8."""
    out: list[Record] = []
    lineno = 0
    while True:
        lineno += 1
        try:
            line = fp.readline(MAX_LINE_CHARS + 1)
        except UnicodeDecodeError:
            raise RecordError(f"{name}:{lineno}: is not UTF-8 text (tuning records are JSON lines)") from None
        if not line:
            return out
        if len(line) > MAX_LINE_CHARS:
            raise RecordError(f"{name}:{lineno}: line longer than {MAX_LINE_CHARS} characters; a tuning record "
                              "is one JSON object per line")
        if line.strip():
            try:
                out.append(Record.from_json(line))
            except ValueError as err:  # RecordError, or ConfigError from the config's values
                raise RecordError(f"{name}:{lineno}: {err}") from None
