"""All environment settings of tilefuse, read and validated in one place.

No other module reads ``os.environ`` for tilefuse settings: call :func:`get_settings`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from .errors import TilefuseError

__all__ = ["Settings", "SettingsError", "costmodel_to_load", "database_url", "get_settings", "reload_settings"]

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
SPARSE_CHECKS = ("device", "host", "off")


class SettingsError(TilefuseError, ValueError):
    """An environment variable holds a value tilefuse cannot accept."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed, validated view of the environment variables tilefuse honours."""

    cache_dir: Path
    db_url: str
    model_dir: Path
    no_cache: bool
    jobs: int
    threads: int  # threads a CPU (TVM) kernel runs on; 0 = the backend's default (physical cores)
    triton_interpret: bool
    model_dir_set: bool = False  # TILEFUSE_COSTMODEL named model_dir (not the default place)
    # how run-time sparse structures are validated before a launch (kernels/sparse/common.py):
    # "device" (reductions where the arrays live, one scalar read back), "host" (copies), "off"
    sparse_check: str = "device"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: ``os.environ``), raising SettingsError on bad values."""
        env = os.environ if env is None else env
        return cls(
            cache_dir=_cache_dir(env),
            db_url=_db_url(env),
            model_dir=_model_dir(env),
            no_cache=_bool(env, "TILEFUSE_NO_CACHE"),
            jobs=_jobs(env),
            threads=_count(env, "TILEFUSE_THREADS") if env.get("TILEFUSE_THREADS", "").strip() else 0,
            triton_interpret=_bool(env, "TRITON_INTERPRET"),
            model_dir_set=bool(env.get("TILEFUSE_COSTMODEL", "").strip()),
            sparse_check=_choice(env, "TILEFUSE_SPARSE_CHECK", SPARSE_CHECKS),
        )


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var, "")
    if value:
        path = Path(value).expanduser()
        # The XDG spec says relative paths are invalid and must be ignored.
        if path.is_absolute():
            return path
    return _home(env) / fallback


def _cache_dir(env: Mapping[str, str]) -> Path:
    value = env.get("TILEFUSE_CACHE_DIR", "")
    if value:
        return Path(value).expanduser()
    return _xdg(env, "XDG_CACHE_HOME", ".cache") / "tilefuse"


def database_url(value: str, name: str = "") -> str:
    """The SQLAlchemy URL meant by a tuning-database setting (TILEFUSE_DB, any command's --db): a URL
    as is, or a bare path to a SQLite file (one with a directory part or a .db/.sqlite suffix).
    SettingsError, naming `name` when given, for anything else."""
    value = value.strip()
    if "://" in value:
        return value
    if value.endswith((".db", ".sqlite", ".sqlite3")) or os.sep in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    raise SettingsError(
        f"{name + '=' if name else ''}{value!r} is not a database URL; accepted: an SQLAlchemy URL such as "
        "'sqlite:///path/tuning.db' or 'postgresql://host/db', or a path to a .db/.sqlite file"
    )


def _db_url(env: Mapping[str, str]) -> str:
    value = env.get("TILEFUSE_DB", "").strip()
    if not value:
        path = _xdg(env, "XDG_DATA_HOME", ".local/share") / "tilefuse" / "tuning.db"
        return f"sqlite:///{path}"
    return database_url(value, "TILEFUSE_DB")


def _model_dir(env: Mapping[str, str]) -> Path:
    """Where `tilefuse costmodel train` saves the model (unless --out says elsewhere) and where
    `tilefuse compile` / `tilefuse.compile` look for one."""
    value = env.get("TILEFUSE_COSTMODEL", "").strip()
    if value:
        return Path(value).expanduser()
    return _xdg(env, "XDG_DATA_HOME", ".local/share") / "tilefuse" / "costmodel"


_warned_model_dirs: set[Path] = set()


def costmodel_to_load(settings: Settings) -> Path | None:
    """The cost-model directory `compile` loads by default: `settings.model_dir` when it holds a saved
    model (meta.json), else None. Nothing there is normal at the default place (no model trained yet);
    a TILEFUSE_COSTMODEL that names a missing path, a file or a directory without a model is a mistake
    the user should hear of, once per path and process (a warning: the setting stays usable as the
    place `costmodel train` saves to)."""
    path = settings.model_dir
    if (path / "meta.json").is_file():
        return path
    if settings.model_dir_set and path not in _warned_model_dirs:
        _warned_model_dirs.add(path)
        what = ("does not exist" if not path.exists() else "is a file, not a model directory" if not path.is_dir()
                else "holds no saved cost model (no meta.json)")
        logger.warning("TILEFUSE_COSTMODEL=%s %s; configs are chosen without a cost model. Point it at a "
                       "directory written by `tilefuse costmodel train`, or unset it", path, what)
    return None


def _bool(env: Mapping[str, str], var: str) -> bool:
    value = env.get(var, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{var}={env[var]!r} is not a boolean; accepted: {', '.join(_TRUE + _FALSE[:-1])} or unset")


def _choice(env: Mapping[str, str], var: str, accepted: tuple[str, ...]) -> str:
    """One of `accepted` (the first when unset)."""
    value = env.get(var, "").strip().lower() or accepted[0]
    if value not in accepted:
        raise SettingsError(f"{var}={env[var]!r} is invalid; accepted: {', '.join(accepted)} (default {accepted[0]})")
    return value


def _jobs(env: Mapping[str, str]) -> int:
    return _count(env, "TILEFUSE_JOBS")


def _count(env: Mapping[str, str], var: str) -> int:
    """A positive integer setting that defaults to the number of CPUs this process may use."""
    value = env.get(var, "").strip()
    if not value:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SettingsError(f"{var}={value!r} is invalid; accepted: a positive integer, or unset for the CPU count")
    return n


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment once."""
    return Settings.from_env()


def reload_settings() -> Settings:
    """Forget the cached settings and re-read the environment (for tests and long-lived tools)."""
    get_settings.cache_clear()
    return get_settings()
