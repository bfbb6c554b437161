"""Fuzz campaign: mutants of the example programs, the golden test graphs and random graphs, each taken
through parse -> verify -> partition -> cpu/interp/sm_90 lowering (tests/fuzzing.py, tests/fuzz_check.py)
in a worker process with a timeout (a hang is a crash) and an address-space limit (a huge allocation is
a MemoryError, a crash). Anything but a TilefuseError is a crash, grouped by signature (exception type
and innermost library frame); the results file keeps every signature's count and its first reproducer.

Mutant i is drawn from random.Random(f"{seed}:{i}") alone, so a (seed, index) pair names it for any
--jobs, and two runs with the same --seed and --mutants see the same mutants (a --time stop cuts the
list short). Exit status: 0 without crashes, 1 with any.

Usage: python bench/fuzz_campaign.py [--mutants 20000] [--seed 0] [--jobs 1] [--time 1200]
           [--timeout 30] [--mem-gib 6] [--machine NAME] [--out bench/results]
       python bench/fuzz_campaign.py --recheck bench/results/fuzz_campaign-NAME.json
           (re-runs each stored reproducer: which signatures still crash, e.g. after a merge)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing  # noqa: E402
from fuzz_check import STAGES, Outcome, Worker, known_elsewhere  # noqa: E402

RANDOM_SEED_SHARE = 0.25  # mutants whose seed is a fresh random graph; the rest mutate a stored text


def machine_name() -> str:
    """A short name of this machine for result files: CPU vendor and core count ("epyc-2core")."""
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1] for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    cpu = cpu or platform.processor() or platform.machine()
    vendor = next((w for w in ("epyc", "xeon", "ryzen", "core", "neoverse", "apple") if w in cpu.lower()),
                  platform.machine().lower())
    return f"{vendor}-{os.cpu_count()}core"


def draw_mutant(seed: int, index: int, seeds: list[tuple[str, str]]) -> dict[str, Any]:
    """Mutant `index` of campaign `seed`: its seed graph's name, the mutations and the text."""
    rng = random.Random(f"{seed}:{index}")
    if rng.random() < RANDOM_SEED_SHARE:
        name, text = "random", fuzzing.random_graph_text(rng)
    else:
        name, text = seeds[rng.randrange(len(seeds))]
    mutated, names = fuzzing.mutate(rng, text)
    return {"index": index, "seed_graph": name, "mutations": names, "text": mutated}


