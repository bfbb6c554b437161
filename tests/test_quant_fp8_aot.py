"""AOT builds of the block-scaled FP8 GEMM's defaults (no GPU needed): spill-free, with tensor-core MMAs: on
sm_90 native e4m3 (QGMMA wgmma for prefill tiles, e4m3 mma.sync, counted as HMMA, for decode tiles); on sm_80
the software decode's f16 HMMA. The quick tests build one default per arch; `pytest -m slow` sweeps M from
decode to prefill on a Llama shape and an odd one, both weight layouts."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from tilefuse.compiler import compile_graph  # noqa: E402

from fp8_cases import fp8_graph  # noqa: E402


def assert_default_builds(arch: str, m: int, k: int, n: int, layout: str = "nk") -> None:
    cg = compile_graph(fp8_graph(m, k, n, layout=layout, out="bf16"), arch, db=None, cost_model=None)
    assert [ck.spec.family for ck in cg.kernels] == ["quant_matmul"]
    ck = cg.kernels[0]
    assert ck.spec.fp8 is not None and ck.config.int("BLOCK_K") == 128
    assert ck.config.int("FP8_MMA") == (arch == "sm_90")
    for name, b in ck.binaries[arch].items():
        r = b.resources
        assert not r.spills, f"M={m} K={k} N={n} {name} spills on {arch} under {ck.config}: {r}"
        if name != ck.spec.name:  # the split-K finishing kernel sums partials: no MMA
            continue
        if arch == "sm_80":
            assert r.hmma > 0 and r.qgmma == 0 and r.hgmma == 0, f"{arch} M={m}: {r}"
        elif ck.config.int("BLOCK_M") >= 64:
            assert r.qgmma > 0, f"{arch} M={m}: no fp8 wgmma under {ck.config} ({r})"
        else:
            assert r.hmma + r.qgmma > 0, f"{arch} M={m}: no tensor-core MMA under {ck.config} ({r})"


def test_sm_90_prefill_default_uses_fp8_wgmma() -> None:
    assert_default_builds("sm_90", 256, 1024, 1024)


def test_sm_80_decode_default_decodes_to_f16_mma() -> None:
    assert_default_builds("sm_80", 1, 1024, 1024)


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 16, 64, 512, 4096])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("shape", [(4096, 4096, "nk"), (4224, 4000, "kn")], ids=["llama_o_nk", "odd_kn"])
def test_every_m_builds_without_spills(shape: tuple[int, int, str], arch: str, m: int) -> None:
    k, n, layout = shape
    assert_default_builds(arch, m, k, n, layout)
