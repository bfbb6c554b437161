"""Compilation targets and the hardware limits their kernels must respect."""

from __future__ import annotations

from dataclasses import dataclass
from ..errors import TilefuseError


class TargetError(TilefuseError, ValueError):
    """An unknown target name."""


@dataclass(frozen=True)
class Target:
    """Where kernels run: 'cpu' (TVM/LLVM), 'interp' (Triton interpreter) or a CUDA arch."""

    name: str
    kind: str  # "cpu" | "interp" | "cuda"
    arch: int = 0  # compute capability as 80, 90 for cuda targets
    max_shared_bytes: int = 0  # per block, opt-in maximum
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_threads_per_block: int = 1024
    num_sms: int = 0

    @property
    def backend(self) -> str:
        return "tvm" if self.kind == "cpu" else "triton"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def schedule_arch(self) -> int:
        """The arch whose default schedules apply (interp mirrors sm_80 tiles)."""
        return self.arch or (80 if self.kind == "interp" else 0)


TARGETS: dict[str, Target] = {
    "cpu": Target("cpu", "cpu"),
    "interp": Target("interp", "interp", 0, 166912),
    "sm_80": Target("sm_80", "cuda", 80, 166912, num_sms=108),
    "sm_86": Target("sm_86", "cuda", 86, 101376, num_sms=84),
    "sm_89": Target("sm_89", "cuda", 89, 101376, num_sms=128),
    "sm_90": Target("sm_90", "cuda", 90, 232448, num_sms=132),
}


def get_target(name: str | Target) -> Target:
    """Look a target up by name ("cpu", "interp", "sm_80", "sm_90")."""
    if isinstance(name, Target):
        return name
    t = TARGETS.get(name)
    if t is None:
        raise TargetError(f"unknown target {name!r}; accepted: {', '.join(TARGETS)}")
    return t