def seed_graphs() -> list[tuple[str, str]]:
    """(name, text) of every stored seed: the examples (weighted up: users start from them) and golden graphs."""
    examples = [(f"examples/{p.name}", p.read_text()) for p in sorted((ROOT / "examples").glob("*.tf"))]
    golden = [(f"golden[{i}]", t) for i, t in enumerate(fuzzing.golden_texts())]
    return examples * max(1, len(golden) // (2 * len(examples))) + golden


class Tally:
    """Counts by status and stage, and crash signatures with their first reproducer (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = 0
        self.status: dict[str, int] = {"ok": 0, "rejected": 0, "crash": 0}
        self.rejected_at: dict[str, int] = {s: 0 for s in STAGES}
        self.crashes: dict[str, dict[str, Any]] = {}

    def add(self, mutant: dict[str, Any], out: Outcome) -> None:
        with self.lock:
            self.done += 1
            self.status[out.status] += 1
            if out.status == "rejected":
                self.rejected_at[out.stage] += 1
            if out.status != "crash":
                return
            row = self.crashes.setdefault(out.signature, {"count": 0, "stages": {}, "elsewhere": 0, "first": None})
            row["elsewhere"] += known_elsewhere(out) is not None
            row["count"] += 1
            row["stages"][out.stage] = row["stages"].get(out.stage, 0) + 1
            first = row["first"]
            if first is None or mutant["index"] < first["index"]:
                row["first"] = {**mutant, "stage": out.stage, "error": out.error, "trace": out.trace,
                                "known_elsewhere": known_elsewhere(out)}


def run_campaign(args: argparse.Namespace) -> tuple[Tally, float]:
    """Check mutants 0..args.mutants-1 on args.jobs workers until done or args.time runs out."""
    seeds = seed_graphs()
    tally = Tally()
    counter = iter(range(args.mutants))
    counter_lock = threading.Lock()
    t0 = time.monotonic()
    deadline = t0 + args.time if args.time else float("inf")

    def drive() -> None:
        worker = Worker(timeout=args.timeout, mem_bytes=int(args.mem_gib * (1 << 30)))
        try:
            while time.monotonic() < deadline:
                with counter_lock:
                    index = next(counter, None)
                if index is None:
                    return
                mutant = draw_mutant(args.seed, index, seeds)
                tally.add(mutant, worker.check(mutant["text"]))
                if tally.done % args.progress == 0:  # progress, and a checkpoint an interrupted run leaves behind
                    with tally.lock:
                        doc = results(args, tally, time.monotonic() - t0)
                    save(args, doc)
                    print(f"{doc['mutants']} mutants ({doc['mutants'] / doc['meta']['seconds']:.1f}/s): "
                          f"{doc['status']}, {doc['crash_signatures']} signatures", file=sys.stderr, flush=True)
        finally:
            worker.close()

    threads = [threading.Thread(target=drive) for _ in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.monotonic() - t0


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def results(args: argparse.Namespace, tally: Tally, seconds: float) -> dict[str, Any]:
    """The results document: run metadata, counts, and the signatures (most frequent first)."""
    sigs = sorted(tally.crashes.items(), key=lambda kv: (-kv[1]["count"], kv[0]))
    return {"benchmark": "fuzz_campaign",
            "meta": {"machine": args.machine, "date": datetime.date.today().isoformat(), "commit": args.commit,
                     "seed": args.seed, "mutants_requested": args.mutants, "jobs": args.jobs,
                     "time_limit_s": args.time, "timeout_s": args.timeout, "mem_gib": args.mem_gib,
                     "seconds": round(seconds, 1), "python": platform.python_version()},
            "mutants": tally.done, "status": tally.status, "rejected_at": tally.rejected_at,
            "crash_signatures": len(sigs),
            "crashes_known_elsewhere": sum(row["elsewhere"] for _, row in sigs),
            "signatures": [{"signature": s, **row} for s, row in sigs]}


def markdown(doc: dict[str, Any]) -> str:
    """A short human summary of a results document."""
    m = doc["meta"]
    lines = [f"# Fuzz campaign on {m['machine']} ({m['date']}, commit {m['commit']})", "",
             f"{doc['mutants']} mutants (seed {m['seed']}, {m['jobs']} job(s), {m['seconds']} s): "
             f"{doc['status']['ok']} ok, {doc['status']['rejected']} rejected with a TilefuseError, "
             f"**{doc['status']['crash']} crashes** in {doc['crash_signatures']} signature(s).", "",
             "Rejections by step: " + ", ".join(f"{k} {v}" for k, v in doc["rejected_at"].items()), ""]
    if doc["signatures"]:
        lines += ["Known elsewhere: crashes of a class another branch is fixing (tests/fuzz_check.py KNOWN_ELSEWHERE).",
                  "", "| count | known elsewhere | signature | steps | first mutant | error |",
                  "|---|---|---|---|---|---|"]
        for s in doc["signatures"]:
            err = s["first"]["error"].replace("|", "\\|").replace("\n", " ")[:120]
            steps = ", ".join(f"{k} {v}" for k, v in s["stages"].items())
            cls = s["first"]["known_elsewhere"] or "-"
            lines.append(f"| {s['count']} | {s['elsewhere']} ({cls}) | `{s['signature']}` | {steps} | "
                         f"{s['first']['index']} | {err} |")
    return "\n".join(lines) + "\n"


def save(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Write bench/results/fuzz_campaign-<machine>.json and .md (each replaced whole, never half written)."""
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fuzz_campaign-{args.machine}"
    for path, text in ((stem.with_name(stem.name + ".json"), json.dumps(doc, indent=1) + "\n"),
                       (stem.with_name(stem.name + ".md"), markdown(doc))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def recheck(path: Path, args: argparse.Namespace) -> int:
    """Re-run each stored first reproducer of `path` on this checkout; print, and write beside it as
    <name>-recheck.md, which signatures still crash (and how) and their class. Exit 1 if any does."""
    doc = json.loads(path.read_text())
    worker = Worker(timeout=args.timeout, mem_bytes=int(args.mem_gib * (1 << 30)))
    rows = ["| signature | count | now | known elsewhere |", "|---|---|---|---|"]
    still = 0
    try:
        for s in doc["signatures"]:
            out = worker.check(s["first"]["text"])
            crashed = out.status == "crash"
            still += crashed
            now = f"CRASH `{out.signature}`" if crashed else f"fixed ({out.status}: {out.error[:90]})"
            rows.append(f"| `{s['signature']}` | {s['count']} | {now.replace('|', '/')} | "
                        f"{(known_elsewhere(out) if crashed else None) or '-'} |")
    finally:
        worker.close()
    text = "\n".join([f"# Recheck of {path.name} at commit {args.commit} ({datetime.date.today().isoformat()})", "",
                      f"{still} of {len(doc['signatures'])} first reproducers still crash.", ""] + rows) + "\n"
    path.with_name(path.stem + "-recheck.md").write_text(text)
    print(text)
    return 1 if still else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (the machine may be shared)")
    ap.add_argument("--time", type=float, default=0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--timeout", type=float, default=30, help="seconds per mutant before it counts as a hang")
    ap.add_argument("--mem-gib", type=float, default=6, help="address-space limit of a worker")
    ap.add_argument("--machine", default=machine_name())
    ap.add_argument("--commit", default=None, help="the code's commit for the results (default: git HEAD here)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--progress", type=int, default=500, help="print progress every N mutants")
    ap.add_argument("--recheck", type=Path, help="re-run the reproducers of a results file instead")
    args = ap.parse_args()
    args.commit = args.commit or _git_commit()
    if args.recheck:
        return recheck(args.recheck, args)
    tally, seconds = run_campaign(args)
    doc = results(args, tally, seconds)
    save(args, doc)
    print(markdown(doc))
    return 1 if doc["status"]["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
