"""Content-addressed on-disk build cache: one directory of named files per key.

Layout: ``<root>/v<SCHEMA>/<key[:2]>/<key>/`` holds the entry's files plus ``MANIFEST.json``
(file names, sizes and sha256 digests). An entry is written into a temporary directory beside
it and moved into place with ``os.replace``, so readers see either nothing or a whole entry.
Entries are rebuildable: anything unreadable or inconsistent is a miss, never an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from ..errors import TilefuseError

__all__ = ["CACHE_SCHEMA_VERSION", "BuildCache", "CacheError", "CacheStats", "canonical_json", "default_cache"]

logger = logging.getLogger(__name__)

CACHE_SCHEMA_VERSION = 1
MANIFEST = "MANIFEST.json"
_TMP_PREFIX = ".tmp-"


class CacheError(TilefuseError, ValueError):
    """A cache request is malformed (bad key or file name); corrupt entries are misses, not errors."""


def canonical_json(payload: Any) -> str:
    """Serialise `payload` deterministically: sorted keys, no whitespace, ASCII only."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclasses.dataclass
class CacheStats:
    """Counters of one BuildCache instance."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    puts: int = 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_name(name: str) -> None:
    if not name or name == MANIFEST or "/" in name or "\\" in name or name.startswith("."):
        raise CacheError(f"invalid cache file name {name!r}; accepted: a plain file name, not {MANIFEST!r}")


class BuildCache:
    """A content-addressed directory of build artefacts keyed by sha256 of canonical JSON."""

    def __init__(self, root: Path | str, schema_version: int = CACHE_SCHEMA_VERSION) -> None:
        self.root = Path(root)
        self.schema_version = schema_version
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"BuildCache({str(self.root)!r}, schema_version={self.schema_version})"

    def key(self, payload: dict[str, Any]) -> str:
        """Return the sha256 hex key of `payload` plus this cache's schema version."""
        full = dict(payload)
        full["__cache_schema__"] = self.schema_version
        return hashlib.sha256(canonical_json(full).encode("ascii")).hexdigest()

    def _entry_dir(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise CacheError(f"invalid cache key {key!r}; accepted: a 64-character lowercase sha256 hex digest")
        return self.root / f"v{self.schema_version}" / key[:2] / key

    def get(self, key: str) -> dict[str, bytes] | None:
        """Return the entry's files, or None on a miss (absent, partial or corrupt entries are misses)."""
        entry = self._entry_dir(key)
        files = self._read_entry(entry)
        if files is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return files

    def _read_entry(self, entry: Path) -> dict[str, bytes] | None:
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._note_corrupt(entry, f"unreadable manifest: {exc}")
            return None
        try:
            if manifest.get("schema") != self.schema_version:
                self._note_corrupt(entry, "schema mismatch")
                return None
            files: dict[str, bytes] = {}
            for name, meta in manifest["files"].items():
                _check_name(name)
                data = (entry / name).read_bytes()
                if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                    self._note_corrupt(entry, f"{name} does not match its manifest")
                    return None
                files[name] = data
        except (OSError, KeyError, TypeError, AttributeError, CacheError) as exc:
            self._note_corrupt(entry, f"bad entry: {exc!r}")
            return None
        return files

    def _note_corrupt(self, entry: Path, why: str) -> None:
        self.stats.corrupt += 1
        logger.warning("ignoring corrupt build cache entry %s (%s); it will be rebuilt", entry, why)

    def put(self, key: str, files: dict[str, bytes]) -> None:
        """Store `files` under `key` atomically; a concurrent writer of the same key may win instead."""
        entry = self._entry_dir(key)
        for name in files:
            _check_name(name)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + key[:16] + "-", dir=entry.parent))
        try:
            listing: dict[str, dict[str, Any]] = {}
            for name, data in sorted(files.items()):
                self._write_file(tmp / name, data)
                listing[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            manifest = {"schema": self.schema_version, "key": key, "files": listing}
            # The manifest is written last: a directory without one is never a valid entry.
            self._write_file(tmp / MANIFEST, canonical_json(manifest).encode("ascii"))
            _fsync_dir(tmp)
            self._install(tmp, entry)
            self.stats.puts += 1
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def _install(self, tmp: Path, entry: Path) -> None:
        try:
            os.replace(tmp, entry)
        except OSError:
            # os.replace cannot replace a non-empty directory. If a valid entry is there, another
            # writer won the race and its content is identical by construction: keep it.
            if self._read_entry(entry) is not None:
                return
            # A corrupt or partial entry sits in the way: move it aside, then retry once.
            trash = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + "trash-", dir=entry.parent))
            try:
                os.replace(entry, trash / "old")
            except OSError:
                pass
            try:
                os.replace(tmp, entry)
            except OSError:
                if self._read_entry(entry) is None:
                    raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(entry.parent)

    def contains(self, key: str) -> bool:
        """Return whether a valid entry exists for `key`, without touching the stats."""
        return self._read_entry(self._entry_dir(key)) is not None

    def clean_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove crashed writers' temp directories older than `older_than_s`; return how many."""
        removed = 0
        base = self.root / f"v{self.schema_version}"
        if not base.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        for tmp in base.glob(f"*/{_TMP_PREFIX}*"):
            try:
                if tmp.stat().st_mtime > cutoff:
                    continue
            except OSError:
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        return removed


def default_cache() -> BuildCache | None:
    """Return the cache configured by the settings, or None when TILEFUSE_NO_CACHE disables it."""
    from ..settings import get_settings

    settings = get_settings()
    if settings.no_cache:
        return None
    return BuildCache(settings.cache_dir / "builds")
