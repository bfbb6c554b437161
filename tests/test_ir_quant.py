"""The dequantize op: formats checked element by element against explicit loops on fresh data."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import VerifyError, dtypes as dt, parse_graph
from tilefuse.ir.reference import evaluate

RNG = np.random.default_rng(2024)


def f16(x):
    return np.asarray(x, dtype=np.float16).astype(np.float64)


def graph(build, specs):
    g = tf.GraphBuilder("deq")
    ts = [g.input(name, shape, d) for name, shape, d in specs]
    g.output("w", build(*ts))
    gr = g.build()
    assert parse_graph(gr.text).key == gr.key
    return gr


def awq_pack(intweight: np.ndarray) -> np.ndarray:
    """AWQ's own packing loop (WQLinear_GEMM.from_linear): slot i of word col holds column col*8+order[i]."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    rows, cols = intweight.shape
    q = np.zeros((rows, cols // 8), dtype=np.uint32)
    for col in range(cols // 8):
        for i in range(8):
            q[:, col] |= intweight[:, col * 8 + order_map[i]].astype(np.uint32) << np.uint32(i * 4)
    return q.view(np.int32)


def test_awq_w4():
    k, n, g = 256, 64, 128
    q = RNG.integers(0, 16, (k, n))
    z = RNG.integers(0, 16, (k // g, n))
    s = f16(RNG.uniform(0.001, 0.02, (k // g, n)))
    gr = graph(lambda qw, qz, sc: tf.dequantize_awq(qw, qz, sc, group_size=g),
               [("qweight", (k, n // 8), "i32"), ("qzeros", (k // g, n // 8), "i32"), ("scales", (k // g, n), "f16")])
    w = gr.output("w")
    assert (w.dtype, w.shape) == (dt.f16, (k, n))
    got = evaluate(gr, {"qweight": awq_pack(q), "qzeros": awq_pack(z), "scales": s})["w"]
    want = np.empty((k, n))
    for i in range(k):
        for j in range(n):
            want[i, j] = np.float16((q[i, j] - z[i // g, j]) * s[i // g, j])
    np.testing.assert_array_equal(got, want)


def pack_stream(codes: np.ndarray, bits: int, cbits: int, axis: int, order=None) -> np.ndarray:
    """Pack codes along `axis` as a little-endian bit stream, element j of a unit in slot order[j]."""
    codes = np.moveaxis(codes, axis, -1)
    lcm = np.lcm(bits, cbits)
    e, c = lcm // bits, lcm // cbits
    order = order or list(range(e))
    out = np.zeros((*codes.shape[:-1], codes.shape[-1] // e * c), dtype=object)
    for idx in np.ndindex(*codes.shape[:-1]):
        for u in range(codes.shape[-1] // e):
            acc = 0
            for j in range(e):
                acc |= int(codes[idx][u * e + j]) << (bits * order[j])
            for w in range(c):
                out[idx][u * c + w] = (acc >> (cbits * w)) & ((1 << cbits) - 1)
    np_t = {8: np.uint8, 32: np.uint32}[cbits]
    return np.moveaxis(out.astype(np_t), -1, axis)


@pytest.mark.parametrize("bits,axis,layout", [(4, 0, "group_k"), (2, 1, "group_n"), (4, 1, "group_k")])
def test_symmetric_u8_containers(bits, axis, layout):
    k, n, g = 64, 32, 16
    q = RNG.integers(0, 1 << bits, (k, n))
    grid = (k // g, n) if layout == "group_k" else (k, n // g)
    s = RNG.uniform(0.5, 2.0, grid).astype(np.float32).astype(np.float64)
    pshape = (k * bits // 8, n) if axis == 0 else (k, n * bits // 8)
    gr = graph(lambda p, sc: tf.dequantize(p, sc, shape=(k, n), bits=bits, group_size=g, scale_layout=layout,
                                           pack_axis=axis, out_dtype="f32"),
               [("p", pshape, "u8"), ("s", grid, "f32")])
    got = evaluate(gr, {"p": pack_stream(q, bits, 8, axis), "s": s})["w"]
    for i in range(k):
        for j in range(n):
            sc = s[i // g, j] if layout == "group_k" else s[i, j // g]
            assert got[i, j] == np.float32((q[i, j] - (1 << (bits - 1))) * sc)


def test_int3_gptq_stream_in_i32():
    k, n, g = 64, 8, 32
    q = RNG.integers(0, 8, (k, n))
    z = RNG.integers(0, 8, (k // g, n)).astype(np.int32)
    s = f16(RNG.uniform(0.01, 0.1, (k // g, n)))
    packed = pack_stream(q, 3, 32, 0).view(np.int32)
    assert packed.shape == (6, n)
    gr = graph(lambda p, sc, zz: tf.dequantize(p, sc, zz, shape=(k, n), bits=3, group_size=g, pack_axis=0),
               [("p", (6, n), "i32"), ("s", (k // g, n), "f16"), ("z", (k // g, n), "i32")])
    got = evaluate(gr, {"p": packed, "s": s, "z": z})["w"]
    want = np.array([[np.float16((q[i, j] - z[i // g, j]) * s[i // g, j]) for j in range(n)] for i in range(k)])
    np.testing.assert_array_equal(got, want)


def test_int8_per_channel_signed():
    k, n = 16, 24
    q = RNG.integers(-128, 128, (k, n)).astype(np.int8)
    s = RNG.uniform(0.001, 0.01, (n,)).astype(np.float32).astype(np.float64)
    gr = graph(lambda p, sc: tf.dequantize(p, sc, shape=(k, n), bits=8, group_size=-1, signed=True, out_dtype="f32"),
               [("p", (k, n), "i8"), ("s", (n,), "f32")])
    got = evaluate(gr, {"p": q, "s": s})["w"]
    for i in range(k):
        for j in range(n):
            assert got[i, j] == np.float32(int(q[i, j]) * s[j])


def test_nf4_double_quant():
    k, n, blk, dqb = 4, 256, 64, 8
    codes = RNG.integers(0, 16, (k, n))
    packed = ((codes[:, 0::2] << 4) | codes[:, 1::2]).astype(np.uint8)  # bitsandbytes: first code high nibble
    scb = np.sort(RNG.uniform(-1, 1, 256)).astype(np.float32).astype(np.float64)
    ac = RNG.integers(0, 256, (k, n // blk)).astype(np.uint8)
    s2 = RNG.uniform(0.01, 0.1, (2,)).astype(np.float32).astype(np.float64)
    off = np.array([0.05], dtype=np.float32).astype(np.float64)
    gr = graph(lambda p, a, b, o: tf.dequantize_nf4(p, a, b, o, shape=(k, n), block=blk, dq_block=dqb,
                                                    scale_codebook=tuple(scb)),
               [("p", (k, n // 2), "u8"), ("ac", (k, n // blk), "u8"), ("s2", (2,), "f32"), ("off", (1,), "f32")])
    got = evaluate(gr, {"p": packed, "ac": ac, "s2": s2, "off": off})["w"]
    for i in range(k):
        for j in range(n):
            byte = int(packed[i, j // 2])
            code = byte >> 4 if j % 2 == 0 else byte & 15
            b = i * (n // blk) + j // blk
            absmax = np.float32(scb[ac[i, j // blk]] * s2[b // dqb] + off[0])
            want = dt.round_to(np.array(tf.NF4_CODEBOOK[code] * float(absmax)), dt.bf16)
            assert got[i, j] == want, (i, j)


def test_fp8_block_scales():
    k, n, b = 256, 384, 128
    v = dt.round_to(RNG.standard_normal((k, n)) * 50, dt.f8e4m3)
    s = RNG.uniform(0.001, 0.01, (k // b, n // b)).astype(np.float32).astype(np.float64)
    gr = graph(lambda w, sc: tf.dequantize_fp8_block(w, sc, block=b, out_dtype="f32"),
               [("q", (k, n), "f8e4m3"), ("s", (k // b, n // b), "f32")])
    got = evaluate(gr, {"q": v, "s": s})["w"]
    idx = RNG.integers(0, [k, n], (500, 2))
    for i, j in idx:
        assert got[i, j] == np.float32(v[i, j] * s[i // b, j // b])


def test_verify_errors():
    g = tf.GraphBuilder("bad")
    qw = g.input("qw", (256, 8), "i32")
    qz = g.input("qz", (2, 8), "i32")
    sc = g.input("sc", (2, 64), "f16")
    with pytest.raises(VerifyError, match=r"dequantize of i32\[256, 8\]: packed i32\[256, 8\] should be \[256, 4\]"):
        tf.dequantize(qw, sc, qz, shape=(256, 32), zeros_packed=True)
    with pytest.raises(VerifyError, match=r"scales is f16\[2, 64\]; the grid needs \[4, 64\]"):
        tf.dequantize(qw, sc, qz, shape=(256, 64), group_size=64, zeros_packed=True)
    with pytest.raises(VerifyError, match=r"codebook needs 16 numbers for 4-bit codes, got 3"):
        tf.dequantize(qw, sc, shape=(256, 64), codebook=(0.0, 1.0, 2.0))
    with pytest.raises(VerifyError, match=r"pack_order \(0, 1\) must be a permutation of 0..7"):
        tf.dequantize(qw, sc, shape=(256, 64), pack_order=(0, 1))
    with pytest.raises(VerifyError, match=r"expected 3 operands \(packed, scales, zeros\)"):
        from tilefuse.ir import Op, make
        make(Op.DEQUANTIZE, [qw.node, sc.node], shape=(256, 64), symmetric=False)
