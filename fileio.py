"""Atomic file writes: a temp file in the target's directory, fsync, then os.replace, so readers
see the old file or the whole new one, never a torn write (and a crash leaves no partial file).
The file gets the permissions a plain open() would give it (the old file's, else 0o666 less the
umask), not the owner-only mode of the temp file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from collections.abc import Iterator


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on a clean exit it is fsynced and moved over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permission bits `path` should end with: those of the file it replaces, else 0o666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write all of `data` to `path` atomically."""
    if isinstance(data, str):
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(data)
    else:
        with atomic_open(path, "wb") as f:
            f.write(data)
