"""AOT: every kernel of the demo builds for sm_80 and sm_90 without a GPU; the sm_90 GEMMs use
HGMMA; default configs spill nothing; a second compile is served by the cache."""

import pytest

import tilefuse
from tilefuse.ir.text import load_graph


@pytest.fixture(scope="module")
def demo_graph():
    return load_graph("examples/decoder_mlp.tf", {"T": 16})  # T static: the demo's AOT builds


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_demo_builds_without_spills(demo_graph, arch):
    cg = tilefuse.compile(demo_graph, target=arch)
    assert len(cg.kernels) == 4
    for ck in cg.kernels:
        for b in ck.binaries[arch].values():
            assert b.cubin and b.ptx
            assert b.resources.registers > 0
            assert not b.resources.spills, f"{ck.spec.name} spills on {arch}: {b.resources}"
            if ck.spec.family == "matmul":
                if arch == "sm_90":
                    assert b.resources.hgmma > 0, f"{ck.spec.name} has no HGMMA on sm_90"
                else:
                    assert b.resources.hmma > 0 and b.resources.hgmma == 0


def test_second_compile_hits_cache(demo_graph):
    tilefuse.compile(demo_graph, target="sm_90")
    cg = tilefuse.compile(demo_graph, target="sm_90")
    assert all(b.from_cache for ck in cg.kernels for b in ck.binaries["sm_90"].values())
