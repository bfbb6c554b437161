"""The comment block that opens every generated source file (Triton, TVM): kernel, family, workload
key and config, so a reader of the source knows what produced it."""

from __future__ import annotations

from typing import Any

from ..schedule.config import Config


def header(spec: Any, config: Config, backend: str) -> str:
    """The header of `spec`'s source (anything with `name`, `family` and `key`) under `config`."""
    return (f"# tilefuse generated {backend} kernel: {spec.name}\n"
            f"# family: {spec.family}   workload: {getattr(spec, 'code_key', spec.key)[:16]}\n"
            f"# config: {config.to_json()}\n")
