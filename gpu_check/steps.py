"""gpu-check's steps, each in subprocesses with timeouts: the kernel cases (one worker process, restarted
on the cases left when one hangs or dies), the `gpu`-marked tests, and the GPU benchmarks.

A check is a dict: name, step, status (ok | fail | timeout | skipped), error, seconds, details."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from .worker import MARK

Check = dict[str, Any]
TAIL = 2000  # characters of a failed process's output kept in the report


@dataclass
class Plan:
    """Where and how the checks run."""

    root: Path  # the repository (the package tilefuse)
    examples: Path
    target: str  # "interp" or the device's sm_XX
    small: bool  # interpreter sizes
    seed: int
    deadline: float  # time.monotonic() by which every step must be done
    env: dict[str, str]  # for every child: TRITON_INTERPRET, PYTHONPATH
    progress: Callable[[Check], Check] = lambda c: c  # called with each check as it is decided; returns it

    def left(self, cap: float) -> float:
        """Seconds a step may take: `cap`, or less when the deadline is nearer."""
        return max(0.0, min(cap, self.deadline - time.monotonic()))


def check(name: str, step: str, status: str, error: str = "", seconds: float = 0.0, **details: Any) -> Check:
    """One entry of the report."""
    return {"name": name, "step": step, "status": status, "error": error, "seconds": round(seconds, 3),
            "details": details}


def _tail(text: str) -> str:
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


def run_process(cmd: list[str], plan: Plan, timeout: float, cwd: Path | None = None) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, stdout+stderr, seconds); the whole process group dies on timeout."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=plan.env, cwd=cwd or plan.root,
                                start_new_session=True, text=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc = None
        except BaseException:  # interrupted: its own session would outlive us
            _kill(proc)
            raise
        log.seek(0)
        return rc, log.read(), time.monotonic() - t0


def _kill(proc: subprocess.Popen[Any], grace: float = 0.0) -> None:
    """Kill `proc`'s session (it started its own, so its children die with it) unless it exits within
    `grace` seconds; only while it is alive, so a reaped pid's group is never signalled."""
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# ------------------------------------------------------------------------------------- kernel cases

def _reader(stream: Any, q: queue.Queue[dict[str, Any] | None]) -> None:
    for line in stream:
        if line.startswith(MARK):
            q.put(json.loads(line[len(MARK):]))
    q.put(None)  # end of output: the worker exited


def _start_worker(plan: Plan, names: list[str], err: Any) -> tuple[subprocess.Popen[str], queue.Queue[Any]]:
    cmd = [sys.executable, "-m", "tilefuse.gpu_check.worker", "--target", plan.target, "--seed", str(plan.seed),
           "--examples", str(plan.examples), *(["--small"] if plan.small else []), *names]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=plan.env, cwd=plan.root, text=True,
                            start_new_session=True)
    q: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    return proc, q


def run_cases(names: list[str], plan: Plan, case_timeout: float, step_cap: float) -> tuple[list[Check], list[str]]:
    """Every case's check, and the registered families the worker reported."""
    stop = time.monotonic() + plan.left(step_cap)
    results: list[Check] = []
    registered: list[str] = []
    todo = list(names)
    while todo:
        with tempfile.TemporaryFile("w+") as err:
            proc, q = _start_worker(plan, todo, err)
            try:
                done, registered = _drain(proc, q, todo, plan, (case_timeout, stop), err, registered)
            except BaseException:  # interrupted: the worker's own session would outlive us
                _kill(proc)
                raise
            _kill(proc, grace=30.0)  # it is exiting; one stuck at exit (a CUDA teardown) must not hang us
        results += done
        todo = todo[len(done):]
        if todo and time.monotonic() >= stop:
            for n in todo:
                results.append(plan.progress(check(n, "kernels", "timeout", "not run: the kernel step's time ran out")))
            break
    return results, registered


def _drain(proc: subprocess.Popen[str], q: queue.Queue[Any], todo: list[str], plan: Plan, limits: tuple[float, float],
           err: Any, registered: list[str]) -> tuple[list[Check], list[str]]:
    """Read results until the worker finishes, a case overruns (`limits`: seconds per case, the step's
    monotonic deadline) or the worker dies; the checks decided, in case order."""
    case_timeout, stop = limits
    done: list[Check] = []
    current, started = None, time.monotonic()
    while len(done) < len(todo):
        try:
            ev = q.get(timeout=max(0.0, min(case_timeout - (time.monotonic() - started), stop - time.monotonic())))
        except queue.Empty:
            _kill(proc)
            secs = time.monotonic() - started
            done.append(plan.progress(check(current or todo[len(done)], "kernels", "timeout",
                                            f"no result within {secs:.0f} s; the worker was killed", secs)))
            return done, registered
        if ev is None:  # the worker exited with cases left: the one it was on killed it
            rc = proc.wait()
            err.seek(0)
            msg = f"the worker exited with status {rc} during this case: {_tail(err.read())}"
            done.append(plan.progress(check(current or todo[len(done)], "kernels", "fail", msg,
                                            time.monotonic() - started)))
            return done, registered
        if ev["event"] == "registry":
            registered = ev["families"]
        elif ev["event"] == "start":
            current, started = ev["case"], time.monotonic()
        elif ev["event"] == "result":
            done.append(plan.progress(check(ev["case"], "kernels", ev["status"], ev.get("error", ""), ev["seconds"],
                                            **ev["details"])))
            current = None
    return done, registered


