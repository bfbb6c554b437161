"""One launch plan per kernel (KernelSpec.launch_plan): the executors, the AOT build and the bundle
manifest all run what it says. A test-only family with three launches on different grids and
arguments (count -> exclusive scan -> scatter, a counting sort of keys into bins, the shape of sparse
row binning and splatting's tile binning) runs through the interpreter executor against numpy and
builds every launch for sm_90 from the same plan; the families' own plans are pinned too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.codegen.executors import workspace_tensor
from tilefuse.compiler import CompiledKernel, build_aot
from tilefuse.errors import LoweringError
from tilefuse.kernels import fusion_rules, registry, spec_for
from tilefuse.kernels.base import KernelSpec
from tilefuse.passes import run_pipeline
from tilefuse.schedule.config import Config
from tilefuse.schedule.launch import Arg, Launch, LaunchPlan, LaunchPlanError, Workspace
from tilefuse.schedule.target import Target, get_target

FAMILY = "test_binning"
BINS = 8
N = 100


class BinningSpec(KernelSpec):
    """A counting sort: in0 holds N int32 keys in [0, BINS); out0 gets the key indices ordered by
    bin, stable. Three launches: `_count` (atomic histogram into the zeroed `counts`, one program per
    BLOCK keys), `_scan` (exclusive scan of counts into `offsets`, one program), `_scatter` (one
    program per bin, each walking the keys and writing its bin's indices from offsets[bin])."""

    family = FAMILY

    def program_description(self) -> dict[str, Any]:
        return {"bins": BINS}

    def knob_space(self, target: Target) -> dict[str, tuple[Any, ...]]:
        return {"BLOCK": (16, 32, 64), "num_warps": (1, 4), "num_stages": (1,)}

    def constraints(self, config: Config, target: Target) -> list[str]:
        return []

    def default_config(self, target: Target) -> Config:
        return Config(BLOCK=32, num_warps=4, num_stages=1)

    def grid(self, config: Config) -> tuple[int, int, int]:
        return (-(-N // config.int("BLOCK")), 1, 1)

    def triton_constexprs(self, config: Config) -> dict[str, Any]:
        return {"BLOCK": config.int("BLOCK")}

    def workspaces(self, config: Config, sizes: Mapping[str, int] | None = None) -> list[Workspace]:
        return [Workspace("counts", (BINS,), "i32", zeroed=True), Workspace("offsets", (BINS,), "i32")]

    def launches(self, config: Config, args: tuple[Arg, ...],
                 sizes: Mapping[str, int] | None = None) -> list[Launch]:
        by = {a.name: a for a in args}
        return [self.launch(f"{self.name}_count", self.grid(config), config, (by["in0"], by["counts"])),
                self.launch(f"{self.name}_scan", (1, 1, 1), config, (by["counts"], by["offsets"]),
                            constexprs={"BINS": BINS}),
                self.launch(f"{self.name}_scatter", (BINS, 1, 1), config, (by["in0"], by["offsets"], by["out0"]))]


def render(spec: BinningSpec, config: Config, interpret: bool = False) -> str:
    """The family's Triton template (registered under this module's name)."""
    name = spec.name
    return f'''import triton
import triton.language as tl


@triton.jit
def {name}_count(in0, counts, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < {N}
    key = tl.load(in0 + offs, mask=ok, other=0)
    tl.atomic_add(counts + key, tl.full([BLOCK], 1, tl.int32), mask=ok)


@triton.jit
def {name}_scan(counts, offsets, BINS: tl.constexpr):
    i = tl.arange(0, BINS)
    c = tl.load(counts + i)
    tl.store(offsets + i, tl.cumsum(c, 0) - c)


@triton.jit
def {name}_scatter(in0, offsets, out0, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    base = tl.load(offsets + b)
    for start in range(0, {N}, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        hit = (tl.load(in0 + offs, mask=offs < {N}, other=-1) == b).to(tl.int32)
        pos = base + tl.cumsum(hit, 0) - 1
        tl.store(out0 + pos, offs, mask=(hit != 0) & (pos >= 0) & (pos < {N}))  # bad offsets: no wild stores
        base += tl.sum(hit, 0)
'''


@pytest.fixture
def binning():
    """The test family, registered for the test only (the registry is global)."""
    registry.register_family()(BinningSpec)
    registry.register_template(FAMILY, "triton", __name__)
    try:
        yield
    finally:
        registry.unregister_family(FAMILY)


def _binning_graph(target: str) -> tuple[Any, BinningSpec]:
    """A graph with one int32 [N] -> int32 [N] kernel compiled for `target`, its kernel then given to the
    test family (the graph only provides the buffers)."""
    g = tf.GraphBuilder("binning")
    keys = g.input("keys", (N,), "i32")
    g.output("order", keys * 2)
    cg = tf.compile(g.build(), target=target, aot=False)
    kg = cg.pipeline.kernels
    return cg, BinningSpec(kg, kg.kernels[0])


@pytest.mark.interp
def test_three_launch_family_runs_its_plan_under_the_interpreter(binning):
    cg, spec = _binning_graph("interp")
    config = spec.default_config(cg.target)
    plan = spec.launch_plan(config)
    assert [(ln.fn.rsplit("_", 1)[1], ln.grid) for ln in plan.launches] == \
        [("count", (4, 1, 1)), ("scan", (1, 1, 1)), ("scatter", (BINS, 1, 1))]
    assert [a.name for a in plan.launches[2].args] == ["in0", "offsets", "out0"]
    assert plan.scratch_bytes() == 2 * BINS * 4
    cg.kernels = [CompiledKernel(spec, config, "given", spec.render_triton(config, interpret=True))]
    for seed in range(3):
        keys = np.random.default_rng(seed).integers(0, BINS, N).astype(np.int32)
        got = cg.run({"keys": keys}, poison=True)["order"].numpy()  # poison: unwritten slots fail
        np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


def test_three_launch_family_builds_every_launch_for_sm_90(binning, tmp_path):
    from tilefuse.cli.main import write_bundle

    cg, spec = _binning_graph("sm_90")
    config = spec.default_config(cg.target)
    text = spec.render_triton(config)
    bins = build_aot(spec, config, text, get_target("sm_90"))
    assert list(bins) == spec.launch_plan(config).functions() and len(bins) == 3
    assert all(b.cubin and b.arch == 90 for b in bins.values())
    assert bins[f"{spec.name}_scan"].num_warps == 4
    ck = CompiledKernel(spec, config, "given", text, binaries={"sm_90": bins})
    cg.kernels = [ck]
    entry = json.loads(write_bundle(cg, tmp_path).read_text())["kernels"][0]
    assert [(ln["function"], ln["grid"], ln["args"]) for ln in entry["launches"]] == [
        (f"{spec.name}_count", [4, 1, 1], ["in0", "counts"]),
        (f"{spec.name}_scan", [1, 1, 1], ["counts", "offsets"]),
        (f"{spec.name}_scatter", [BINS, 1, 1], ["in0", "offsets", "out0"])]
    assert entry["launches"][1]["constexprs"] == {"BINS": BINS}
    assert entry["workspaces"] == [{"name": "counts", "shape": [BINS], "dtype": "i32", "zeroed": True, "bytes": 32},
                                   {"name": "offsets", "shape": [BINS], "dtype": "i32", "zeroed": False, "bytes": 32}]
    assert {b["function"] for b in entry["binaries"]["sm_90"]} == set(bins)
    assert all((tmp_path / f"{fn}.sm_90.cubin").read_bytes() == b.cubin for fn, b in bins.items())


def test_unregistered_test_family_is_gone(binning):
    assert registry.family(FAMILY).backends == {"triton"}
    registry.unregister_family(FAMILY)
    with pytest.raises(LoweringError, match=FAMILY):
        registry.family(FAMILY)


def _matmul_spec(shape=(64, 96, 80)):
    m, k, n = shape
    g = tf.GraphBuilder("mm")
    a, b = g.input("a", (m, k), "f16"), g.input("b", (k, n), "f16")
    g.output("c", a @ b)
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    return spec_for(kg, kg.kernels[0], "triton")


def test_split_k_plan_adds_the_finishing_launch_and_its_workspace():
    spec = _matmul_spec()
    base = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_stages=2, num_warps=4)
    one = spec.launch_plan(Config(SPLIT_K=1, **base))
    assert [(ln.fn, ln.grid) for ln in one.launches] == [(spec.name, (6, 1, 1))] and not one.workspaces
    plan = spec.launch_plan(Config(SPLIT_K=3, **base))
    assert [(ln.fn, ln.grid) for ln in plan.launches] == [(spec.name, (6, 3, 1)), (f"{spec.name}_finish", (6, 1, 1))]
    assert plan.workspaces == (Workspace("ws", (3, 1, 64, 80), "f32"),) and plan.scratch_bytes() == 3 * 64 * 80 * 4
    assert all(ln.signature() == {"in0": "*fp16", "in1": "*fp16", "out0": "*fp16", "ws": "*fp32"}
               for ln in plan.launches)
    assert plan.launches[0].kwargs(interpret=True) == {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8,
                                                       "SPLIT_K": 3}
    assert plan.launches[0].kwargs(interpret=False)["num_warps"] == 4


def test_inconsistent_plans_are_refused():
    a = Arg("in0", "input", 0, "*fp32")
    ws = Arg("ws", "workspace", 0, "*fp32")
    with pytest.raises(LaunchPlanError, match="k: no launches"):
        LaunchPlan("k", (a,), (), ())
    with pytest.raises(LaunchPlanError, match="k_b: argument ws is not one of the plan's arguments"):
        LaunchPlan("k", (a,), (), (Launch("k_a", (1,), (a,)), Launch("k_b", (1,), (a, ws))))
    with pytest.raises(LaunchPlanError, match="no workspace 'ws'"):
        LaunchPlan("k", (a, ws), (), (Launch("k", (1,), (a, ws)),))
    with pytest.raises(LaunchPlanError, match="k_a is launched twice with different"):
        LaunchPlan("k", (a,), (), (Launch("k_a", (1,), (a,), {"B": 1}), Launch("k_a", (2,), (a,), {"B": 2})))
    again = LaunchPlan("k", (a,), (), (Launch("k_a", (1,), (a,)), Launch("k_a", (9,), (a,))))
    assert again.functions() == ["k_a"]  # one function launched twice is built once


def test_poisoned_runs_poison_workspaces_that_are_not_zeroed():
    w = workspace_tensor(Workspace("ws", (4,), "f32"), "cpu", poison=True)
    assert bool(w.isnan().all())
    z = workspace_tensor(Workspace("n", (4,), "i32", zeroed=True), "cpu", poison=True)
    assert z.tolist() == [0, 0, 0, 0]
