"""Launch plans: the ordered launches that run one kernel under one config.

A kernel is one generated module that may hold several jitted functions (a split-K GEMM and its
finishing reduction; a counting sort's count, scan and scatter). `KernelSpec.launch_plan` says, once,
which functions run in which order, on which grid, with which arguments (by role: the kernel's
inputs and outputs, auxiliary tensors the family builds at launch, workspace buffers), constexprs and
launch options. The AOT build, the executors, the tuning runner's builds and measurements and the
bundle manifest all read the plan instead of re-deriving it.

A launch may be a host step (`Launch.host`): a plain Python function of the kernel's module, called
with the launch's arguments between device launches, for what no device function does yet (the
splatting rasterizer's key sort calls torch.sort). Host steps have no grid, are never built into
binaries (`functions()` leaves them out) and are marked `"host": true` in the manifest: a runtime
without Python must provide them itself.

Workspaces sized at run time (`Readback`): a plan may read one device scalar back to the host after a
launch (the splatting binning's intersection count, offsets[N] after the scan, as gsplat reads its
cumsum's last element) and allocate the workspaces whose `sized_by` names it only then, with that many
leading elements; launches whose `grid_by` names it get their grid from it too. The declared shape and
grid stay the verified worst case (the bound every read value is checked against, what AOT builds and
exports see); `LaunchPlan.at(values)` gives the plan with the run-time sizes. Until then the executors
bind a `Pending` for each such workspace, which the launcher replaces after the readback.

This module sits below codegen and kernels so that every one of them may import it; it knows nothing
of torch (binding values to arguments takes whatever objects the caller allocated)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import TilefuseError
from ..ir.limits import check_grid
from ..ir import dtypes as dt

ROLES = ("input", "output", "size", "aux", "workspace")


class LaunchPlanError(TilefuseError, ValueError):
    """A launch plan that contradicts itself (an argument no buffer backs, a function built twice
    with different options); the message names the kernel and the launch."""


def jit_kwargs(constexprs: Mapping[str, Any], options: Mapping[str, int], interpret: bool) -> dict[str, Any]:
    """Keyword arguments of a Triton JIT call: the constexprs, plus the launch options (num_warps,
    num_stages) except under the interpreter, which does not take them."""
    return dict(constexprs) if interpret else {**constexprs, **options}


@dataclass(frozen=True)
class Arg:
    """One argument: its parameter name in the generated source, what backs it (`role` and `index`: the
    kernel's index-th input, output, auxiliary tensor or workspace; or, for role "size", a dynamic size
    passed by value, named like its parameter) and its Triton type ("i32" for a size)."""

    name: str
    role: str
    index: int
    triton_type: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "index": self.index, "type": self.triton_type}


@dataclass(frozen=True)
class Workspace:
    """A scratch buffer the plan's launches share: allocated per run, never an output. `zeroed`
    ones must be filled with zeros before the first launch (atomic counters); others are written
    before they are read, and a poisoned run fills them with garbage to prove it. With `sized_by`
    (a Readback's name), `shape` is the worst case and the run allocates `at(value)` instead."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "f32"  # a tilefuse dtype name
    zeroed: bool = False
    sized_by: str | None = None

    def at(self, value: int) -> Workspace:
        """This workspace with `value` leading elements (at least 1: a buffer is never empty), checked
        against the declared worst case."""
        if not 0 <= value <= int(self.shape[0]):
            raise LaunchPlanError(f"workspace {self.name}: the read-back size {self.sized_by}={value} is outside "
                                  f"0..{self.shape[0]} (the worst case its plan declares)")
        return replace(self, shape=(max(1, value),) + tuple(self.shape[1:]), sized_by=None)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n * dt.dtype(self.dtype).itemsize

    @property
    def triton_type(self) -> str:
        return "*" + dt.triton_sig(dt.dtype(self.dtype))

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "zeroed": self.zeroed,
               "bytes": self.nbytes}
        return {**out, "sized_by": self.sized_by} if self.sized_by else out


@dataclass(frozen=True)
class Readback:
    """One scalar read back to the host after launch `after`: element `index` of workspace `source`,
    named `name` (one small device-to-host copy, a synchronisation on a GPU)."""

    name: str
    after: str
    source: str
    index: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "after": self.after, "source": self.source, "index": self.index}