def family_coverage(cases: list[Check], registered: list[str]) -> Check:
    """Fails when a registered family had no kernel that passed its check."""
    passed = {f for c in cases if c["status"] == "ok" for f in c["details"].get("families", [])}
    if not registered:
        return check("every family launched", "kernels", "fail", "the worker never reported the registry")
    missing = sorted(set(registered) - passed)
    error = f"no passing check launched a kernel of famil{'ies' if len(missing) > 1 else 'y'} " \
            f"{', '.join(missing)}; add a case to gpu_check/cases.py FAMILY_CASES" if missing else ""
    return check("every family launched", "kernels", "fail" if missing else "ok", error,
                 registered=registered, launched=sorted(passed))


# ----------------------------------------------------------------------------------------- gpu tests

def gpu_test_files(root: Path) -> list[Path]:
    """The test files that mark a test `gpu` (only these are collected: the others may import modules
    a GPU machine lacks, such as TVM)."""
    return [p for p in sorted((root / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text(encoding="utf-8")]


def run_pytest(plan: Plan, on_gpu: bool, cap: float) -> list[Check]:
    """`pytest -m gpu` over the files with gpu tests: one check per test, one for the run. On a GPU a
    skipped gpu test fails (something kept it from the device); without one, skipping is expected."""
    files = [str(f.relative_to(plan.root)) for f in gpu_test_files(plan.root)]
    if not files:
        return [plan.progress(check("pytest -m gpu", "pytest", "fail", "no file under tests/ marks a test gpu"))]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}", "-rA",
               *files]
        rc, out, secs = run_process(cmd, plan, plan.left(cap))
        tests = [plan.progress(c) for c in (_junit_checks(junit, on_gpu) if junit.exists() else [])]
    if rc is None:
        return tests + [plan.progress(check("pytest -m gpu", "pytest", "timeout", _tail(out), secs, files=files))]
    failed = rc != 0 or any(t["status"] in ("fail", "timeout") for t in tests)
    return tests + [plan.progress(check("pytest -m gpu", "pytest", "fail" if failed else "ok",
                                        _tail(out) if failed else "", secs, exit_code=rc, files=files))]


def _junit_checks(path: Path, on_gpu: bool) -> list[Check]:
    import xml.etree.ElementTree as ET

    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        secs = float(case.get("time") or 0.0)
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if problem is None:
            out.append(check(name, "pytest", "ok", "", secs))
            continue
        text = problem.get("message") or (problem.text or "")
        if problem.tag == "skipped":
            status = "fail" if on_gpu else "skipped"
            text = f"skipped on a GPU machine: {text}" if on_gpu else text
        else:
            status = "fail"
        out.append(check(name, "pytest", status, _tail(text), secs))
    return out


# ---------------------------------------------------------------------------------------- benchmarks

BENCHES = ("bench/gpu_matmul.py", "bench/attention.py", "bench/quant_gemm.py", "bench/sparton_gpu.py",
           "bench/export_overhead.py", "bench/splat.py", "bench/sparse_gpu.py")


def run_bench(script: Path, plan: Plan, on_gpu: bool, cap: float) -> Check:
    """Run one benchmark at reduced size (`--quick` on the device, `--dry-run` under the interpreter);
    its rows (timings, errors against torch) go into the check."""
    name = f"bench {script.name}"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result = Path(tmp) / "result.json"
        mode = ["--quick", "--target", plan.target] if on_gpu else ["--dry-run"]
        rc, out, secs = run_process([sys.executable, str(script), *mode, "--json", str(result)], plan, plan.left(cap))
        rows = json.loads(result.read_text())["rows"] if rc == 0 and result.exists() else []
    if rc is None:
        return plan.progress(check(name, "bench", "timeout", f"killed after {secs:.0f} s; output: {_tail(out)}", secs))
    if rc != 0:
        return plan.progress(check(name, "bench", "fail", f"exit status {rc}: {_tail(out)}", secs))
    if not rows:
        return plan.progress(check(name, "bench", "fail", f"wrote no result rows: {_tail(out)}", secs))
    return plan.progress(check(name, "bench", "ok", "", secs, mode=mode[0], rows=rows))
