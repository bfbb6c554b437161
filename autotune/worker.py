"""A measurement worker: one child process (multiprocessing 'spawn' context) that runs a
module-level function on a payload. A call that outlives its timeout gets the process killed;
a process that dies (os._exit, segfault, illegal address) is reported as a crash. Either way the
next call starts a fresh process, so one bad candidate never takes a sweep down. No signals are
used for timeouts: the parent waits on the pipe with a deadline."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

OK, ERROR, TIMEOUT, CRASH = "ok", "error", "timeout", "crash"
_LOAD = "__tilefuse_worker_load__"
STARTUP_TIMEOUT = 300.0  # a fresh worker's interpreter start and imports: not charged to a candidate


@dataclass(frozen=True)
class Outcome:
    """What one call produced: kind is ok (value set), error (exception text), timeout or crash."""

    kind: str
    value: Any = None
    error: str = ""


def _serve(conn: Connection, env: Mapping[str, str]) -> None:
    """The child's loop: apply `env`, then run (fn, payload) requests until told to stop."""
    os.environ.update(env)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, payload = msg
        if isinstance(payload, tuple) and len(payload) == 2 and isinstance(payload[0], str) and payload[0] == _LOAD:
            # The handshake: unpickling it imported the modules of `fn` and of the payload.
            conn.send((OK, None))
            continue
        try:
            reply: tuple[str, Any] = (OK, fn(payload))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as text
            reply = (ERROR, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}")
        try:
            conn.send(reply)
        except Exception as err:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send((ERROR, f"the worker could not return its result: {type(err).__name__}: {err}"))


class Worker:
    """A replaceable child process running one call at a time."""

    def __init__(self, env: Mapping[str, str] | None = None, context: str = "spawn", name: str = "tilefuse-worker"):
        self.env = dict(env or {})
        self.ctx: Any = multiprocessing.get_context(context)
        self.name = name
        self.starts = 0
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> Connection:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.env), name=self.name, daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1
        return parent

    def call(self, fn: Callable[[Any], Any], payload: Any, timeout: float | None = None) -> Outcome:
        """Run `fn(payload)` in the child; `timeout` seconds (None: no limit) before it is killed."""
        with self._lock:
            conn = self._conn if self._alive() else None
            if conn is None:
                self._discard()
                conn = self._start()
                ready = self._handshake(conn, fn, payload)
                if ready is not None:
                    return ready
            try:
                conn.send((fn, payload))
            except (BrokenPipeError, EOFError, OSError) as err:
                self._discard()
                return Outcome(CRASH, error=f"worker pipe closed before the request was sent: {err}")
            if not conn.poll(timeout):
                self.kill()
                return Outcome(TIMEOUT, error=f"no result after {timeout:.1f} s; worker killed")
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                code = self._reap()
                return Outcome(CRASH, error=f"worker process died (exit code {code})")
            if kind == ERROR:
                return Outcome(ERROR, error=str(value))
            return Outcome(OK, value=value)

    def _handshake(self, conn: Connection, fn: Callable[[Any], Any], payload: Any) -> Outcome | None:
        """Wait until a fresh child has imported what `fn` and `payload` need; an Outcome if it cannot."""
        try:
            conn.send((fn, (_LOAD, payload)))
            if conn.poll(STARTUP_TIMEOUT):
                kind, value = conn.recv()
                if kind == OK:
                    return None
                self._discard()
                return Outcome(ERROR, error=f"worker could not load {getattr(fn, '__qualname__', fn)}: {value}")
        except (BrokenPipeError, EOFError, OSError):
            pass
        code = self._reap()
        return Outcome(CRASH, error=f"worker failed to start (exit code {code})")

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self._conn is not None

    def _reap(self) -> int | None:
        proc = self._proc
        if proc is not None:
            proc.join(timeout=5)
        code = proc.exitcode if proc is not None else None
        self._discard()
        return code

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._proc, self._conn = None, None

    def kill(self) -> None:
        """Kill the child now (a hung call); the next call starts a fresh one."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        self._discard()

    def close(self) -> None:
        """Ask the child to exit, then make sure it has."""
        if self._alive() and self._conn is not None:
            try:
                self._conn.send(None)
                self._proc.join(timeout=2)
            except (BrokenPipeError, OSError):
                pass
        self._discard()


class WorkerPool:
    """`jobs` workers serving calls in parallel (for builds); each call has its own timeout."""

    def __init__(self, jobs: int, env: Mapping[str, str] | None = None):
        self.workers = [Worker(env, name=f"tilefuse-build-{i}") for i in range(max(1, jobs))]
        self._free = list(self.workers)
        self._cv = threading.Condition()
        self._threads = ThreadPoolExecutor(max_workers=len(self.workers), thread_name_prefix="tilefuse-build")

    def _call(self, fn: Callable[[Any], Any], payload: Any, timeout: float | None) -> Outcome:
        with self._cv:
            while not self._free:
                self._cv.wait()
            w = self._free.pop()
        try:
            return w.call(fn, payload, timeout)
        finally:
            with self._cv:
                self._free.append(w)
                self._cv.notify()

    def map(self, fn: Callable[[Any], Any], payloads: list[Any], timeout: float | None = None) -> list[Outcome]:
        """Outcomes of `fn` on every payload, in order."""
        futs = [self._threads.submit(self._call, fn, p, timeout) for p in payloads]
        return [f.result() for f in futs]

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for w in self.workers:
            w.close()
