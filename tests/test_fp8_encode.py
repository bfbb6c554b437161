"""The software f32 -> e4m3fn encoder (ir/fp8_encode.py) against torch's float8_e4m3fn cast: the numpy model
of its bit ops on every f16 value, the TVM lowering on a dense f32 sweep with every rounding tie, and the
FP8 quantize on the CPU and the Triton interpreter byte-equal to the reference (odd M, zero rows, ties, values
near 448, subnormals)."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse.compiler import compile_graph
from tilefuse.ir import dtypes as dt
from tilefuse.ir import expr as ex
from tilefuse.ir.fp8_encode import encode_e4m3, soft_fp8_casts
from tilefuse.ir.reference import eval_expr, evaluate

from helpers import to_np
from test_ir_quantize import hostile_rows, quant_graph

torch = pytest.importorskip("torch")


def torch_e4m3(x: np.ndarray) -> np.ndarray:
    """torch's bytes of x clamped to +-448 (its own cast turns |x| >= 480 into NaN; the encoder saturates)."""
    xc = np.where(np.isnan(x), x, np.clip(x, -448, 448)).astype(np.float32)
    return torch.from_numpy(xc).to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def f32_sweep() -> np.ndarray:
    """A strided sweep of f32 bit patterns from 0 past 448, every e4m3 value, the midpoints between
    neighbours (ties) and one f32 ulp either side, inf and NaN; both signs."""
    import ml_dtypes

    vals = np.arange(0x7F, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    mids = ((vals[1:] + vals[:-1]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mids, np.float32(0)), mids, np.nextafter(mids, np.float32(1e9))])
    strided = np.arange(0, 0x44000000, 251, dtype=np.uint32).view(np.float32)
    extra = np.asarray([448.0, 464.0, 479.9, 480.0, 1e30, np.inf, np.nan, 2.0**-10, 2.0**-149], np.float32)
    pos = np.concatenate([strided, vals.astype(np.float32), near, extra])
    return np.concatenate([pos, -pos])


def test_numpy_model_matches_torch_on_every_f16_value():
    x = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    got = eval_expr(encode_e4m3(ex.arg(0, dt.f32)), [x]).astype(np.uint8)
    assert np.array_equal(got, torch_e4m3(x))


def test_saturates_inf_and_keeps_nan_sign():
    x = np.asarray([np.inf, -np.inf, 1e30, 470.0, np.nan, -np.nan], np.float32)
    got = eval_expr(encode_e4m3(ex.arg(0, dt.f32)), [x]).astype(np.uint8)
    assert list(got) == [0x7E, 0xFE, 0x7E, 0x7E, 0x7F, 0xFF]
    ref = dt.round_to(x.astype(np.float64), dt.f8e4m3)  # the reference saturates inf too, as cvt.rn.satfinite
    assert list(ref[:4]) == [448.0, -448.0, 448.0, 448.0] and np.isnan(ref[4:]).all()


def test_tvm_lowering_matches_torch_on_a_dense_f32_sweep():
    import tvm
    from tvm import te

    from tilefuse.codegen import tvm_expr, tvm_runtime

    x = f32_sweep()
    X = te.placeholder((x.size,), "float32", name="X")
    e = ex.cast(ex.var("x", "f32"), "f8e4m3")
    Y = te.compute((x.size,), lambda i: tvm_expr.lower_expr(e, lambda n: X(i) if n.op is ex.E.VAR else None))
    assert Y.dtype == "uint8"
    f = tvm.compile(te.create_prim_func([X, Y]), target=tvm_runtime.host_target())
    y = tvm.runtime.empty((x.size,), "uint8")
    f(tvm.runtime.tensor(x), y)
    assert np.array_equal(y.numpy(), torch_e4m3(x))


def test_soft_casts_leave_expressions_without_fp8_casts_alone():
    e = ex.cast(ex.var("x", "f32"), "f16") * 2.0
    assert soft_fp8_casts(e) is e
    assert soft_fp8_casts(ex.cast(ex.var("x", "f32"), "f8e4m3")).op is ex.E.BITCAST


