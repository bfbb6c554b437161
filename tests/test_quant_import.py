"""Checkpoint import (builders/quant_import.py): tensors packed the way AutoAWQ, AutoGPTQ and bitsandbytes
pack them become dequantize inputs whose reference value is the checkpoint's weight; act-order GPTQ and
malformed tensors are refused by name. Also: the W4A16 example runs, and random inputs of packed operands
are valid codes."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.builders.quant import NF4_CODEBOOK
from tilefuse.builders.quant_import import awq_weights, gptq_weights, nf4_weights
from tilefuse.errors import TilefuseError
from tilefuse.ir.reference import evaluate

K, N, G = 256, 64, 64


def autoawq_pack(q: np.ndarray) -> np.ndarray:
    """AutoAWQ's WQLinear_GEMM.pack: word slot i holds column col*8 + [0, 2, 4, 6, 1, 3, 5, 7][i]."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    out = np.zeros((q.shape[0], q.shape[1] // 8), dtype=np.uint32)
    for col in range(q.shape[1] // 8):
        for i in range(8):
            out[:, col] |= q[:, col * 8 + order[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def autogptq_pack(q: np.ndarray, axis: int) -> np.ndarray:
    """AutoGPTQ's 4-bit QuantLinear.pack: eight codes a word, the first in the low bits."""
    q = np.moveaxis(q, axis, 0).astype(np.uint32)
    out = np.zeros((q.shape[0] // 8, *q.shape[1:]), dtype=np.uint32)
    for j in range(8):
        out |= q[j::8] << np.uint32(4 * j)
    return np.moveaxis(out, 0, axis).view(np.int32)


def dequantized(w: tf.Tensor, inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    b = w.node
    g = tf.Graph(name, (("w", b),), tuple(n for n in _inputs(b)))
    return evaluate(g, inputs)["w"]


def _inputs(n):  # noqa: ANN001, ANN202 - the input nodes under n, in order of first use
    seen: list = []
    for s in n.src:
        for i in ([s] if s.op.value == "input" else _inputs(s)):
            if i not in seen:
                seen.append(i)
    return seen


def test_autoawq_checkpoint() -> None:
    rng = np.random.default_rng(0)
    q, z = rng.integers(0, 16, (K, N)), rng.integers(0, 16, (K // G, N))
    s = rng.uniform(0.01, 0.02, (K // G, N)).astype(np.float16)
    w = awq_weights(autoawq_pack(q), autoawq_pack(z), s)
    assert w.attrs["group_size"] == G
    b = tf.GraphBuilder("awq")
    t = tf.dequantize_awq(*(b.input(k, v.shape, str(v.dtype).replace("int", "i").replace("float", "f"))
                            for k, v in (("qweight", w.inputs["qweight"]), ("qzeros", w.inputs["qzeros"]),
                                         ("scales", w.inputs["scales"]))), group_size=w.attrs["group_size"])
    want = (q - np.repeat(z, G, 0)) * np.repeat(s.astype(np.float64), G, 0)
    np.testing.assert_allclose(dequantized(t, w.inputs, "awq"), want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("v2", [False, True])
def test_autogptq_checkpoint_unpacks_its_zeros(v2: bool) -> None:
    rng = np.random.default_rng(1)
    q, z = rng.integers(0, 16, (K, N)), rng.integers(1, 16, (K // G, N))
    s = rng.uniform(0.01, 0.02, (K // G, N)).astype(np.float16)
    stored = (z - (0 if v2 else 1)) & 15  # AutoGPTQ v1 stores zeros - 1
    w = gptq_weights(autogptq_pack(q, 0), autogptq_pack(stored, 1), s, g_idx=np.arange(K) // G,
                     zero_offset=0 if v2 else 1)
    assert w.inputs["zeros"].shape == (K // G, N) and w.attrs["pack_axis"] == 0
    b = tf.GraphBuilder("gptq")
    t = tf.dequantize(b.input("qweight", (K // 8, N), "i32"), b.input("scales", (K // G, N), "f16"),
                      b.input("zeros", (K // G, N), "i32"), shape=(K, N), bits=4, group_size=G, pack_axis=0)
    want = (q - np.repeat(z, G, 0)) * np.repeat(s.astype(np.float64), G, 0)
    np.testing.assert_allclose(dequantized(t, w.inputs, "gptq"), want, rtol=1e-3, atol=1e-6)


def test_act_order_and_malformed_gptq_are_refused_by_name() -> None:
    qw, qz, s = np.zeros((K // 8, N), np.int32), np.zeros((K // G, N // 8), np.int32), np.ones((K // G, N))
    g_idx = np.random.default_rng(2).permutation(np.arange(K) // G)
    with pytest.raises(TilefuseError, match="act-order"):
        gptq_weights(qw, qz, s, g_idx=g_idx)
    with pytest.raises(TilefuseError, match=r"qzeros \[4, 4\]"):
        gptq_weights(qw, np.zeros((K // G, 4), np.int32), s)
    with pytest.raises(TilefuseError, match="qweight: expected a 2-d int32"):
        awq_weights(qw.astype(np.int64), qz, s)


def bnb_nf4(wt: np.ndarray, nested_code: np.ndarray) -> tuple[np.ndarray, ...]:
    """bitsandbytes quantize_4bit(nf4, blocksize=64, compress_statistics=True) on W [out, in]."""
    flat = wt.reshape(-1, 64)
    absmax = np.abs(flat).max(1)
    codes = np.abs(flat[..., None] / absmax[:, None, None] - np.array(NF4_CODEBOOK)).argmin(-1).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    offset = absmax.mean()
    nested = (absmax - offset).reshape(-1, 256)
    s2 = np.abs(nested).max(1)
    acodes = np.abs((nested / s2[:, None])[..., None] - nested_code).argmin(-1).astype(np.uint8).reshape(-1)
    absmax_hat = nested_code[acodes] * np.repeat(s2, 256) + offset
    w_hat = np.array(NF4_CODEBOOK)[codes].reshape(-1, 64) * absmax_hat[:, None]
    return packed, acodes, s2.astype(np.float32), np.float32(offset), w_hat.reshape(wt.shape)


def test_bitsandbytes_nf4_checkpoint() -> None:
    rng = np.random.default_rng(3)
    out_f, in_f = 128, 256  # 512 blocks of 64: two nested blocks of 256
    nested_code = np.sort(np.concatenate([np.linspace(-1, 1, 255), [0.0]])).astype(np.float32)
    packed, acodes, s2, off, w_hat = bnb_nf4(rng.standard_normal((out_f, in_f)), nested_code)
    w = nf4_weights(packed, acodes, s2, off, nested_code, (out_f, in_f), code=np.array(NF4_CODEBOOK))
    b = tf.GraphBuilder("nf4")
    i = w.inputs
    t = tf.dequantize_nf4(b.input("qweight", i["qweight"].shape, "u8"), b.input("absmax", i["absmax"].shape, "u8"),
                          b.input("absmax2", i["absmax2"].shape, "f32"), b.input("offset", (1,), "f32"),
                          out_dtype="f32", **w.attrs)
    np.testing.assert_allclose(dequantized(t, i, "nf4"), w_hat, rtol=1e-5, atol=1e-5)
    with pytest.raises(TilefuseError, match="not the NF4 code map"):
        nf4_weights(packed, acodes, s2, off, nested_code, (out_f, in_f), code=np.linspace(-1, 1, 16))


def test_w4a16_example_runs_at_a_small_size(capsys) -> None:
    from tilefuse.cli import main

    sizes = ["--set", "T=3", "--set", "H=256", "--set", "I=384", "--set", "H8=32", "--set", "I8=48",
             "--set", "HG=2", "--set", "IG=3"]
    assert main(["run", "examples/w4a16_mlp.tf", "--target", "interp", *sizes]) == 0
    assert "OK" in capsys.readouterr().out


def test_random_inputs_of_dequantize_operands_are_valid_codes_and_small_scales() -> None:
    from tilefuse.ir.sampling import random_inputs

    b = tf.GraphBuilder("gptq_z")
    w = tf.dequantize(b.input("qw", (K // 8, N), "i32"), b.input("s", (K // G, N), "f16"),
                      b.input("z", (K // G, N), "i32"), shape=(K, N), bits=4, group_size=G, pack_axis=0)
    b.output("y", b.input("x", (2, K), "f16") @ w)
    ins = random_inputs(b.build(), 0)
    assert ins["z"].min() >= 0 and ins["z"].max() < 16  # zero points are 4-bit codes
    assert ins["qw"].min() < -(1 << 28) and ins["qw"].max() > (1 << 28)  # every bit of the words is random
    assert np.std(ins["s"]) < 2.0 / (np.sqrt(K) * 8)  # scales sized so the weights are ~ 1/sqrt(K)
