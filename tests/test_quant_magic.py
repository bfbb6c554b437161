"""The I4_F16 knob (kernels/quant/magic.py): the 0x6400 magic-number int4 -> f16 conversion gives values
identical to the shift/mask path under the interpreter (AWQ, GPTQ sym, symmetric int4, f16 and bf16 out;
plain zeros, GPTQ asym's, are not offered it); the inline-PTX form is offered only on CUDA targets, its
arithmetic is checked bit for bit in a numpy model of the same instructions, and its AOT builds are
spill-free with tensor-core MMAs (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse.compiler import compile_graph
from tilefuse.errors import TilefuseError
from tilefuse.kernels.quant import magic
from tilefuse.schedule.target import get_target

from helpers import to_np
from quant_formats import Case, awq, graph, gptq, inputs, int2_asym, nf4, sym_int4

M, K, N = 5, 256, 72


def _run(case: Case, knob: int, seed: int = 3) -> tuple[np.ndarray, str]:
    g = graph(case, M, K, N, epilogue=False)
    probe = compile_graph(g, "interp", db=None, cost_model=None, aot=False)
    ck = probe.kernels[0]
    cfg = ck.config.replace(**{magic.KNOB: knob})
    cg = compile_graph(g, "interp", configs={ck.spec.name: cfg}, db=None, cost_model=None)
    out = to_np(cg.run(inputs(case, g, seed), poison=True)["y"])
    return out, cg.kernels[0].source


@pytest.mark.interp
@pytest.mark.parametrize("case", [awq(128), gptq(4, True), sym_int4(64), sym_int4(-1, "bf16", "bf16")],
                         ids=lambda c: c.name)
def test_magic_conversion_values_identical_to_shift_mask(case: Case) -> None:
    want, src0 = _run(case, 0)
    got, src1 = _run(case, 1)
    assert "bitcast=True" in src1 and "bitcast=True" not in src0
    assert np.all(np.isfinite(got))
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), "I4_F16=1 changed a value"


def test_knob_is_offered_only_for_unsigned_int4_and_asm_only_on_cuda() -> None:
    def space(case: Case, target: str) -> dict:
        cg = compile_graph(graph(case, M, K, N), "interp", db=None, cost_model=None, aot=False)
        return cg.kernels[0].spec.knob_space(get_target(target))

    assert space(awq(128), "interp")[magic.KNOB] == (0, 1)
    assert space(awq(128), "sm_90")[magic.KNOB] == (0, 1, 2)
    assert magic.KNOB not in space(awq(128), "cpu")
    for case in (int2_asym(64, True), nf4(), gptq(3, False, 64), gptq(4, False)):
        assert magic.KNOB not in space(case, "sm_80")


def test_asm_form_refused_on_the_interpreter_with_a_reason() -> None:
    g = graph(awq(128), M, K, N)
    ck = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0]
    with pytest.raises(TilefuseError, match=r"I4_F16=2 \(inline PTX"):
        ck.spec.check(ck.config.replace(**{magic.KNOB: 2}), get_target("interp"))


def test_numpy_model_of_the_ptx_is_bit_exact() -> None:
    """lop3 (w & 0x000f000f) | 0x64006400 then sub.f16x2 of 1024 + z, on pairs of i16 lanes, is q - z exactly;
    only each lane's low nibble matters (the shifted word is passed unmasked)."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, 4096)
    z = rng.integers(0, 16, 4096)
    words = (q | (rng.integers(0, 1 << 11, 4096) << 4)).astype(np.int16)  # junk above the nibble
    got = magic.emulate_asm(words, (1024 + z).astype(np.float16))
    assert np.array_equal(got, (q - z).astype(np.float16))
    assert np.array_equal(magic.emulate_asm(words, np.full(4096, 1032.0)), (q - 8).astype(np.float16))


def test_report_and_source_name_the_conversion() -> None:
    g = graph(awq(128), M, K, N)
    ck = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0]
    cfg = ck.config.replace(**{magic.KNOB: 1})
    assert "0x6400 magic number" in ck.spec.report_lines(cfg)[0] and "no repack" in ck.spec.report_lines(cfg)[0]
    asm = ck.spec.specialized(ck.config.replace(**{magic.KNOB: 2}))
    from tilefuse.kernels.matmul.triton_template import render

    src = render(asm, ck.config.replace(**{magic.KNOB: 2}))
    assert src.count("tl.inline_asm_elementwise") == 1 and "sub.f16x2" in src and "pack=2" in src


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 4096])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("knob", [1, 2])
@pytest.mark.parametrize("case", [awq(128), gptq(4, True), sym_int4(64)], ids=lambda c: c.name)
def test_magic_aot_builds_without_spills(case: Case, knob: int, arch: str, m: int) -> None:
    g = graph(case, m, 4096, 4096, epilogue=True)
    probe = compile_graph(g, arch, db=None, cost_model=None, aot=False).kernels[0]
    cfg = probe.config.replace(**{magic.KNOB: knob})
    ck = compile_graph(g, arch, configs={probe.spec.name: cfg}, db=None, cost_model=None).kernels[0]
    for name, b in ck.binaries[arch].items():
        r = b.resources
        assert not r.spills, f"{case.name} {name} {arch} I4_F16={knob}: {r}"
        if name == ck.spec.name:
            assert (r.hmma + r.hgmma if arch == "sm_90" else r.hmma) > 0, r
