"""The sparse family's TVM (CPU) template: one builder per format of the sparse operand."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schedule.config import Config
from . import tvm_24, tvm_bsr, tvm_csr
from .tvm_common import arg_shapes

if TYPE_CHECKING:
    import tvm

    from .spec import SpmmSpec

BUILDERS = {"csr": tvm_csr.build_module, "bsr": tvm_bsr.build_module, "2:4": tvm_24.build_module}


def build_module(spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The TIR module of an SpMM kernel for the format of its sparse operand."""
    return BUILDERS[spec.format](spec, config)


def schedule(mod: tvm.IRModule, spec: SpmmSpec, config: Config) -> tvm.IRModule:
    """The loop nests are built scheduled (parallel tasks, vector accumulators): nothing to add."""
    return mod


__all__ = ["arg_shapes", "build_module", "schedule"]
