"""What every kernel family provides: a lowered program, its knob space, the constraints that make
a Config legal on a target, the launch grid, a default Config per arch, and rendering."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import TilefuseError
from ..ir import dims
from ..ir import dtypes as dt
from ..schedule.config import Config, sha256_json
from ..schedule.launch import Arg, Launch, LaunchPlan, Readback, Workspace
from ..schedule.target import Target
from ..ir.dtypes import DType
from ..ir.ops import Node, Op
from ..ir.text import format_expr
from ..passes.partition import Buffer, Kernel, KernelGraph
from . import registry
from .lowering import GroupLowering, LoadSite, LoweringError

SCHEMA_VERSION = 1
BASE_REGISTERS = 32  # registers every GPU thread holds besides its tiles: addresses, loop counters


class ConfigRejected(TilefuseError, ValueError):
    """A Config that breaks the kernel's constraints on a target; lists every violation."""


class StaticSizeRequired(LoweringError):
    """A dynamic size where a kernel family's template needs a static one (no fallback): names the
    kernel, the operand or loop and the dynamic parameters."""


class KernelSpec:
    """A fused kernel: signature, knobs, constraints, grid, features and renderers."""

    family = "base"  # the name the family registers under, stored in tuning records
    # The backends whose templates take this family's dynamic sizes as run-time arguments. A family opts in:
    # elsewhere a kernel with a dynamic size is refused when its spec is made (spec_for), naming the operand.
    dynamic_backends: frozenset[str] = frozenset()

    # The size bucket ((param, lo, hi), ...) a dynamic kernel's config was chosen for: part of `key`
    # (tuning records are per bucket), not of `code_key` (one binary serves every bucket of a config).
    bucket: tuple[tuple[str, int, int], ...] | None = None

    def __init__(self, kg: KernelGraph, kernel: Kernel):
        self.kg = kg
        self.kernel = kernel
        self.name = kernel.name
        self.lowering = GroupLowering(kg, kernel)

    def anchor_node(self, op: Op) -> Node:
        """The kernel group's anchor, which must be an `op` node (a LoweringError naming both otherwise)."""
        node = self.kernel.group.anchor
        if node is None or node.op is not op:
            got = "none" if node is None else node.op.value
            raise LoweringError(f"{self.name}: the {self.family} family lowers groups anchored by {op.value}, "
                                f"got {got}")
        return node

    # -- signature --
    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return self.kernel.inputs

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return self.kernel.outputs

    @property
    def loads(self) -> list[LoadSite]:
        return self.lowering.loads

    def arg_names(self) -> list[str]:
        """Kernel arguments in order: input and output pointers, then the dynamic sizes by value."""
        return [f"in{i}" for i in range(len(self.inputs))] + [f"out{i}" for i in range(len(self.outputs))] + \
            self.size_params()

    def require_static(self, size: Any, what: str, backend: str) -> int:
        """`size` as an int, or StaticSizeRequired when it is dynamic (the template has no fallback)."""
        if dims.is_dynamic(size):
            names = ", ".join(size.names)
            raise StaticSizeRequired(f"{self.name} ({self.family}, {backend}): {what} is {size}, which depends on "
                                     f"the dynamic parameter {names}; this template needs it static (declare "
                                     f"{names} static, or bind it at parse time with --set / sizes=)")
        return int(size)

    def refuse_dynamic(self, backend: str) -> None:
        """StaticSizeRequired when a size of this kernel is dynamic and the family's `backend` template does
        not take dynamic sizes: names the first operand with a dynamic dimension and its parameters."""
        if backend in self.dynamic_backends or not self.size_params():
            return
        tagged = [("input", b) for b in self.inputs] + [("output", b) for b in self.outputs]
        role, b = next(((r, b) for r, b in tagged if any(dims.is_dynamic(d) for d in b.shape)),
                       ("view", self.inputs[0]))  # else only a view's stride or offset reads the parameter
        names = ", ".join(sorted({n for d in b.shape if dims.is_dynamic(d) for n in d.names})
                          or self.size_params())
        where = ", ".join(sorted(self.dynamic_backends)) or "none"
        raise StaticSizeRequired(f"{self.name} ({self.family}, {backend}): {role} {b.name} {list(b.shape)} depends "
                                 f"on the dynamic parameter {names}; the {self.family} family's {backend} template "
                                 f"takes static sizes only (dynamic sizes: {where}); declare {names} static, or bind "
                                 f"it with --set / sizes=")

    def bound_sizes(self) -> dict[str, int]:
        """The value each dynamic size is bound to in this spec (its bucket's upper end while compiling or
        tuning): what a launch plan, a build or a measurement uses when no run-time sizes are given."""
        out: dict[str, int] = {}
        for b in self.inputs + self.outputs:
            for d in b.shape:
                if dims.is_dynamic(d):
                    out.update(d.env)
        return dict(sorted(out.items()))

    def size_params(self) -> list[str]:
        """The dynamic parameters this kernel's sizes read, sorted (empty for a static kernel): each is
        a run-time argument, so the code serves every value in range."""
        shapes = [b.shape for b in self.inputs + self.outputs]
        shapes += [ld.view.shape + ld.view.strides + (ld.view.offset,) for ld in self.loads]
        return sorted(dims.params_of(shapes))

    # -- identity --
    def describe(self) -> dict[str, Any]:
        """Everything that determines the kernel's code, as JSON data (the workload); a dynamic
        kernel's sizes are expressions ("dyn:T") and its parameters' ranges are part of it."""
        out = {
            "schema": SCHEMA_VERSION,
            "family": self.family,
            "inputs": [[b.dtype.name, list(b.shape)] for b in self.inputs],
            "outputs": [[b.dtype.name, list(b.shape)] for b in self.outputs],
            "loads": [[ld.buffer, ld.dtype.name, list(ld.view.shape), list(ld.view.strides), ld.view.offset]
                      for ld in self.loads],
            "program": self.program_description(),
        }
        params = dims.params_of(b.shape for b in self.inputs + self.outputs)
        if params:
            out["dynamic"] = {k: [p.lo, p.hi] for k, p in sorted(params.items())}
        return out

    def program_description(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def code_key(self) -> str:
        """sha256 of the canonical JSON workload description: what one binary serves."""
        return sha256_json(self.describe())

    @property
    def key(self) -> str:
        """The workload key of tuning records: `code_key`, and for a dynamic kernel also its size bucket."""
        if self.bucket is None:
            return self.code_key
        return sha256_json({**self.describe(), "bucket": [list(b) for b in self.bucket]})

    # -- schedule --
    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        raise NotImplementedError

    def constraints(self, config: Config, target: Target) -> list[str]:
        """Reasons `config` is illegal on `target` (empty when legal)."""
        raise NotImplementedError

    def default_config(self, target: Target) -> Config:
        raise NotImplementedError

    def check_problems(self, config: Config, target: Target) -> list[str]:
        """Every reason `config` is not a legal config of this kernel on `target`."""
        space = self.knob_space(target)
        missing = sorted(set(space) - set(config))
        extra = sorted(set(config) - set(space))
        problems = [f"missing knob {k}" for k in missing] + [f"unknown knob {k}" for k in extra]
        if not problems:
            problems = [f"{k}={config[k]!r} is not one of {list(space[k])}" for k in sorted(space)
                        if config[k] not in space[k] and not isinstance(config[k], bool)]
        return problems or self.constraints(config, target)

    def check(self, config: Config, target: Target) -> Config:
        """Raise ConfigRejected naming every violated constraint; return the config otherwise."""
        problems = self.check_problems(config, target)
        if problems:
            raise ConfigRejected(f"{self.name}: config {config.to_json()} rejected on {target.name}: "
                                 + "; ".join(problems))
        return config

    def grid(self, config: Config) -> tuple[int, int, int]:
        raise NotImplementedError

    # -- cost estimates: all that costmodel/features.py reads from a spec --
    # Every family implements the ones that raise NotImplementedError; the others have defaults that
    # hold for a kernel of one launch whose programs share the work evenly. All are plain numbers
    # (bytes, FLOPs, registers) so that the cost model never needs to know a family's attributes.
    def flops(self) -> float:
        """Useful arithmetic operations of one run (config-independent): 2 per multiply-add."""
        raise NotImplementedError

    def bytes_moved(self) -> float:
        """The fewest bytes the kernel must move: each input read once, each output written once."""
        return float(sum(b.numel * b.dtype.itemsize for b in self.inputs + self.outputs))

    def mma_dtype(self) -> DType | None:
        """The operand dtype of the kernel's matrix multiplies (16-bit or narrower: the tensor-core
        peak bounds it), or None for a kernel without any (the f32 peak bounds it)."""
        raise NotImplementedError

    def family_features(self, config: Config) -> dict[str, float]:
        """The family's own named numbers for `config` (sizes, sparsity, bits, ...): the cost model
        stores each as spec_<name>. Names are stable: a family adds names, it never reuses one with
        another meaning (that needs a FEATURE_SCHEMA bump)."""
        raise NotImplementedError

    def features(self, config: Config) -> dict[str, float]:
        """The numbers every family has (programs, flops, bytes) plus its `family_features`."""
        gx, gy, gz = self.grid(config)
        out = {"programs": float(gx * gy * gz), "flops": self.flops(), "bytes": self.bytes_moved()}
        own = self.family_features(config)
        clash = sorted(k for k in own if k in out or k.startswith("knob_") or not k.isidentifier())
        if clash:
            raise ValueError(f"{self.family}: family_features names {clash} clash with the common features "
                             f"{sorted(out)}, a knob_ name, or are not identifiers")
        return {**out, **own}

    def tile_traffic(self, config: Config) -> tuple[float, float]:
        """(tiles, bytes each tile reads and writes when tiles share nothing through the cache); by
        default the launch's programs, each moving an equal share of bytes_moved()."""
        gx, gy, gz = self.grid(config)
        programs = float(max(1, gx * gy * gz))
        return programs, max(1.0, self.bytes_moved()) / programs

    def work_ratio(self, config: Config) -> float:
        """Work done over useful work (padding to whole tiles that the template computes); 1 = none."""
        return 1.0

    def parallel_tasks(self, config: Config) -> float:
        """Independent work items a launch spreads over the device's units: the grid's programs by
        default; a CPU template whose one call runs a parallel loop returns that loop's trip count."""
        gx, gy, gz = self.grid(config)
        return float(max(1, gx * gy * gz))

    def threads_per_program(self, config: Config) -> int | None:
        """GPU threads per program (32 x num_warps); None for a config without num_warps (CPU)."""
        warps = config.get("num_warps")
        return 32 * int(warps) if isinstance(warps, (int, float)) and not isinstance(warps, bool) else None

    def shared_bytes(self, config: Config) -> float:
        """Shared memory one program of a GPU `config` uses, in bytes (0 for CPU configs)."""
        raise NotImplementedError

    def registers_per_thread(self, config: Config, target: Target) -> float:
        """Estimated 32-bit registers per thread that a GPU `config` needs on `target` (a need: above
        the hardware's 255 the excess spills). Where the family's constraints estimate registers
        (attention, decode), it is that estimate, not a second one."""
        raise NotImplementedError

    # -- rendering --
    @property
    def backends(self) -> frozenset[str]:
        """The backends this kernel's family registered a template for."""
        return registry.family(self.family).backends

    def template(self, backend: str) -> Any:
        """The family's registered template module for `backend` (LoweringError when it has none)."""
        return registry.template(self.family, backend)

    def render_triton(self, config: Config, interpret: bool = False) -> str:
        """Triton source from the family's registered template; `interpret` targets the Triton
        interpreter (CPU)."""
        return str(self.template("triton").render(self, config, interpret))

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        """The constexpr arguments of the rendered Triton kernel."""
        raise NotImplementedError

    def launch_options(self, config: Config) -> dict[str, int]:
        return {"num_warps": config.int("num_warps"), "num_stages": config.int("num_stages")}

    def report_lines(self, config: Config) -> list[str]:
        """Extra compile-report lines (e.g. block-sparsity counts)."""
        return []

    # -- run-time input checks --
    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """Raise a TilefuseError when the kernel's input arrays (numpy arrays or torch tensors, in
        `inputs` order) hold values its launches cannot take safely (a sparse structure whose indices
        would address outside a buffer). The executors call it before each kernel's launches; shapes
        and dtypes are checked earlier (codegen/input_check.py). By default nothing is checked."""
        return None

    # -- launch plan (families override aux_signature/aux_args, workspaces and launches) --
    def aux_signature(self, config: Config) -> dict[str, str]:
        """Triton types of auxiliary tensors the family computes (e.g. attention block lists)."""
        return {}

    def aux_args(self, config: Config, inputs: list[Any], device: Any) -> list[Any]:
        """The auxiliary tensors themselves, in aux_signature order."""
        return []

    def host_aux(self, config: Config, inputs: Sequence[Any], sizes: Mapping[str, int] | None = None) -> list[Any]:
        """Auxiliary int32 numpy arrays a CPU (TVM) kernel takes after its outputs, for a call on `inputs` (numpy
        arrays) at `sizes` (e.g. attention's block lists); none by default."""
        return []

    def constant_aux(self, config: Config) -> list[Any] | None:
        """The auxiliary tensors as numpy arrays (aux_signature order) when they are compile-time
        constants, which an export bundle stores; None when a launch computes them from its inputs.
        A family with auxiliary tensors overrides it; with none there is nothing to store."""
        return [] if not self.aux_signature(config) else None

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        """Scratch buffers the kernel's launches share (e.g. split-K partial sums); none by default."""
        return []

    def readbacks(self, config: Config) -> list[Readback]:
        """Device scalars read back between launches to size later workspaces and grids (the splatting
        binning's intersection count, schedule/launch.py Readback); none by default."""
        return []

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        """The launches in order; by default one launch of `{name}` on grid(config) with every argument."""
        return [self.launch(self.name, self.grid(config), config, args)]

    def launch(self, fn: str, grid: tuple[int, ...], config: Config, args: tuple[Arg, ...],
               constexprs: Mapping[str, Any] | None = None) -> Launch:
        """One launch of `fn` with the config's constexprs (unless given) and launch options."""
        opts = self.launch_options(config)
        cex = self.triton_constexprs(config) if constexprs is None else constexprs
        return Launch(fn, tuple(grid), tuple(args), dict(cex), opts["num_warps"], opts["num_stages"])

    def launch_plan(self, config: Config, sizes: Mapping[str, int] | None = None) -> LaunchPlan:
        """The ordered launches of this kernel under `config`, their arguments (inputs, outputs, dynamic
        sizes, aux tensors, workspaces, in that order) and the workspaces to allocate. `sizes` are the
        run-time values of the dynamic parameters: grids and workspace shapes are evaluated at them
        (without them, at the spec's own binding: bound_sizes)."""
        if sizes is None and self.size_params():
            sizes = self.bound_sizes()
        ws = tuple(self.workspaces(config, sizes))
        names, n_in = self.arg_names(), len(self.inputs)
        args = [Arg(name, "input", i, "*" + dt.triton_sig(b.dtype)) for i, (name, b) in
                enumerate(zip(names[:n_in], self.inputs))]
        args += [Arg(name, "output", i, "*" + dt.triton_sig(b.dtype)) for i, (name, b) in
                 enumerate(zip(names[n_in:], self.outputs))]
        args += [Arg(name, "size", i, "i32") for i, name in enumerate(self.size_params())]
        args += [Arg(name, "aux", i, ty) for i, (name, ty) in enumerate(self.aux_signature(config).items())]
        args += [Arg(w.name, "workspace", i, w.triton_type) for i, w in enumerate(ws)]
        launches = self.launches(config, tuple(args), sizes)
        if sizes:
            ws = tuple(replace(w, shape=dims.resolve(tuple(w.shape), sizes)) for w in ws)
            launches = [replace(ln, grid=dims.resolve(tuple(ln.grid), sizes)) for ln in launches]
        return LaunchPlan(self.name, tuple(args), ws, tuple(launches), dict(sizes or {}), tuple(self.readbacks(config)))

    def summary(self) -> str:
        """The ops this kernel fuses, one per line, for reports."""
        lines = []
        for n in self.kernel.group.nodes:
            role = "anchor" if n is self.kernel.group.anchor else \
                "prologue" if any(p is n for p in self.kernel.group.prologue) else "member"
            detail = format_expr(n.attr("expr")) if n.attr("expr") is not None else n.op.value
            lines.append(f"{role}: {detail}")
        return "\n".join(lines)

