"""What a bundle launches, per GPU architecture: the launch list and the workspace layout.

Both come from each kernel's `KernelSpec.launch_plan(config)`, the one description of a kernel's
launches that the AOT build, the executors and the tuner also read; here each plan argument is
resolved to a graph input, a graph output or an offset into the bundle's one workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TilefuseError
from ..ir import dtypes as dt

ALIGN = 256  # every workspace region starts on a 256-byte boundary (cudaMalloc's alignment)


class ExportError(TilefuseError, ValueError):
    """A graph, kernel or bundle that cannot be exported or loaded; the message names it and why."""


@dataclass(frozen=True)
class Arg:
    """One pointer argument: where it points (a graph input or output by index, or a workspace offset)."""

    name: str
    role: str  # "input" | "output" | "workspace" | "constant" | "size" (a dynamic size, passed as an int32)
    index: int  # input/output/constant/size index; the byte offset into the workspace for role "workspace"
    what: str  # the buffer name, "<kernel>.ws" for a kernel's own scratch, "<kernel>.<aux>" for a constant


@dataclass(frozen=True)
class Launch:
    """One kernel launch of the bundle, in order."""

    kernel: str
    function: str
    grid: tuple[Any, Any, Any]  # ints; a dynamic graph's as size programs (export/dyn.py)
    args: tuple[Arg, ...]
    num_warps: int
    num_stages: int
    binary: Any  # codegen.aot.TritonBinary
    zero: tuple[tuple[int, int], ...] = ()  # (workspace offset, bytes) zero-filled before this launch
    image: str = ""  # the stem of its cubin and PTX files (default: the function's name)


@dataclass(frozen=True)
class Constant:
    """An auxiliary tensor that is a compile-time constant (attention's block lists): stored in the
    bundle, uploaded to the device once at load."""

    kernel: str
    name: str
    dtype: str
    data: Any  # a C-contiguous numpy array

    @property
    def what(self) -> str:
        return f"{self.kernel}.{self.name}"


@dataclass(frozen=True)
class Region:
    """A workspace region: a temporary between kernels or a kernel's scratch."""

    what: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    zeroed: bool = False  # filled with zeros before the kernel's first launch (atomic counters)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def workspace_layout(cg: Any, scratch: bool = True, sizes: dict[str, int] | None = None) -> list[Region]:
    """Every temporary buffer and (with `scratch`: GPU launch plans) every kernel's scratch `ws`, each at
    an aligned offset (no reuse); dynamic sizes are taken at `sizes` (a layout for the largest serves
    every smaller one)."""
    from ..ir.dims import resolve

    regions: list[Region] = []
    offset = 0
    for ck in cg.kernels:
        items = [(b.name, b.dtype, tuple(b.shape), False) for b in ck.spec.outputs if b.role == "temp"]
        items += [(f"{ck.spec.name}.{w.name}", dt.dtype(w.dtype), tuple(w.shape), w.zeroed)
                  for w in (ck.spec.launch_plan(ck.config, sizes or None).workspaces if scratch else ())]
        for what, dtype, shape, zeroed in items:
            shape = resolve(shape, sizes) if sizes else shape
            nbytes = max(1, _numel(shape)) * dtype.itemsize
            regions.append(Region(what, dtype.name, shape, offset, nbytes, zeroed))
            offset += _align(nbytes)
    return regions


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def buffer_places(cg: Any, regions: list[Region]) -> dict[str, tuple[str, int]]:
    """Buffer name -> (role, index or workspace offset)."""
    where: dict[str, tuple[str, int]] = {n.attr("name"): ("input", i) for i, n in enumerate(cg.graph.inputs)}
    for j, (name, buf) in enumerate(cg.pipeline.kernels.outputs):
        if buf.name in where:
            raise ExportError(f"graph {cg.graph.name}: output {name!r} is the buffer {buf.name!r}, which is also an "
                              "input or another output; a bundle needs every output written by a kernel")
        where[buf.name] = ("output", j)
    for r in regions:
        where[r.what] = ("workspace", r.offset)
    return where


def check_expressible(cg: Any) -> None:
    """Refuse kernels whose launch needs more than inputs, outputs, workspace offsets and constants:
    auxiliary tensors computed at launch time from the inputs (a data-dependent attention mask) and
    host steps (a sort on the host)."""
    for ck in cg.kernels:
        plan = ck.spec.launch_plan(ck.config)
        aux = sorted(a.name for a in plan.args if a.role == "aux")
        host = [ln.fn for ln in plan.launches if ln.host]
        if aux and ck.spec.constant_aux(ck.config) is None:
            raise ExportError(f"kernel {ck.spec.name} ({ck.spec.family}) computes its auxiliary tensors {aux} from "
                              "its inputs at launch time (a data-dependent mask); a bundle stores only constant ones")
        if plan.readbacks:
            sized = [w.name for w in plan.workspaces if w.sized_by]
            raise ExportError(f"kernel {ck.spec.name} ({ck.spec.family}) reads {[r.name for r in plan.readbacks]} back "
                              f"from the device to size its workspaces {sized} at run time; a bundle's workspace is "
                              f"one fixed block (their worst case would be {plan.scratch_bytes()} bytes)"
                              + (f", and it has host steps {host}, which need Python" if host else ""))
        if host:
            raise ExportError(f"kernel {ck.spec.name} ({ck.spec.family}) has host steps {host}, which need Python; "
                              "a bundle launches device code only")


def constants(cg: Any) -> list[Constant]:
    """Every kernel's compile-time auxiliary tensors, in kernel then aux_signature order."""
    out = []
    for ck in cg.kernels:
        arrays = ck.spec.constant_aux(ck.config) or []
        for (name, ty), data in zip(ck.spec.aux_signature(ck.config).items(), arrays):
            want = {"*i32": dt.i32, "*i64": dt.i64}.get(ty)  # index lists
            if want is None or data.dtype != dt.storage_numpy(want) or not data.flags.c_contiguous:
                raise ExportError(f"kernel {ck.spec.name}: constant {name} is a {data.dtype} array for a {ty} "
                                  "parameter; a bundle stores contiguous i32/i64 index lists")
            out.append(Constant(ck.spec.name, name, want.name, data))
    return out


def launch_list(cg: Any, arch: str, sizes: dict[str, int] | None = None, params: tuple[str, ...] = (),
                grids: Any = None) -> list[Launch]:
    """The launches of `cg` (compiled for `arch`) in order, each argument resolved to an input, an output,
    a workspace offset, a constant or (a dynamic graph's bucket: `sizes` its upper ends) a dynamic size by
    its index in `params`; a kernel's zero-filled workspaces are cleared before its first launch.
    `grids(spec, config, plan)` gives a bucket's grids as size programs (static grids: the plan's ints).
    Call check_expressible first."""
    check_expressible(cg)
    regions = workspace_layout(cg, sizes=sizes)
    where = buffer_places(cg, regions)
    where.update({c.what: ("constant", i) for i, c in enumerate(constants(cg))})
    where.update({n: ("size", i) for i, n in enumerate(params)})
    zeroed = {r.what: (r.offset, r.nbytes) for r in regions if r.zeroed}
    out: list[Launch] = []
    for ck in cg.kernels:
        spec = ck.spec
        plan = spec.launch_plan(ck.config, sizes)
        buffers = {"input": [b.name for b in spec.inputs], "output": [b.name for b in spec.outputs],
                   "workspace": [f"{spec.name}.{w.name}" for w in plan.workspaces],
                   "aux": [f"{spec.name}.{n}" for n in spec.aux_signature(ck.config)], "size": spec.size_params()}
        zero = tuple(zeroed[w] for w in buffers["workspace"] if w in zeroed)
        shapes = grids(spec, ck.config, plan) if grids is not None else [ln.grid for ln in plan.launches]
        for i, (ln, shape) in enumerate(zip(plan.launches, shapes)):
            args = tuple(Arg(a.name, *where[buffers[a.role][a.index]], buffers[a.role][a.index]) for a in ln.args)
            grid = tuple(g if isinstance(g, list) else int(g) for g in shape) + (1,) * (3 - len(shape))
            out.append(Launch(spec.name, ln.fn, (grid[0], grid[1], grid[2]), args, ln.num_warps, ln.num_stages,
                              ck.binaries[arch][ln.fn], zero if i == 0 else ()))
    return out


def check_binary(launch: Launch, arch: str) -> None:
    """Refuse a binary whose launch needs more than the C API passes (scratch, clusters, TMA descriptors)."""
    meta = launch.binary.metadata or {}
    problems = []
    for key in ("global_scratch_size", "profile_scratch_size"):
        if int(meta.get(key, 0) or 0) > 0:
            problems.append(f"{key}={meta[key]} (bundles pass null scratch pointers)")
    if int(meta.get("num_ctas", 1) or 1) != 1:
        problems.append(f"num_ctas={meta['num_ctas']} (thread-block clusters)")
    if meta.get("launch_cooperative_grid"):
        problems.append("a cooperative grid launch")
    if meta.get("tensordesc_meta"):
        problems.append("host-side TMA descriptors")
    if problems:
        raise ExportError(f"kernel {launch.function} on {arch} needs " + "; ".join(problems)
                          + ": the exported launcher cannot provide it")
