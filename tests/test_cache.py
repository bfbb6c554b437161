"""The content-addressed build cache: round trips, compiler avoidance, corruption and atomicity."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from tilefuse.codegen.cache import MANIFEST, BuildCache, CacheError, default_cache

FILES = {"kernel.cubin": b"\x7fELF" + bytes(range(256)) * 4, "kernel.ptx": b".version 8.0\n", "metadata.json": b"{}"}


def _entry(cache: BuildCache, key: str) -> Path:
    return cache._entry_dir(key)


def test_round_trip(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    key = cache.key({"a": 1, "b": [1, 2]})
    assert len(key) == 64
    assert cache.get(key) is None
    cache.put(key, FILES)
    assert cache.get(key) == FILES
    assert (cache.stats.hits, cache.stats.misses, cache.stats.puts) == (1, 1, 1)
    # A fresh instance (another process) sees the same entry.
    assert BuildCache(tmp_path).get(key) == FILES


def test_empty_entry_round_trip(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    key = cache.key({})
    cache.put(key, {})
    assert cache.get(key) == {}


def test_key_is_canonical(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    assert cache.key({"a": 1, "b": 2}) == cache.key({"b": 2, "a": 1})
    assert cache.key({"a": 1}) != cache.key({"a": 2})
    assert cache.key({"a": 1}) != cache.key({"a": True})


def test_bad_key_and_name_raise(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    with pytest.raises(CacheError):
        cache.get("../etc")
    with pytest.raises(CacheError):
        cache.put(cache.key({}), {"../x": b""})
    with pytest.raises(CacheError):
        cache.put(cache.key({}), {MANIFEST: b""})


def test_schema_version_change_misses(tmp_path: Path) -> None:
    old = BuildCache(tmp_path, schema_version=1)
    old_key = old.key({"a": 1})
    old.put(old_key, FILES)
    new = BuildCache(tmp_path, schema_version=2)
    assert new.key({"a": 1}) != old_key
    assert new.get(new.key({"a": 1})) is None


@pytest.mark.parametrize("damage", ["missing_manifest", "garbage_manifest", "truncated_file", "missing_file",
                                    "wrong_schema"])
def test_corrupt_entry_is_a_miss_and_rebuilds(tmp_path: Path, damage: str) -> None:
    cache = BuildCache(tmp_path)
    key = cache.key({"damage": damage})
    cache.put(key, FILES)
    entry = _entry(cache, key)
    if damage == "missing_manifest":
        (entry / MANIFEST).unlink()
    elif damage == "garbage_manifest":
        (entry / MANIFEST).write_bytes(b"\x00not json")
    elif damage == "truncated_file":
        (entry / "kernel.cubin").write_bytes(b"\x7fEL")
    elif damage == "missing_file":
        (entry / "kernel.ptx").unlink()
    elif damage == "wrong_schema":
        (entry / MANIFEST).write_text('{"schema": 99, "files": {}}')
    assert cache.get(key) is None
    cache.put(key, FILES)
    assert cache.get(key) == FILES


def test_crashed_writer_temp_dir_is_ignored(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    key = cache.key({"crash": 1})
    parent = _entry(cache, key).parent
    parent.mkdir(parents=True)
    # What a writer killed before os.replace leaves behind: a temp dir with files, no manifest.
    tmp = parent / f".tmp-{key[:16]}-dead"
    tmp.mkdir()
    (tmp / "kernel.cubin").write_bytes(b"partial")
    assert cache.get(key) is None
    cache.put(key, FILES)
    assert cache.get(key) == FILES
    assert cache.clean_temp(older_than_s=0) == 1
    assert not tmp.exists()
    assert cache.get(key) == FILES


def _writer(root: str, key: str, n: int) -> None:
    cache = BuildCache(root)
    for _ in range(n):
        cache.put(key, FILES)


def test_concurrent_writers_same_key(tmp_path: Path) -> None:
    key = BuildCache(tmp_path).key({"race": 1})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    cache = BuildCache(tmp_path)
    assert cache.get(key) == FILES
    leftovers = [p for p in _entry(cache, key).parent.iterdir() if p.name != key]
    assert leftovers == []


def test_default_cache_follows_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tilefuse.settings import reload_settings

    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("TILEFUSE_NO_CACHE", raising=False)
    reload_settings()
    try:
        cache = default_cache()
        assert cache is not None and cache.root.is_relative_to(tmp_path / "c")
        monkeypatch.setenv("TILEFUSE_NO_CACHE", "1")
        reload_settings()
        assert default_cache() is None
    finally:
        monkeypatch.undo()
        reload_settings()


# ---- integration with the AOT builder -------------------------------------------------------------

SRC = '''
import triton
import triton.language as tl


@triton.jit
def scale(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)
'''
SIG = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}


def test_cache_hit_avoids_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    triton = pytest.importorskip("triton")
    from tilefuse.codegen import aot, resources
    from tilefuse.codegen.aot import build_triton

    cache = BuildCache(tmp_path)
    first = build_triton(SRC, "scale", SIG, {"BLOCK": 128}, arch=90, num_warps=4, num_stages=1, cache=cache)
    assert not first.from_cache

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compiler must not run on a cache hit")

    monkeypatch.setattr(triton, "compile", boom)
    monkeypatch.setattr(resources, "report_from_cubin", boom)
    monkeypatch.setattr(aot, "report_from_cubin", boom)
    monkeypatch.setattr(aot, "_build_in_process", boom)
    monkeypatch.setattr(aot, "_build_in_subprocess", boom)
    second = build_triton(SRC, "scale", SIG, {"BLOCK": 128}, arch=90, num_warps=4, num_stages=1, cache=cache)
    assert second.from_cache
    assert second == dataclasses_replace_from_cache(first)
    assert second.metadata == first.metadata
    assert cache.stats.hits == 1
    # A different constexpr is a different key: a miss, so the (broken) compiler is invoked.
    with pytest.raises(AssertionError, match="must not run"):
        build_triton(SRC, "scale", SIG, {"BLOCK": 256}, arch=90, num_warps=4, num_stages=1, cache=cache)


def dataclasses_replace_from_cache(b: object) -> object:
    import dataclasses

    return dataclasses.replace(b, from_cache=True)  # type: ignore[type-var]


def test_corrupt_aot_entry_rebuilds(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    from tilefuse.codegen.aot import build_triton

    cache = BuildCache(tmp_path)
    first = build_triton(SRC, "scale", SIG, {"BLOCK": 64}, arch=80, num_warps=2, num_stages=1, cache=cache)
    entry = _entry(cache, first.key)
    (entry / "kernel.cubin").write_bytes(b"junk")
    again = build_triton(SRC, "scale", SIG, {"BLOCK": 64}, arch=80, num_warps=2, num_stages=1, cache=cache)
    assert not again.from_cache
    assert again.cubin == first.cubin
    assert cache.get(first.key) is not None
    shutil.rmtree(tmp_path)


# ---- settings that drive the cache ---------------------------------------------------------------

def test_settings_defaults_and_xdg(tmp_path: Path) -> None:
    from tilefuse.settings import Settings

    s = Settings.from_env({"HOME": str(tmp_path)})
    assert s.cache_dir == tmp_path / ".cache" / "tilefuse"
    assert s.db_url == f"sqlite:///{tmp_path}/.local/share/tilefuse/tuning.db"
    assert s.no_cache is False and s.triton_interpret is False and s.jobs >= 1
    s = Settings.from_env({"HOME": str(tmp_path), "XDG_CACHE_HOME": "/x/cache", "XDG_DATA_HOME": "/x/data",
                           "TILEFUSE_JOBS": "3", "TILEFUSE_NO_CACHE": "1", "TRITON_INTERPRET": "1"})
    assert s.cache_dir == Path("/x/cache/tilefuse")
    assert s.db_url == "sqlite:////x/data/tilefuse/tuning.db"
    assert (s.jobs, s.no_cache, s.triton_interpret) == (3, True, True)
    s = Settings.from_env({"TILEFUSE_CACHE_DIR": "/c", "TILEFUSE_DB": "postgresql://h/db"})
    assert (s.cache_dir, s.db_url) == (Path("/c"), "postgresql://h/db")


@pytest.mark.parametrize("var,value", [("TILEFUSE_JOBS", "0"), ("TILEFUSE_JOBS", "many"),
                                       ("TILEFUSE_NO_CACHE", "maybe"), ("TRITON_INTERPRET", "2"),
                                       ("TILEFUSE_DB", "tuning")])
def test_settings_reject_bad_values(var: str, value: str) -> None:
    from tilefuse.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """Reports, exports, models and bundles are shared files: not the temp file's owner-only 0600."""
    from tilefuse.fileio import write_atomic

    mask = os.umask(0o022)
    try:
        new = tmp_path / "report.json"
        write_atomic(new, "{}")
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        write_atomic(kept, b"new")
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() == b"new"
    finally:
        os.umask(mask)
