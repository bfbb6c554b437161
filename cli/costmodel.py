"""`tilefuse costmodel train|eval`: train the XGBoost ranker from tuning records and report its
ranking metrics on held-out workloads (or another device) beside the roofline and random baselines."""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

METRIC_COLUMNS = (("top1", "top-1"), ("top5", "top-5"), ("pairwise", "pairwise"), ("kendall_tau", "kendall-tau"))


def register(subparsers: Any) -> None:
    """Add the `costmodel` command (with `train` and `eval`) to the tilefuse CLI's subparsers."""
    cm = subparsers.add_parser("costmodel", help="train and evaluate the learned cost model")
    sub = cm.add_subparsers(dest="costmodel_cmd", required=True)

    def source(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--db", metavar="URL", help="tuning database (SQLite path or SQLAlchemy URL)")
        g.add_argument("--data", metavar="FILE.jsonl", help="tuning records as JSON lines (`tilefuse db export`)")
        sp.add_argument("--device", metavar="KEY", help="only this device's records (key, key prefix or name); "
                        "with --test-device, the device to train on")
        sp.add_argument("--seed", type=int, default=0)

    tr = sub.add_parser("train", help="train on some workloads, report metrics on the held-out ones")
    source(tr)
    tr.add_argument("--out", metavar="MODEL_DIR",
                    help="save the model (refit on all records) here instead of the default directory that "
                         "`tilefuse compile` reads (TILEFUSE_COSTMODEL, else ~/.local/share/tilefuse/costmodel)")
    tr.add_argument("--no-save", action="store_true", help="only report the metrics; save no model")
    tr.add_argument("--holdout", type=float, default=0.2, help="fraction of workloads held out (default 0.2)")
    tr.add_argument("--test-device", metavar="KEY", help="evaluate on this device instead (cross-device)")
    tr.add_argument("--few-shot", type=int, default=0, metavar="N",
                    help="with --test-device: also train on N records per workload of the test device")
    tr.add_argument("--max-depth", type=int, default=10)
    tr.add_argument("--eta", type=float, default=0.2)
    tr.add_argument("--rounds", type=int, default=200, help="boosting rounds")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a saved model on tuning records")
    source(ev)
    ev.add_argument("--model", required=True, metavar="MODEL_DIR", help="directory written by `costmodel train`")
    ev.set_defaults(fn=cmd_eval)


def load_records(args: argparse.Namespace) -> list[Any]:
    """Records from --data (JSON lines) or --db; ValueError names the file, line or database."""
    from ..schedule.records import read_jsonl

    if args.data:
        path = Path(args.data)
        try:
            with open(path, encoding="utf-8") as fp:
                return read_jsonl(fp, str(path))  # RecordError (a ValueError) names the line and field
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err.strerror}") from None
    try:
        from ..autotune.database import TuningDB
    except ImportError as err:
        raise ValueError(f"the tuning database is not available ({err}); use --data FILE.jsonl") from None
    with TuningDB(args.db, create=False) as db:
        return list(db.records())


def resolve_device(records: list[Any], key: str) -> str:
    """The device key meant by `key`: an exact key, a unique key prefix or a unique device name."""
    devices: dict[str, str] = {r.device_key: str((r.device or {}).get("name", "?")) for r in records}
    if key in devices:
        return key
    hits = [k for k in devices if k.startswith(key)] or [k for k, n in devices.items() if n.lower() == key.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(f"{k[:12]} ({n})" for k, n in sorted(devices.items())) or "none"
    why = "matches several devices" if hits else "matches no device"
    raise ValueError(f"--device/--test-device {key!r} {why}; devices in the records: {listing}")


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per model, columns groups and the four metrics."""
    width = max([len("model")] + [len(n) for n in metrics])
    head = f"{'model':<{width}}  {'groups':>6}  " + "  ".join(f"{label:>11}" for _, label in METRIC_COLUMNS)
    rows = [head, "-" * len(head)]
    for name, m in metrics.items():
        rows.append(f"{name:<{width}}  {int(m.get('groups', 0)):>6}  "
                    + "  ".join(f"{_fmt(m.get(k, math.nan)):>11}" for k, _ in METRIC_COLUMNS))
    return "\n".join(rows)


def _describe(label: str, s: dict[str, Any]) -> str:
    devs = ", ".join(d[:12] for d in s.get("devices", []))
    return f"{label}: {s['records']} records ({s['measured']} measured), {s['workloads']} workloads, devices {devs}"


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures (bad data, missing or corrupt model) become a message on stderr and exit code 2,
    whichever CLI main() calls the command."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from ..autotune.db_schema import DatabaseError
        from ..costmodel.models import ModelError

        try:
            return int(fn(args))
        except (ModelError, ValueError, DatabaseError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


@_guarded
def cmd_train(args: argparse.Namespace) -> int:
    from ..costmodel.train import cross_device, train_and_eval

    records = load_records(args)
    params = {"max_depth": args.max_depth, "eta": args.eta, "num_boost_round": args.rounds}
    if args.test_device:
        if not args.device:
            raise ValueError("--test-device needs --device (the device to train on)")
        if args.out:
            raise ValueError("--out saves a model of `train` without --test-device; drop one of them")
        # a cross-device run is an experiment: it saves nothing
        res = cross_device(records, resolve_device(records, args.device), resolve_device(records, args.test_device),
                           few_shot=args.few_shot, seed=args.seed, xgb_params=params)
        print(_describe("train (source device)", res["train"]))
        if args.few_shot:
            print(_describe(f"few-shot ({args.few_shot} per workload)", res["shots"]))
        print(_describe("test (target device)", res["test"]))
        print(format_table(res["metrics"]))
        return 0
    if args.device:
        dev = resolve_device(records, args.device)
        records = [r for r in records if r.device_key == dev]
    if args.no_save and args.out:
        raise ValueError("--out and --no-save contradict each other; drop one of them")
    out = None
    if not args.no_save:
        from ..settings import get_settings

        out = args.out or get_settings().model_dir
    res = train_and_eval(records, holdout_frac=args.holdout, seed=args.seed, xgb_params=params, out=out)
    print(_describe("train", res["train"]))
    if res["metrics"]:
        print(_describe("held out", res["test"]))
        print(format_table(res["metrics"]))
    if res["saved"]:
        print(f"saved a model trained on all {res['trained_on']['records']} measured records to {res['saved']}")
    return 0


@_guarded
def cmd_eval(args: argparse.Namespace) -> int:
    from ..costmodel.models import RandomModel, RooflineModel, load_model
    from ..costmodel.train import compare, summarize

    model = load_model(args.model)
    records = load_records(args)
    if args.device:
        dev = resolve_device(records, args.device)
        records = [r for r in records if r.device_key == dev]
    print(_describe("evaluated on", summarize(records)))
    print(format_table(compare({model.name: model, "roofline": RooflineModel(), "random": RandomModel(args.seed)},
                               records)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m tilefuse.cli.costmodel`), the same as `tilefuse costmodel`."""
    p = argparse.ArgumentParser(prog="tilefuse")
    register(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
