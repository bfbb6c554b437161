"""Running a compiled graph: buffers are allocated per call (optionally poisoned) and the
kernels launched in order on the target's runtime (TVM on CPU, Triton interpreter, CUDA)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RuntimeUnavailable
from ..ir import dtypes as dt
from ..ir.dims import resolve
from .tvm_runtime import aligned_empty
from ..schedule.launch import LaunchPlan, Pending, Workspace

if TYPE_CHECKING:
    from ..compiler import CompiledGraph

POISON_INT = -0x5A5A5A5A


def poison_value(d: dt.DType) -> Any:
    """What unwritten outputs hold: NaN for floats, an unlikely pattern for integers."""
    if d.is_float:
        return float("nan")
    if d.is_bool:
        return True
    info = np.iinfo(dt.to_numpy(d))
    return max(info.min, min(info.max, POISON_INT))


def run(cg: CompiledGraph, inputs: dict[str, Any], poison: bool,
        sizes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Execute every kernel of `cg` on `inputs` (name -> array/tensor); returns named outputs. `sizes`
    are the values of the graph's dynamic sizes (buffers are allocated and kernels launched for them)."""
    if cg.target.kind == "cpu":
        return _run_numpy(cg, inputs, poison, dict(sizes or {}))
    return _run_torch(cg, inputs, poison, dict(sizes or {}))


# ---- CPU (TVM) ---------------------------------------------------------------------------
def _run_numpy(cg: CompiledGraph, inputs: dict[str, Any], poison: bool, sizes: dict[str, int]) -> dict[str, Any]:
    bufs: dict[str, np.ndarray] = {}
    for n in cg.graph.inputs:
        x = inputs[n.attr("name")]
        if hasattr(x, "detach"):
            x = x.detach().cpu()
            x = x.float().numpy() if n.dtype in (dt.bf16, dt.f8e4m3, dt.f8e5m2) else x.numpy()
        bufs[n.attr("name")] = np.ascontiguousarray(np.asarray(x).astype(dt.storage_numpy(n.dtype), copy=False))
    for ck in cg.kernels:
        outs = []
        for b in ck.spec.outputs:
            # aligned, so the kernel writes it in place and the next kernel reads it without a copy
            arr = aligned_empty(resolve(tuple(b.shape), sizes), dt.storage_numpy(b.dtype))
            if poison:
                arr.fill(poison_value(b.dtype))
            bufs[b.name] = arr
            outs.append(arr)
        ins = [bufs[b.name] for b in ck.spec.inputs]
        ck.spec.check_inputs(ins)
        ck.runner(ins, outs, sizes=sizes)
    return {name: bufs[b.name] for name, b in cg.pipeline.kernels.outputs}


# ---- Triton (interpreter or CUDA) ----------------------------------------------------------
def torch_input(name: str, x: Any, d: dt.DType, device: str) -> Any:
    """Input `name` (an array or a tensor of dtype `d`) as a contiguous torch tensor on `device`."""
    import torch

    want = dt.to_torch(d)
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32 if d == dt.bf16 else dt.to_numpy(d))))
    elif x.dtype != want:
        raise TypeError(f"input {name}: expected a {want} tensor for dtype {d}, got {x.dtype}")
    return x.to(device=device, dtype=want).contiguous()


def _alloc(shape: tuple[int, ...], d: dt.DType, device: str, poison: bool) -> Any:
    import torch

    t = torch.empty(shape, dtype=dt.to_torch(d), device=device)
    if poison:
        t.fill_(poison_value(d))
    return t


def workspace_tensor(w: Workspace, device: str, poison: bool) -> Any:
    """A fresh tensor for workspace `w`: zeros where the plan asks for them, else uninitialised (or
    poisoned, so a launch that reads scratch nobody wrote cannot pass a comparison)."""
    import torch

    d = dt.dtype(w.dtype)
    if w.zeroed:
        return torch.zeros(w.shape, dtype=dt.to_torch(d), device=device)
    return _alloc(w.shape, d, device, poison)


def plan_arguments(spec: Any, config: Any, plan: LaunchPlan, inputs: list[Any], outputs: list[Any], device: str,
                   poison: bool = False) -> dict[str, Any]:
    """Argument name -> tensor for every launch of `plan`: the kernel's input and output tensors, the
    auxiliary tensors its family builds for these inputs (spec.aux_args) and fresh workspaces; a
    workspace sized by a readback is a Pending the launcher allocates once the value is read."""
    aux = spec.aux_args(config, list(inputs), device)

    def make(w: Workspace) -> Any:
        return workspace_tensor(w, device, poison)

    workspaces = [Pending(w, make) if w.sized_by else make(w) for w in plan.workspaces]
    bound = plan.bind(inputs, outputs, aux, workspaces)
    return {a.name: as_declared(bound[a.name], a.triton_type) for a in plan.args}


def as_declared(x: Any, triton_type: str) -> Any:
    """A float8 tensor passed where the plan declares u8 bytes (block-scaled fp8 decoded in software:
    sm_80's Triton refuses fp8e4nv pointers) as a uint8 view of the same memory; anything else as is."""
    if triton_type == "*u8" and "float8" in str(getattr(x, "dtype", "")):
        import torch

        return x.view(torch.uint8)
    return x


def _torch_device(cg: CompiledGraph) -> str:
    """Where the graph's tensors live: CPU under the interpreter, else the CUDA device (checked)."""
    import torch

    if cg.target.kind == "interp":
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeUnavailable(f"target {cg.target.name} built cubins, but this machine has no CUDA device "
                                 "to run them; use target 'interp' or 'cpu' to run here")
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < cg.target.arch:
        raise RuntimeUnavailable(f"target {cg.target.name} needs compute capability >= {cg.target.arch}, "
                                 f"the device has {major}.{minor}")
    return "cuda"


def _run_torch(cg: CompiledGraph, inputs: dict[str, Any], poison: bool, sizes: dict[str, int]) -> dict[str, Any]:
    from .triton_runtime import load_module, plan_launcher

    interpret = cg.target.kind == "interp"
    device = _torch_device(cg)
    bufs: dict[str, Any] = {}
    for n in cg.graph.inputs:
        bufs[n.attr("name")] = torch_input(n.attr("name"), inputs[n.attr("name")], n.dtype, device)
    for ck in cg.kernels:
        spec = ck.spec
        plan = spec.launch_plan(ck.config, sizes or None)
        outs = []
        for b in spec.outputs:
            bufs[b.name] = _alloc(resolve(tuple(b.shape), sizes), b.dtype, device, poison)
            outs.append(bufs[b.name])
        ins = [bufs[b.name] for b in spec.inputs]
        spec.check_inputs(ins)  # before any launch: a bad sparse structure would address outside a buffer
        bound = plan_arguments(spec, ck.config, plan, ins, outs, device, poison)
        ck.runner = ck.runner or load_module(ck.source, interpret)
        plan_launcher(ck.runner, plan, bound, interpret)()
    return {name: bufs[b.name] for name, b in cg.pipeline.kernels.outputs}
