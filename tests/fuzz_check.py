"""One mutant through the pipeline (`check_text`), and a worker process that runs it under a time and
memory limit (`Worker`), for tests/test_fuzz.py and bench/fuzz_campaign.py.

The steps are what `tilefuse compile` does before any compiler runs: parse, the text round trip
(print -> parse gives the same key), canonicalize/fuse/partition, and for each target every kernel's
spec, workload key and checked default config; then for cpu the scheduled TVM module (no LLVM), for
interp the interpreter's Triton source, for sm_90 the Triton source and the launch plan with each
launch's signature (no triton.compile). A TilefuseError is a rejection: the fuzzer's "fine". Each
target is tried even when another rejected the graph (a cpu-only LoweringError must not hide an
sm_90 crash)."""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import re
import tempfile
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAGES = ("parse", "roundtrip", "pipeline", "cpu", "interp", "sm_90")
TARGETS = ("cpu", "interp", "sm_90")


@dataclass
class Outcome:
    """What one mutant did: "ok", "rejected" (a TilefuseError) or "crash", where, and why."""

    status: str
    stage: str = ""  # the step that raised (the last one reached when ok)
    signature: str = ""  # crashes: exception type and innermost library frame
    error: str = ""  # "Type: message" (truncated)
    trace: str = ""  # crashes: the innermost frames


class RoundTripMismatch(AssertionError):
    """Printing a parsed graph and parsing it back gave a different graph (the text form's contract)."""


def library_root() -> Path:
    """The directory of the imported tilefuse package (symlinks resolved)."""
    import tilefuse

    return Path(tilefuse.__file__).resolve().parent


def _library_frame(filename: str, root: Path) -> str | None:
    """`path/in/package.py` for a frame inside the library (tests and bench excluded), else None."""
    if not os.path.isabs(filename):  # "<string>", "<frozen runpy>": not a file of ours
        return None
    try:
        rel = Path(filename).resolve().relative_to(root)
    except ValueError:
        return None
    return None if rel.parts[0] in ("tests", "bench") else rel.as_posix()


def signature(err: BaseException) -> str:
    """The crash's signature: exception type and the innermost library frame (file:function)."""
    root = library_root()
    frames = traceback.extract_tb(err.__traceback__)
    for f in reversed(frames):
        rel = _library_frame(f.filename, root)
        if rel is not None:
            return f"{type(err).__name__} at {rel}:{f.name}"
    return f"{type(err).__name__} outside the library"


def _short(err: BaseException, limit: int = 400) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[:limit] + "..."


def _lower(kg: Any, target_name: str) -> None:
    """Every kernel of `kg` as far as `target_name` goes without a compiler."""
    from tilefuse.kernels import spec_for
    from tilefuse.schedule.target import get_target

    tgt = get_target(target_name)
    for kernel in kg.kernels:
        spec = spec_for(kg, kernel, tgt.backend)
        _ = spec.key
        config = spec.check(spec.default_config(tgt), tgt)
        if tgt.kind == "cpu":
            from tilefuse.codegen import tvm_runtime

            tvm_runtime.scheduled_module(spec, config)
            continue
        spec.render_triton(config, interpret=tgt.kind == "interp")
        if tgt.kind == "cuda":
            plan = spec.launch_plan(config)
            for fn in plan.functions():
                plan.launch_of(fn).signature()


def check_text(text: str, progress: Any = None) -> Outcome:
    """Take one text through every step; `progress` (a shared int) is set to the step's index."""
    from tilefuse.errors import TilefuseError
    from tilefuse.ir.text import parse_graph
    from tilefuse.kernels import fusion_rules
    from tilefuse.passes import run_pipeline

    def at(stage: str) -> str:
        if progress is not None:
            progress.value = STAGES.index(stage)
        return stage

    stage = at("parse")
    rejected: Outcome | None = None
    try:
        g = parse_graph(text)
        stage = at("roundtrip")
        again = parse_graph(g.text)
        if again.text != g.text:
            raise RoundTripMismatch(f"printed:\n{g.text}\nreprinted:\n{again.text}")
        stage = at("pipeline")
        kg = run_pipeline(g, fusion_rules()).kernels
        for stage in TARGETS:
            at(stage)
            try:
                _lower(kg, stage)
            except TilefuseError as err:
                rejected = rejected or Outcome("rejected", stage, error=_short(err))
    except TilefuseError as err:
        return Outcome("rejected", stage, error=_short(err))
    except Exception as err:  # noqa: BLE001 - anything but the error base is what the fuzzer looks for
        tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-12:])
        return Outcome("crash", stage, signature(err), _short(err), tb[-4000:])
    return rejected or Outcome("ok", stage)


# ---- the worker process ------------------------------------------------------------------------------
def warm_up() -> None:
    """Import what check_text needs (TVM takes seconds), so the per-text timeout measures only the text."""
    check_text('graph w { %x = input f32[4, 8]\n %y = reduce(%x) {op="sum", axes=[1], keepdim=false}\n'
               ' output y = %y }')


