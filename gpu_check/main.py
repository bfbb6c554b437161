"""The one command to run when a GPU is lent: `make gpu-check` (python -m tilefuse.gpu_check).

On a machine whose torch sees an NVIDIA GPU it compiles every example and a representative graph per
kernel family for the device's arch and checks them against the numpy reference, runs every `gpu`
test and each GPU benchmark at reduced size, all inside a time budget (8 minutes by default), and
writes bench/results/gpu-check-<device>.json with a Markdown summary beside it. Without a GPU it says
so on its first line and runs the same checks under the Triton interpreter at small sizes. The exit
status is 0 when every check passed, 1 otherwise (2 for a bad command line).

Nothing here imports TVM, optuna, xgboost or SQLAlchemy (a GPU image may lack them): configs come
from the family defaults (compile with db=None, cost_model=None)."""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .cases import FAMILY_CASES, example_names
from .steps import BENCHES, Check, Plan, check, family_coverage, run_bench, run_cases, run_pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("kernels", "pytest", "bench")
# Seconds each step may take at most; the budget's deadline bounds them all. Typical on an H200: the
# kernels ~1 min, the gpu tests and each benchmark well under one.
CAPS = {"probe": 60.0, "kernels": 200.0, "case": 90.0, "pytest": 120.0, "bench": 150.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m tilefuse.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--interp", action="store_true", help="run under the Triton interpreter even with a GPU")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results", help="where the JSON and Markdown go")
    ap.add_argument("--examples", type=Path, default=ROOT / "examples", help="directory of .tf examples")
    ap.add_argument("--bench", action="append", type=Path, help="benchmark script (repeatable; default: "
                    + ", ".join(BENCHES) + ")")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps from {', '.join(STEPS)}")
    ap.add_argument("--cases", default="*", help="kernel cases to run, a glob over names such as "
                    "'example:decoder_mlp' or 'family:*' (default: all)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything (default 480)")
    ap.add_argument("--seed", type=int, help="seed of the random inputs (default: a fresh one, recorded)")
    args = ap.parse_args(argv)
    steps = [s for s in args.only.split(",") if s]
    if not steps or set(steps) - set(STEPS):
        ap.error(f"--only takes steps from {', '.join(STEPS)}, got {args.only!r}")
    args.only = steps
    return args


