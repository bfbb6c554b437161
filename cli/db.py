"""`tilefuse devices` and `tilefuse db show|export|import`: the command-line face of device
fingerprints and the tuning database. `cli.main` calls `register(subparsers)`."""

from __future__ import annotations

from ..fileio import atomic_open

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `devices` and `db` subcommands to the tilefuse argparse CLI."""
    sp = subparsers.add_parser("devices", help="print the fingerprint of every GPU and of the host CPU")
    sp.add_argument("--db", metavar="URL", help="also list the devices recorded in this tuning database")
    sp.add_argument("--json", action="store_true", help="print each device as one JSON line")
    sp.set_defaults(fn=cmd_devices)

    db = subparsers.add_parser("db", help="show, export or import tuning records")
    dbsub = db.add_subparsers(dest="db_cmd", required=True)
    show = dbsub.add_parser("show", help="workloads, devices, record counts and the best config of each pair")
    show.set_defaults(fn=cmd_db_show)
    export = dbsub.add_parser("export", help="write every record as JSON lines")
    export.add_argument("file", nargs="?", default="-", help="output file, or - for stdout (default)")
    export.set_defaults(fn=cmd_db_export)
    imp = dbsub.add_parser("import", help="load records from a JSON-lines file (validated before any is added)")
    imp.add_argument("file", help="input file, or - for stdin")
    imp.set_defaults(fn=cmd_db_import)
    for p in (show, export, imp):
        p.add_argument("--db", metavar="URL", help="SQLAlchemy URL or .db path (default: TILEFUSE_DB or the "
                       "per-user sqlite file)")


# ------------------------------------------------------------------------------------ formatting

def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n % size else f"{int(n // size)} {unit}"
    return f"{int(n)} B"


def _time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def _describe(dev: Any) -> list[tuple[str, str]]:
    """(label, value) lines of one Device for `tilefuse devices`."""
    fp, sw = dev.fingerprint, dev.software
    rows = [("key", dev.key[:16])]
    if dev.kind == "cuda":
        rows += [("arch", f"{dev.arch} (compute capability {fp['cc']})"),
                 ("memory", _bytes(fp["memory_bytes"])),
                 ("SMs", str(fp["sms"])),
                 ("max clocks", f"SM {fp['max_sm_clock_mhz']} MHz, memory {fp['max_mem_clock_mhz']} MHz"),
                 ("memory bus", f"{fp['bus_width_bits']} bits, {dev.mem_bandwidth / 1e9:.0f} GB/s"),
                 ("L2", _bytes(fp["l2_bytes"])),
                 ("peak", f"{dev.peak_flops / 1e12:.0f} TFLOP/s f16 tensor, {dev.peak_f32_flops / 1e12:.1f} f32"),
                 ("driver", str(sw.get("driver", "-"))), ("CUDA", str(sw.get("cuda", "-")))]
    else:
        rows += [("vendor", f"{fp['vendor']} family {fp['family']} model {fp['model']} stepping {fp['stepping']}"),
                 ("cores", f"{fp['cores']} cores, {fp['threads']} threads, {fp['sockets']} socket(s); "
                           f"{sw.get('usable_cpus', '?')} usable by this process"),
                 ("max clock", f"{fp['max_mhz']} MHz"),
                 ("ISA", " ".join(fp["isa"]) or "-"),
                 ("caches", f"L1d {_bytes(fp['l1d_bytes'])}, L1i {_bytes(fp['l1i_bytes'])}, "
                            f"L2 {_bytes(fp['l2_bytes'])} per core, L3 {_bytes(fp['l3_bytes'])} shared"),
                 ("peak", f"{dev.peak_f32_flops / 1e9:.0f} GFLOP/s f32 (estimate), "
                          f"~{dev.mem_bandwidth / 1e9:.0f} GB/s (estimate)"),
                 ("os", str(sw.get("os", "-")))]
    return rows


# -------------------------------------------------------------------------------------- commands

def _open(url: str | None, create: bool = False) -> Any:
    """The tuning database at `url` (a URL or a path; default: TILEFUSE_DB). Only `import` creates one:
    reading a database that does not exist is an error, not a new empty file."""
    from ..autotune.database import TuningDB

    return TuningDB(url, create=create)


def cmd_devices(args: argparse.Namespace) -> int:
    """Print every device's fingerprint; say plainly when there is no GPU."""
    from ..autotune.device import detect_devices, gpu_status

    devices = detect_devices()
    if args.json:
        for dev in devices:
            print(dev.to_json())
    else:
        print(gpu_status())
        for dev in devices:
            print(f"\n{'GPU' if dev.kind == 'cuda' else 'CPU'}: {dev.name}")
            for label, value in _describe(dev):
                print(f"  {label:<11} {value}")
    if args.db:
        from ..autotune.database import DatabaseError  # only here: listing devices needs no [tune] extra

        try:
            with _open(args.db) as db:
                known = db.devices()
        except DatabaseError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        local = {d.key for d in devices}
        print(f"\ndevices in {args.db}:")
        print(_table(["key", "arch", "name", "records", "here"],
                     [[d["key"][:16], d["arch"], str(d["fingerprint"].get("name", "?")), str(d["records"]),
                       "yes" if d["key"] in local else ""] for d in known]))
    return 0