@dataclass
class Pending:
    """Stands in the bound arguments for a workspace sized by a readback; `make` allocates it (a
    Workspace with its run-time shape -> the buffer), called by the launcher once the value is read."""

    workspace: Workspace
    make: Callable[[Workspace], Any]


@dataclass(frozen=True)
class Launch:
    """One launch: the jitted function `fn` of the kernel's module on `grid`, its arguments in
    parameter order, its constexprs and its launch options; with `host`, a host step instead (see
    the module docstring): `fn(*args)` is called as is and grid, constexprs and options are unused."""

    fn: str
    grid: tuple[int, ...]
    args: tuple[Arg, ...]
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    host: bool = False
    grid_by: tuple[str, int] | None = None  # (readback, elements per program): grid[0] from the value

    def grid_at(self, values: Mapping[str, int]) -> tuple[int, ...]:
        """The grid at the read-back `values`: with grid_by, ceil(value / per) programs (at least 1)
        along x, never more than the declared worst case."""
        if self.grid_by is None or not self.grid:
            return self.grid
        name, per = self.grid_by
        return (min(int(self.grid[0]), max(1, -(-int(values[name]) // per))),) + tuple(self.grid[1:])

    def signature(self) -> dict[str, str]:
        """Triton types of the pointer arguments, in parameter order (for AOT builds)."""
        return {a.name: a.triton_type for a in self.args}

    def options(self) -> dict[str, int]:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}

    def kwargs(self, interpret: bool) -> dict[str, Any]:
        """Keyword arguments of the JIT call (see jit_kwargs). The GPU build workers and the
        measurement launch both take them from here, so both reach the same Triton cache key."""
        return jit_kwargs(self.constexprs, self.options(), interpret)

    def values(self, bound: Mapping[str, Any]) -> list[Any]:
        """The positional arguments of this launch, from argument name -> value (LaunchPlan.bind)."""
        return [bound[a.name] for a in self.args]

    def to_json(self) -> dict[str, Any]:
        out = {"function": self.fn, "grid": list(self.grid), "args": [a.name for a in self.args],
               "constexprs": dict(self.constexprs), "num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.grid_by:
            out["grid_by"] = list(self.grid_by)
        return {**out, "host": True} if self.host else out


@dataclass(frozen=True)
class LaunchPlan:
    """The launches of one kernel under one config, in order, the arguments they take (every
    argument once, in the order the kernel's functions declare them) and the workspaces to allocate.
    `sizes` are the run-time sizes the plan was made for (empty while every shape is static)."""

    kernel: str
    args: tuple[Arg, ...]
    workspaces: tuple[Workspace, ...]
    launches: tuple[Launch, ...]
    sizes: Mapping[str, int] = field(default_factory=dict)
    readbacks: tuple[Readback, ...] = ()

    def __post_init__(self) -> None:
        self.check()
        self.check_readbacks()

    def check_readbacks(self) -> None:
        """LaunchPlanError unless every readback reads a workspace after a device launch of the plan, and
        every workspace and grid sized by one names it and is used only after it."""
        problems, ws = [], {w.name for w in self.workspaces}
        order = {ln.fn: i for i, ln in reversed(list(enumerate(self.launches)))}
        when: dict[str, int] = {}
        for rb in self.readbacks:
            if rb.source not in ws:
                problems.append(f"readback {rb.name} reads {rb.source!r}, not a workspace ({sorted(ws)})")
            if rb.after not in order or self.launches[order[rb.after]].host:
                problems.append(f"readback {rb.name} follows {rb.after!r}, not a device launch of the plan")
            when[rb.name] = order.get(rb.after, len(self.launches))
        sized = {w.name: w.sized_by for w in self.workspaces if w.sized_by}
        problems += [f"workspace {w} is sized by {r!r}, which no readback defines" for w, r in sized.items()
                     if r not in when]
        for i, ln in enumerate(self.launches):
            early = [a.name for a in ln.args if a.name in sized and when.get(sized[a.name], -1) >= i]
            problems += [f"{ln.fn} uses {early} before the readback that sizes them"] if early else []
            if ln.grid_by and when.get(ln.grid_by[0], len(self.launches)) >= i:
                problems.append(f"{ln.fn}: its grid comes from {ln.grid_by[0]!r}, not read back before it")
        if problems:
            raise LaunchPlanError(f"launch plan of {self.kernel}: " + "; ".join(problems))

    def at(self, values: Mapping[str, int]) -> LaunchPlan:
        """The plan at read-back `values` (readback name -> value): sized workspaces and grids resolved."""
        ws = tuple(w.at(int(values[w.sized_by])) if w.sized_by else w for w in self.workspaces)
        lns = tuple(replace(ln, grid=ln.grid_at(values), grid_by=None) for ln in self.launches)
        return replace(self, workspaces=ws, launches=lns, readbacks=())

    def check(self) -> None:
        """LaunchPlanError naming every inconsistency."""
        problems = [] if self.launches else ["no launches"]
        names = {a.name: a for a in self.args}
        if len(names) != len(self.args):
            problems.append(f"argument names repeat: {[a.name for a in self.args]}")
        ws = [w.name for w in self.workspaces]
        for a in self.args:
            if a.role not in ROLES:
                problems.append(f"argument {a.name}: role {a.role!r} is not one of {list(ROLES)}")
            elif a.role == "workspace" and (a.index >= len(ws) or ws[a.index] != a.name):
                problems.append(f"argument {a.name}: no workspace {a.name!r} at index {a.index} (workspaces {ws})")
        built: dict[str, Launch] = {}
        for ln in self.launches:
            problems += [f"{ln.fn}: argument {a.name} is not one of the plan's arguments"
                         for a in ln.args if names.get(a.name) != a]
            first = built.setdefault(ln.fn, ln)
            if (first.signature(), dict(first.constexprs), first.options(), first.host) != \
                    (ln.signature(), dict(ln.constexprs), ln.options(), ln.host):
                problems.append(f"{ln.fn} is launched twice with different arguments, constexprs or options "
                                "(one function is one binary)")
        if not any(not ln.host for ln in self.launches) and self.launches:
            problems.append("only host steps (a kernel launches at least one device function)")
        if problems:
            raise LaunchPlanError(f"launch plan of {self.kernel}: " + "; ".join(problems))
        for ln in self.launches:  # a grid CUDA refuses is a LimitError naming the launch, before any build
            check_grid(ln.grid, ln.fn)  # the function name starts with the kernel name

    def functions(self) -> list[str]:
        """Each jitted function the plan launches, once, in first-launch order (one binary each);
        host steps are not among them."""
        return list(dict.fromkeys(ln.fn for ln in self.launches if not ln.host))

    def launch_of(self, fn: str) -> Launch:
        """The (first) launch of function `fn`."""
        for ln in self.launches:
            if ln.fn == fn:
                return ln
        raise LaunchPlanError(f"launch plan of {self.kernel} does not launch {fn!r} (it launches {self.functions()})")

    def scratch_bytes(self) -> int:
        """Bytes of workspace one run needs besides the kernel's inputs and outputs (the worst case
        where workspaces are sized at run time: see `at`)."""
        return sum(w.nbytes for w in self.workspaces)

    def bind(self, inputs: Sequence[Any], outputs: Sequence[Any], aux: Sequence[Any],
             workspaces: Sequence[Any]) -> dict[str, Any]:
        """Argument name -> value, from the values of each role in index order."""
        pools = {"input": inputs, "output": outputs, "aux": aux, "workspace": workspaces}
        out = {}
        for a in self.args:
            if a.role == "size":  # a dynamic size: the value the plan was made for
                if a.name not in self.sizes:
                    raise LaunchPlanError(f"launch plan of {self.kernel}: the dynamic size {a.name} has no value "
                                          f"(the plan was made for sizes {dict(self.sizes)})")
                out[a.name] = int(self.sizes[a.name])
                continue
            pool = pools[a.role]
            if a.index >= len(pool):
                raise LaunchPlanError(f"launch plan of {self.kernel}: argument {a.name} is {a.role} {a.index}, "
                                      f"but {len(pool)} {a.role} values were given")
            out[a.name] = pool[a.index]
        return out

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON data (the bundle manifest's `arguments`, `workspaces` and `launches`)."""
        out = {"arguments": [a.to_json() for a in self.args], "workspaces": [w.to_json() for w in self.workspaces],
               "launches": [ln.to_json() for ln in self.launches]}
        return {**out, "readbacks": [r.to_json() for r in self.readbacks]} if self.readbacks else out
