"""Schedules: a kernel's Config (knob name -> JSON scalar) and the Target it is built for.

This layer sits below codegen, kernels, costmodel and autotune, so each of them may import it."""

from __future__ import annotations

from .config import Config, ConfigError, sha256_json
from .target import Target, TargetError, get_target

__all__ = ["Config", "ConfigError", "Target", "TargetError", "get_target", "sha256_json"]
