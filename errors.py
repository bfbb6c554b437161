"""The one base of every error a user can act on (bad input, target, database, model, settings).

The CLI catches `TilefuseError` and prints one `error:` line (exit code 2); anything else is a bug
and keeps its traceback. This module sits below every layer, so each may raise these errors."""

from __future__ import annotations


class TilefuseError(Exception):
    """Base of tilefuse's user-facing errors; the message names the offending input and what is accepted."""


class LoweringError(TilefuseError, NotImplementedError):
    """A construct that no kernel family or backend lowers: names the op, dtype and backend."""


class RuntimeUnavailable(TilefuseError, RuntimeError):
    """A compiled graph that cannot run here (e.g. an sm_90 build on a machine without a GPU)."""


class MissingDependency(TilefuseError, ImportError):
    """An optional dependency that is not installed: names it and the extra (`tilefuse[EXTRA]`) that installs it.

    Also an ImportError, so code that treats a missing optional module as "feature unavailable" keeps working."""

    def __init__(self, message: str, module: str, extra: str | None) -> None:
        super().__init__(message)
        self.name = module
        self.extra = extra