def edge_rows(m: int, k: int) -> np.ndarray:
    """Rows of hostile_rows, then one whose scale is exactly 1 (its max is 448) holding e4m3 rounding ties,
    values near 448 and subnormals, so that the codes see them as they are."""
    x = hostile_rows(np.random.default_rng(m), m, k, np.float32)
    row = np.zeros(k, np.float32)
    ties = [448.0, 444.0, -444.0, 436.0, 440.00003, 17.0, 19.0, 0.5 * (1 + 1 / 16), 0.5 * (1 + 3 / 16),
            2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10, -7 * 2.0**-10, 15 * 2.0**-10, 2.0**-9, 2.0**-6 - 2.0**-12, 1e-30]
    row[: len(ties)] = ties
    row[128: 128 + len(ties)] = ties  # the second 1x128 group has the same max
    x[-1] = row
    return x


@pytest.mark.parametrize("target", [pytest.param("interp", marks=pytest.mark.interp), "cpu"])
@pytest.mark.parametrize("m", [1, 7])
def test_fp8_quantize_is_byte_equal_to_the_reference(target, m):
    k = 256
    g = quant_graph((m, k), "f32", "f8e4m3", 128)
    cg = compile_graph(g, target, db=None, cost_model=None)
    assert cg.kernels[0].spec.family == "pointwise"
    x = edge_rows(m, k)
    got = {name: to_np(v) for name, v in cg.run({"x": x}, poison=True).items()}
    want = evaluate(g, {"x": x})
    assert np.array_equal(got["s"], want["s"])
    assert np.array_equal(got["q"], want["q"])
    if m > 2:
        assert not got["q"][1].any() and not got["s"][1].any()  # a zero row: zero scales, zero codes
    codes = torch_e4m3((x / np.repeat(want["s"], 128, axis=1)).astype(np.float32)[-1])
    import ml_dtypes

    assert np.array_equal(got["q"][-1].astype(ml_dtypes.float8_e4m3fn).view(np.uint8), codes)


def test_fp8_bytes_knob_is_forced_on_sm_80_and_off_by_default_on_sm_90():
    from tilefuse.schedule.target import get_target

    g = quant_graph((5, 256), "f32", "f8e4m3", 128)
    spec = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels[0].spec
    assert spec.knob_space(get_target("sm_80"))["FP8_BYTES"] == (1,)
    assert spec.default_config(get_target("sm_80")).int("FP8_BYTES") == 1
    assert spec.default_config(get_target("sm_90")).int("FP8_BYTES") == 0
    plain = compile_graph(quant_graph((5, 256)), "interp", db=None, cost_model=None, aot=False).kernels[0].spec
    assert "FP8_BYTES" not in plain.knob_space(get_target("sm_80"))  # no fp8 buffer: no knob


@pytest.mark.interp
def test_fp8_quantize_with_bytes_on_the_interpreter_is_byte_equal_to_the_reference():
    """sm_80's form (u8 pointers, the encoder's byte stored as is, the copies moving bytes) run by the interpreter."""
    m, k = 7, 256
    g = quant_graph((m, k), "f32", "f8e4m3", 128)
    kernels = compile_graph(g, "interp", db=None, cost_model=None, aot=False).kernels
    configs = {ck.spec.name: ck.config.replace(FP8_BYTES=1) for ck in kernels if "FP8_BYTES" in ck.config}
    assert len(configs) == 2  # the quantize and the copy of its grouped codes
    cg = compile_graph(g, "interp", configs=configs, db=None, cost_model=None)
    src = "".join(ck.source for ck in cg.kernels)
    assert "float8" not in src and "tl.uint8" in src
    x = edge_rows(m, k)
    got = {name: to_np(v) for name, v in cg.run({"x": x}, poison=True).items()}
    want = evaluate(g, {"x": x})
    assert np.array_equal(got["q"], want["q"]) and np.array_equal(got["s"], want["s"])