def _serve(conn: Any, progress: Any, mem_bytes: int, trace_path: str, timeout: float, check: Any, warm: bool
           ) -> None:
    """Worker loop: receive a text, send back check(text)'s Outcome as a dict, until None arrives."""
    import resource

    if mem_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    if warm:
        warm_up()
    conn.send("ready")
    with open(trace_path, "w") as trace:
        while True:
            text = conn.recv()
            if text is None:
                return
            # A hang leaves its stack in the trace file just before the parent kills us.
            trace.seek(0)
            trace.truncate()
            faulthandler.dump_traceback_later(max(1.0, timeout * 0.8), file=trace)
            out = check(text, progress)
            faulthandler.cancel_dump_traceback_later()
            conn.send(asdict(out))


_FRAME = re.compile(r'File "([^"]+)", line \d+ in (\S+)')


def _hang_signature(trace_text: str) -> str:
    """The innermost library frame of the first thread in a faulthandler dump ("" when none)."""
    root = library_root()
    for m in _FRAME.finditer(trace_text):
        rel = _library_frame(m.group(1), root)
        if rel is not None:
            return f" at {rel}:{m.group(2)}"
    return ""


class Worker:
    """A process that checks texts one at a time, killed and restarted on a hang or a death; its address
    space is limited to `mem_bytes` so a huge allocation fails as MemoryError instead of swapping."""

    def __init__(self, timeout: float = 30.0, mem_bytes: int = 6 << 30, check: Any = None, warm: bool = True):
        self.timeout = timeout
        self.check_fn = check or check_text  # a module-level function (the worker imports it by name)
        self.warm = warm
        self.mem_bytes = mem_bytes
        self.start_timeout = 300.0
        self._ctx = mp.get_context("spawn")
        fd, self._trace_path = tempfile.mkstemp(prefix="tilefuse-fuzz-", suffix=".trace")
        os.close(fd)
        self._proc: Any = None
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._progress = self._ctx.Value("i", 0, lock=False)
        self._proc = self._ctx.Process(target=_serve, args=(child, self._progress, self.mem_bytes,
                                                            self._trace_path, self.timeout, self.check_fn,
                                                            self.warm), daemon=True)
        self._proc.start()
        child.close()
        try:
            ready = self._conn.poll(self.start_timeout) and self._conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._proc.kill()
            raise RuntimeError(f"fuzz worker did not start within {self.start_timeout:g} s")

    def _restart(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._conn.close()
        self._start()

    def check(self, text: str) -> Outcome:
        """The Outcome of `text`; a hang past the timeout or a dead worker is a crash."""
        self._progress.value = 0
        self._conn.send(text)
        if self._conn.poll(self.timeout):
            try:
                return Outcome(**self._conn.recv())
            except (EOFError, OSError):
                self._proc.join(5)  # the worker died: reap it so that is_alive below says so
        stage = STAGES[self._progress.value]
        alive = self._proc.is_alive()
        if alive:  # let the pending dump finish: it is due at 0.8 x timeout, so it is written by now
            self._proc.kill()
            self._proc.join()
        code = self._proc.exitcode
        dump = Path(self._trace_path).read_text(errors="replace")
        where = _hang_signature(dump)
        self._restart()
        if alive:
            return Outcome("crash", stage, f"Timeout{where}", f"no answer within {self.timeout:g} s", dump[:4000])
        return Outcome("crash", stage, f"WorkerDied in {stage}", f"worker exit code {code}")

    def close(self) -> None:
        """Stop the worker and remove its trace file."""
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(5)
            except OSError:
                pass
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        Path(self._trace_path).unlink(missing_ok=True)


# ---- stand-ins for a hanging, dying or memory-hungry pipeline (tests of the Worker itself) ---------------
def sleep_forever(text: str, progress: Any = None) -> Outcome:
    """A check that hangs."""
    import time

    time.sleep(3600)
    return Outcome("ok")


def die(text: str, progress: Any = None) -> Outcome:
    """A check whose process dies without an exception (as on a segfault or an OOM kill)."""
    os._exit(3)


def allocate(text: str, progress: Any = None) -> Outcome:
    """A check that allocates `text` GiB (a MemoryError under the worker's address-space limit)."""
    try:
        bytearray(int(text) << 30)
    except MemoryError as err:
        return Outcome("crash", "parse", signature(err), _short(err))
    return Outcome("ok")


# ---- crash classes that other branches are fixing ----------------------------------------------------
# (branch, class, signature pattern, pattern over error + trace). The fuzz test tolerates these and the
# campaign labels them; once those branches are merged, delete the rows (the campaign's --recheck says
# which reproducers still crash) so that every crash fails the test again.
KNOWN_ELSEWHERE: list[tuple[str, str, str, str]] = []  # every class once fixed elsewhere has landed


def known_elsewhere(out: Outcome) -> str | None:
    """"branch: class" when the crash belongs to a class another branch is fixing, else None."""
    for branch, what, sig, text in KNOWN_ELSEWHERE:
        if re.search(sig, out.signature) and re.search(text, out.error + "\n" + out.trace):
            return f"{branch}: {what}"
    return None
