"""Static resource reports read from a cubin with Triton's bundled cuobjdump (no GPU needed).

Registers, stack and shared memory come from ``cuobjdump --dump-resource-usage``; the
instruction mix comes from the SASS listing of ``cuobjdump --dump-sass``. ptxas's own spill
report is not available after the fact, so a kernel counts as spilling when it has a stack
frame or local-memory loads/stores in its SASS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from ..errors import TilefuseError

__all__ = ["TRACKED_OPCODES", "ResourceReport", "ToolNotFoundError", "ToolError", "find_tool", "parse_resource_usage",
           "parse_sass_mix", "report_from_cubin"]

logger = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 2  # 2: igmma (int8 wgmma) counted
TOOL_TIMEOUT_S = 60.0
# SASS base opcodes counted into the instruction mix (the part before the first '.').
TRACKED_OPCODES = ("HGMMA", "HMMA", "IMMA", "QGMMA", "LDGSTS", "UTMALDG", "LDL", "STL", "FFMA")

# A SASS instruction line: "/*0a40*/   @!P0 HGMMA.64x128x16.F32 ..." (optional predicate guard).
_SASS_LINE = re.compile(r"^\s*/\*[0-9a-fA-F]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
_FUNCTION = re.compile(r"^\s*Function\s+(\S+?)\s*:?\s*$")
_USAGE_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")


class ToolError(TilefuseError, RuntimeError):
    """A CUDA binary tool failed or timed out."""


class ToolNotFoundError(ToolError):
    """Neither Triton's bundled tool nor one on PATH could be found."""


@dataclasses.dataclass(frozen=True)
class ResourceReport:
    """Static resource usage and SASS instruction mix of one kernel."""

    registers: int
    static_shared_bytes: int
    dynamic_shared_bytes: int
    stack_bytes: int
    local_bytes: int
    spill_stores: int
    spill_loads: int
    hgmma: int
    hmma: int
    imma: int
    qgmma: int
    igmma: int
    ldgsts: int
    utmaldg: int
    ldl: int
    stl: int
    ffma: int
    total_instructions: int

    @property
    def shared_bytes(self) -> int:
        """Total shared memory per block: static from the cubin plus dynamic from Triton."""
        return self.static_shared_bytes + self.dynamic_shared_bytes

    @property
    def spills(self) -> bool:
        """Whether registers spill (a stack frame, local memory, or LDL/STL instructions)."""
        return self.stack_bytes > 0 or self.local_bytes > 0 or self.spill_stores > 0 or self.spill_loads > 0

    @property
    def uses_hgmma(self) -> bool:
        """Whether the kernel issues Hopper warpgroup MMA (wgmma) instructions: f16/bf16, fp8 or int8."""
        return self.hgmma > 0 or self.qgmma > 0 or self.igmma > 0

    @property
    def uses_tensor_cores(self) -> bool:
        """Whether the kernel issues any tensor-core MMA instruction (HMMA/IMMA, HGMMA/QGMMA/IGMMA)."""
        return self.hgmma + self.hmma + self.imma + self.qgmma + self.igmma > 0

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a dict of JSON scalars, with a schema version."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["schema"] = REPORT_SCHEMA_VERSION
        return out

    def to_json(self) -> str:
        """Serialise to canonical JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceReport:
        """Inverse of to_dict; raises ValueError on a wrong schema or missing field."""
        if data.get("schema") != REPORT_SCHEMA_VERSION:
            raise ValueError(f"resource report schema {data.get('schema')!r}; accepted: {REPORT_SCHEMA_VERSION}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"resource report is missing fields {missing}")
        return cls(**{n: int(data[n]) for n in names})

    @classmethod
    def from_json(cls, text: str) -> ResourceReport:
        """Inverse of to_json."""
        return cls.from_dict(json.loads(text))


def find_tool(name: str) -> str:
    """Return the path of a CUDA binary tool: Triton's bundled copy first, then PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise ToolNotFoundError(
        f"cannot find {name!r}: looked in triton/backends/nvidia/bin and on PATH; install triton (which bundles "
        f"{name}) or the CUDA toolkit"
    )


def _run_tool(args: list[str], timeout_s: float = TOOL_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{Path(args[0]).name} timed out after {timeout_s:.0f} s on {args[-1]}") from exc
    if proc.returncode != 0:
        raise ToolError(f"{Path(args[0]).name} failed (exit {proc.returncode}) on {args[-1]}: {proc.stderr.strip()}")
    return proc.stdout


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """Parse ``cuobjdump --dump-resource-usage`` output into {function: {"REG": n, "STACK": n, ...}}."""
    result: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _FUNCTION.match(line)
        if match:
            current = match.group(1)
            continue
        if current is not None and "REG:" in line:
            result[current] = {k: int(v) for k, v in _USAGE_FIELD.findall(line)}
            current = None
    return result


def parse_sass_mix(text: str) -> tuple[Counter[str], int]:
    """Count base opcodes in a SASS listing; return (counter of all opcodes, total instructions)."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = _SASS_LINE.match(line)
        if match:
            counts[match.group(1)] += 1
    return counts, sum(counts.values())


def report_from_cubin(cubin: bytes, dynamic_shared: int) -> ResourceReport:
    """Build a ResourceReport for the (single-kernel) `cubin`; `dynamic_shared` comes from Triton metadata."""
    if not cubin:
        raise ValueError("empty cubin: nothing to report")
    cuobjdump = find_tool("cuobjdump")
    with tempfile.TemporaryDirectory(prefix="tilefuse-res-") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage_text = _run_tool([cuobjdump, "--dump-resource-usage", str(path)])
        sass_text = _run_tool([cuobjdump, "--dump-sass", str(path)])
    usage = parse_resource_usage(usage_text)
    if not usage:
        raise ToolError(f"cuobjdump reported no function resource usage:\n{usage_text}")
    # Triton cubins hold one kernel; with helpers present, report the most demanding function.
    registers = max(u.get("REG", 0) for u in usage.values())
    stack = max(u.get("STACK", 0) for u in usage.values())
    static_shared = max(u.get("SHARED", 0) for u in usage.values())
    local = max(u.get("LOCAL", 0) for u in usage.values())
    counts, total = parse_sass_mix(sass_text)
    return ResourceReport(
        registers=registers,
        static_shared_bytes=static_shared,
        dynamic_shared_bytes=int(dynamic_shared),
        stack_bytes=stack,
        local_bytes=local,
        spill_stores=counts["STL"],
        spill_loads=counts["LDL"],
        hgmma=counts["HGMMA"],
        hmma=counts["HMMA"],
        imma=counts["IMMA"],
        qgmma=counts["QGMMA"],
        igmma=counts["IGMMA"],
        ldgsts=counts["LDGSTS"],
        utmaldg=counts["UTMALDG"],
        ldl=counts["LDL"],
        stl=counts["STL"],
        ffma=counts["FFMA"],
        total_instructions=total,
    )
