"""AOT builds of the quantized GEMM family's defaults (no GPU needed): spill-free, with tensor-core
instructions (HMMA on sm_80; HGMMA or HMMA on sm_90, where decode tiles may use mma.sync). The quick test
builds one format for one arch so CI exercises the path; `pytest -m slow` builds every format's default
for sm_80 and sm_90 at M=1 (decode: split-K, small tiles) and M=4096 (prefill)."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from tilefuse.compiler import compile_graph  # noqa: E402
from tilefuse.schedule.target import get_target  # noqa: E402

from quant_formats import Case, awq, gptq, graph, int2_asym, int8_per_channel, nf4, sym_int4  # noqa: E402

FORMATS = [awq(128), gptq(4, True), gptq(4, False), gptq(3, False, 64), sym_int4(-1), sym_int4(64),
           int2_asym(64, True), int2_asym(128, False), nf4(), int8_per_channel("f16")]


def assert_default_builds(case: Case, arch: str, m: int, k: int, n: int) -> None:
    """The family default for `arch` builds without spills and its tile kernel issues tensor-core MMAs."""
    cg = compile_graph(graph(case, m, k, n, epilogue=True), arch, db=None, cost_model=None)
    assert [ck.spec.family for ck in cg.kernels] == ["quant_matmul"]
    ck = cg.kernels[0]
    cap = get_target(arch).max_shared_bytes
    for name, b in ck.binaries[arch].items():
        r = b.resources
        assert not r.spills, f"{case.name} M={m} {name} spills on {arch} under {ck.config}: {r}"
        # more shared memory than the arch has would build but never launch
        assert r.shared_bytes <= cap, f"{case.name} M={m} {name} on {arch} under {ck.config}: {r.shared_bytes} B"
        if name != ck.spec.name:  # the split-K finishing kernel sums partials: no MMA
            continue
        mma = r.hmma + r.hgmma if arch == "sm_90" else r.hmma
        assert mma > 0, f"{case.name} M={m} on {arch} under {ck.config}: no tensor-core MMA ({r})"
        if arch == "sm_80":
            assert r.hgmma == 0


def test_awq_decode_default_builds_for_sm_90_without_spills() -> None:
    assert_default_builds(awq(128), "sm_90", 1, 1024, 1024)


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 4096])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("case", FORMATS, ids=lambda c: c.name)
def test_every_format_default_builds_without_spills(case: Case, arch: str, m: int) -> None:
    # int2 G=64 packed zeros at M=1 on sm_90 spilled 8 B at BLOCK_K=128: decode steps now span one packed-zero
    # group (QuantMatmulSpec.packed_zero_group)
    assert_default_builds(case, arch, m, 4096, 4096)
