"""The cost model reads kernels only through KernelSpec's cost-estimate hooks (kernels/base.py): every
family implements them, a new family adds named features through `family_features`, and the
estimates are the ones the families' constraints use."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tilefuse.autotune.device import NOMINAL
from tilefuse.costmodel.features import featurize
from tilefuse.ir import dtypes as dt
from tilefuse.ir.text import parse_graph
from tilefuse.kernels import fusion_rules, registry, spec_for
from tilefuse.kernels.base import KernelSpec
from tilefuse.passes import run_pipeline
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target

GOLDEN = json.loads((Path(__file__).parent / "golden" / "kernel_keys.json").read_text())
REQUIRED = ("flops", "mma_dtype", "family_features", "shared_bytes", "registers_per_thread")
HOOKS = REQUIRED + ("bytes_moved", "features", "grid", "tile_traffic", "work_ratio", "parallel_tasks",
                    "threads_per_program")
H100, SM90 = NOMINAL["H100"], get_target("sm_90")
# The family's own spec_* names (besides programs, flops, bytes) on a GPU config: pinned, since trained
# models and stored records name them; a family may add names, never rename one.
FAMILY_FEATURES = {
    "pointwise": {"rows", "cols", "reductions"},
    "matmul": {"M", "N", "K", "batch", "prologue", "epilogue_outputs", "reductions_m", "reductions_n",
               "reductions_raw"},
    "attention": {"B", "Hq", "Hkv", "Sq", "Sk", "D", "Dv", "density", "partial_fraction", "data_dependent",
                  "score_mod", "post_mod"},
    "decode": {"B", "HQ", "HKV", "SQ", "D", "page_size", "pages", "kv_bits", "select"},
}
FAMILY_FEATURES["attention_bwd"] = FAMILY_FEATURES["attention"]


@pytest.fixture(scope="module")
def specs() -> dict[str, KernelSpec]:
    """One Triton spec per family, from the golden graphs."""
    found: dict[str, KernelSpec] = {}
    for entry in GOLDEN.values():
        kinds = {k["triton"][0] for k in entry["kernels"]}
        if kinds <= set(found):
            continue
        kg = run_pipeline(parse_graph(entry["text"]), fusion_rules()).kernels
        for k in kg.kernels:
            try:
                spec = spec_for(kg, k, "triton")
            except Exception:  # noqa: BLE001 - kernels that do not lower are not needed here
                continue
            found.setdefault(spec.family, spec)
        if set(FAMILY_FEATURES) <= set(found):
            break
    return found


class HooksOnly:
    """A spec seen through its cost-estimate hooks alone: any other attribute raises."""

    def __init__(self, spec: KernelSpec):
        self._spec = spec

    def __getattr__(self, name: str) -> Any:
        if name not in HOOKS:
            raise AttributeError(f"featurize read {name!r}, which is not a cost-estimate hook")
        return getattr(self._spec, name)


def test_every_family_implements_the_required_hooks():
    fams = registry.families()
    assert set(FAMILY_FEATURES) <= set(fams)
    for name, fam in fams.items():
        missing = [h for h in REQUIRED if getattr(fam.spec, h) is getattr(KernelSpec, h)]
        assert not missing, f"family {name} lacks {missing}"


@pytest.mark.parametrize("family", sorted(FAMILY_FEATURES))
def test_featurize_reads_only_the_hooks(specs, family):
    spec = specs[family]
    cfg = spec.default_config(SM90)
    assert featurize(HooksOnly(spec), cfg, H100) == featurize(spec, cfg, H100)
    names = {k[len("spec_"):] for k in featurize(spec, cfg, H100) if k.startswith("spec_")}
    assert names == {"programs", "flops", "bytes"} | FAMILY_FEATURES[family]


def test_featurize_reads_only_the_hooks_for_cpu_configs(specs):
    from tilefuse.autotune.device import cpu_device

    for family in ("pointwise", "matmul"):
        kg, kernel = specs[family].kg, specs[family].kernel
        spec = spec_for(kg, kernel, "tvm")
        cfg = spec.default_config(get_target("cpu"))
        assert featurize(HooksOnly(spec), cfg, cpu_device()) == featurize(spec, cfg, cpu_device())


class QuantLikeSpec(KernelSpec):
    """A stand-in for a later family (no graph): only the hooks, with features of its own."""

    family = "quant_like"

    def __init__(self, extra: dict[str, float] | None = None):  # noqa: D107 - no kernel graph behind it
        self.name = "q0"
        self.extra = extra or {}

    def grid(self, config: Config) -> tuple[int, int, int]:
        return (8, 1, 1)

    def flops(self) -> float:
        return 2.0 * 64 * 4096 * 4096

    def bytes_moved(self) -> float:
        return 4096 * 4096 / 2 + 64 * 4096 * 4.0

    def mma_dtype(self) -> dt.DType | None:
        return dt.f16

    def family_features(self, config: Config) -> dict[str, float]:
        return {"bits": 4.0, "group_size": 128.0, "weight_bytes_per_flop": 4096 * 4096 / 2 / self.flops(),
                **self.extra}

    def shared_bytes(self, config: Config) -> float:
        return 32768.0

    def registers_per_thread(self, config: Config, target: Any) -> float:
        return 300.0  # a need above 255: the features clamp it to what a thread can hold


def test_a_new_family_adds_named_features_through_the_hook(specs):
    cfg = Config(BLOCK_N=64, num_warps=4, num_stages=2)
    f = featurize(QuantLikeSpec(), cfg, H100)
    assert f["spec_bits"] == 4.0 and f["spec_group_size"] == 128.0 and f["spec_weight_bytes_per_flop"] > 0
    assert f["regs_per_thread"] == 255.0 and f["shared_per_program"] == 32768.0
    assert f["roofline_compute_time"] == pytest.approx(QuantLikeSpec().flops() / H100.peak_flops)
    old = featurize(specs["matmul"], specs["matmul"].default_config(SM90), H100)
    assert not any(k in old for k in ("spec_bits", "spec_group_size"))  # existing families' layout unchanged


def test_family_features_may_not_shadow_common_names():
    with pytest.raises(ValueError, match="flops"):
        QuantLikeSpec({"flops": 1.0}).features(Config(num_warps=4))
    with pytest.raises(ValueError, match="knob_x"):
        QuantLikeSpec({"knob_x": 1.0}).features(Config(num_warps=4))


def test_matmul_gpu_estimates_keep_their_values(specs):
    """Hand-computed from the formulas featurize used before the hooks (FEATURE_SCHEMA 2)."""
    mm = specs["matmul"]
    cfg = Config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, SPLIT_K=1, num_warps=4, num_stages=3)
    el = mm.operand_dtype.itemsize
    f = featurize(mm, cfg, H100)
    assert f["regs_per_thread"] == 32 + -(-(64 * 64 / 128 + 128 * 32 * el / 4 / 128) // 1)
    assert f["shared_per_program"] == 3 * (64 * 32 + 32 * 64) * el
    assert f["tiles"] == -(-mm.M // 64) * -(-mm.N // 64) * math.prod(mm.batch)
    assert f["bytes_per_tile"] == (64 * mm.K + mm.K * 64) * el + 64 * 64 * mm.out_dtype.itemsize * len(mm.outs)


@pytest.mark.parametrize("family", ["attention", "attention_bwd", "decode"])
def test_register_and_shared_features_are_the_constraints_estimates(specs, family):
    spec = specs[family]
    cfg = spec.default_config(SM90)
    f = featurize(spec, cfg, H100)
    regs = spec.registers(cfg, SM90) if family != "decode" else spec.registers(cfg)
    assert f["regs_per_thread"] == min(255, regs) and f["shared_per_program"] == spec.smem_bytes(cfg)
    assert f["roofline_compute_time"] == pytest.approx(spec.flops() / H100.peak_flops)  # 16-bit tl.dot


def test_decode_constraints_use_its_estimates(specs):
    from tilefuse.schedule.target import Target

    dec = specs["decode"]
    big = Config(BLOCK_N=128, KV_SPLITS=1, num_warps=1, num_stages=4)
    assert dec.registers(big) > 192
    assert f"~{dec.registers(big)} f32 registers" in " ".join(dec.constraints(big, SM90))
    tight = Target("sm_tight", "cuda", 80, max_shared_bytes=dec.smem_bytes(big) - 1)
    assert f"need {dec.smem_bytes(big)} B of shared memory" in " ".join(dec.constraints(big, tight))