def cmd_db_show(args: argparse.Namespace) -> int:
    """List workloads, devices, record counts and the best config per (workload, device)."""
    from ..autotune.database import DatabaseError
    from ..schedule.records import ranked

    try:
        with _open(args.db) as db:
            print(f"tuning database {db.url}: {db.count()} records")
            workloads = db.workloads()
            devices = db.devices()
            print(f"\n{len(workloads)} workloads")
            if workloads:
                print(_table(["workload", "family", "records"], [[k[:16], f, str(n)] for k, f, n in workloads]))
            print(f"\n{len(devices)} devices")
            if devices:
                print(_table(["device", "arch", "name", "records"],
                             [[d["key"][:16], d["arch"], str(d["fingerprint"].get("name", "?")), str(d["records"])]
                              for d in devices]))
            groups: dict[tuple[str, str], list[Any]] = {}
            for rec in db.records():
                groups.setdefault((rec.workload_key, rec.device_key), []).append(rec)
            rows = []
            for (wkey, dkey), recs in sorted(groups.items(), key=lambda kv: (kv[1][0].family, kv[0])):
                timed = ranked(recs)
                rows.append([wkey[:16], recs[0].family, str(recs[0].device.get("arch", "?")), dkey[:12],
                             f"{len(timed)}/{len(recs)}", _time(timed[0][0]) if timed else "-",
                             timed[0][1].config.to_json() if timed else "(no verified config)"])
            if rows:
                print("\nbest config per (workload, device)")
                print(_table(["workload", "family", "arch", "device", "ok/all", "best", "config"], rows))
    except DatabaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_db_export(args: argparse.Namespace) -> int:
    """Write every record as JSON lines to a file (atomically) or stdout."""
    from ..autotune.database import DatabaseError

    try:
        with _open(args.db) as db:
            if args.file == "-":
                db.export_jsonl(sys.stdout)
                return 0
            out = Path(args.file)
            with atomic_open(out, "w", encoding="utf-8") as fp:
                n = db.export_jsonl(fp)
    except DatabaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {n} records to {out}", file=sys.stderr)
    return 0


def cmd_db_import(args: argparse.Namespace) -> int:
    """Load records from a JSON-lines file; every line is validated before the database is opened, so a
    bad file adds nothing and creates no database."""
    from ..autotune.database import DatabaseError
    from ..schedule.records import RecordError, read_jsonl

    name = "<stdin>" if args.file == "-" else args.file
    try:
        src = contextlib.nullcontext(sys.stdin) if args.file == "-" else open(args.file, encoding="utf-8")
        with src as fp:
            records = read_jsonl(fp, name)
    except OSError as err:
        print(f"error: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 2
    except RecordError as err:
        print(f"error: {err}; nothing was imported", file=sys.stderr)
        return 2
    try:
        with _open(args.db, create=True) as db:
            added = db.add_many(records)
            total = db.count()
    except DatabaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"imported {added} new records from {args.file}; the database holds {total}")
    return 0
