"""The sparse family's Triton template: one renderer per format of the sparse operand."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schedule.config import Config
from . import triton_24, triton_bsr, triton_csr

if TYPE_CHECKING:
    from .spec import SpmmSpec

RENDERERS = {"csr": triton_csr.render, "bsr": triton_bsr.render, "2:4": triton_24.render}


def render(spec: SpmmSpec, config: Config, interpret: bool = False) -> str:
    """Triton source of an SpMM kernel for the format of its sparse operand."""
    return RENDERERS[spec.format](spec, config, interpret)