def child_env(interp: bool) -> dict[str, str]:
    """The environment of every child: the interpreter chosen before triton is imported, and this
    tilefuse first on the import path (a temp dir's `tilefuse` symlink when no .venv installed it)."""
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "1" if interp else "0"
    if interp:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the gpu tests and benchmarks then see no device either
    here = str(Path(__file__).parents[2])  # the directory holding the `tilefuse` package, unresolved
    env["PYTHONPATH"] = os.pathsep.join([here, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def probe(env: dict[str, str]) -> tuple[dict[str, Any], list[Check]]:
    """The machine (gpu, versions, host); a failed probe is a failing check and means no GPU."""
    t0 = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-m", "tilefuse.gpu_check.probe"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=CAPS["probe"])
        if res.returncode == 0:
            return json.loads(res.stdout.strip().splitlines()[-1]), []
        error = f"exit status {res.returncode}: {res.stderr[-2000:]}"
    except subprocess.TimeoutExpired:
        error = f"no answer within {CAPS['probe']:.0f} s"
    why = f"the device probe failed ({error.splitlines()[0] if error else ''})"
    machine = {"gpu": {"cuda_available": False, "why": why}, "versions": {"python": sys.version.split()[0]}}
    return machine, [check("device probe", "probe", "fail", error, time.monotonic() - t0)]


def target_for(capability: str) -> str | None:
    """The newest target no newer than the device (a 10.0 part runs sm_90 code); None if all are newer."""
    from ..schedule.target import TARGETS

    major, minor = (int(x) for x in capability.split("."))
    cuda = [t for t in TARGETS.values() if t.kind == "cuda" and t.arch <= major * 10 + minor]
    return max(cuda, key=lambda t: t.arch).name if cuda else None


def headline(machine: dict[str, Any]) -> str:
    """The first line: which device, or that there is none and why."""
    gpu = machine["gpu"]
    if machine["mode"] == "gpu":
        return (f"gpu-check: {gpu['name']} (compute capability {gpu['capability']}, driver {gpu.get('driver')}); "
                f"checking kernels for {machine['target']} on the GPU, budget {machine['budget_s']:.0f} s")
    if gpu.get("cuda_available"):
        return f"gpu-check: not using the GPU ({gpu.get('why')}); running the checks under the Triton interpreter"
    return (f"gpu-check: no CUDA GPU ({gpu.get('why')}; {gpu.get('nvml') or 'NVML not asked'}); running the checks "
            f"under the Triton interpreter at small sizes")


def machine_and_mode(args: argparse.Namespace) -> tuple[dict[str, Any], list[Check]]:
    """Probe the machine and decide the mode: "gpu" with the device's target, else "interp"."""
    machine, checks = probe(child_env(interp=False))
    gpu = machine["gpu"]
    target = target_for(gpu["capability"]) if gpu.get("cuda_available") else None
    if gpu.get("cuda_available") and target is None:
        gpu["why"] = f"its compute capability {gpu['capability']} is older than every target (sm_80 and newer)"
        checks.append(check("device target", "probe", "fail", gpu["why"]))
    elif args.interp and target is not None:
        gpu["why"] = f"{gpu['name']} present, but --interp was given"
    mode = "gpu" if target is not None and not args.interp else "interp"
    machine.update(mode=mode, target=target if mode == "gpu" else "interp", budget_s=args.budget)
    return machine, checks


def run_steps(args: argparse.Namespace, plan: Plan, on_gpu: bool) -> list[Check]:
    """The kernel cases and family coverage, the gpu tests, the benchmarks: in that order, so the
    kernel checks (the most direct evidence) get the time first."""
    checks: list[Check] = []
    if "kernels" in args.only:
        names = [n for n in example_names(plan.examples) + list(FAMILY_CASES) if fnmatch.fnmatchcase(n, args.cases)]
        cases, registered = run_cases(names, plan, CAPS["case"], CAPS["kernels"])
        checks += cases
        if set(FAMILY_CASES) <= set(names):  # with only some cases selected, coverage says nothing
            checks.append(plan.progress(family_coverage(cases, registered)))
    if "pytest" in args.only:
        checks += run_pytest(plan, on_gpu, CAPS["pytest"])
    if "bench" in args.only:
        for script in args.bench or [ROOT / b for b in BENCHES]:
            checks.append(run_bench(script.resolve(), plan, on_gpu, CAPS["bench"]))
    return checks


def _say(c: Check) -> Check:
    why = (c["error"].strip().splitlines() or [""])[0][:150] if c["status"] in report.FAILING else ""
    print(f"  {c['status']:<8} {c['seconds']:7.1f} s  {c['name']}" + (f": {why}" if why else ""), flush=True)
    return c


def main(argv: list[str] | None = None) -> int:
    """Run gpu-check; 0 when every check passed, 1 when any failed or timed out."""
    args = parse_args(argv)
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine, checks = machine_and_mode(args)
    machine["seed"] = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(headline(machine), flush=True)
    for c in checks:
        _say(c)
    on_gpu = machine["mode"] == "gpu"
    plan = Plan(ROOT, args.examples.resolve(), machine["target"], not on_gpu, machine["seed"],
                t0 + args.budget, child_env(interp=not on_gpu), _say)
    checks += run_steps(args, plan, on_gpu)
    doc = report.build(machine, checks, started, time.monotonic() - t0)
    json_path, md_path = report.write(doc, args.out_dir, report.device_slug(machine))
    counts = ", ".join(f"{n} {s}" for s, n in doc["summary"].items())
    print(f"gpu-check: {'PASS' if doc['ok'] else 'FAIL'} ({counts}) in {doc['seconds']:.0f} s; wrote {json_path} "
          f"and {md_path}", flush=True)
    return 0 if doc["ok"] else 1
