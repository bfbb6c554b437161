"""Block-scaled FP8 GEMM test graphs and inputs (DeepSeek-V3 / DeepGEMM style): e4m3 activations [M, K] with a
scale per token and 128-K group, e4m3 weights with a scale per 128 x 128 block, stored [K, N] or as a
checkpoint's [N, K]. Codes are drawn over every finite e4m3 bit pattern (subnormals and +-448 included)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

import tilefuse as tf


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fp8_graph(m: int, k: int, n: int, layout: str = "kn", out: str = "f32", epilogue: bool = False) -> tf.Graph:
    """y = dequantize_fp8_act(xq, sx) @ dequantize_fp8_block(wq, sw) (+ bias, SiLU)."""
    b = tf.GraphBuilder(f"fp8_{layout}")
    x = tf.dequantize_fp8_act(b.input("xq", (m, k), "f8e4m3"), b.input("sx", (m, cdiv(k, 128)), "f32"))
    wshape, sshape = (k, n), (cdiv(k, 128), cdiv(n, 128))
    if layout == "nk":
        wshape, sshape = wshape[::-1], sshape[::-1]
    w = tf.dequantize_fp8_block(b.input("wq", wshape, "f8e4m3"), b.input("sw", sshape, "f32"), out_dtype="f32",
                                layout=layout)
    y = tf.matmul(x, w, out_dtype=out)
    if epilogue:
        y = tf.silu(y + b.input("bias", (n,), out))
    b.output("y", y)
    return b.build()


def fp8_codes(rng: np.random.Generator, shape: tuple[int, ...], fmt: type = ml_dtypes.float8_e4m3fn) -> np.ndarray:
    """Random fp8 values (as float32) over every finite bit pattern of `fmt`."""
    finite = np.arange(256, dtype=np.uint8).view(fmt)
    finite = finite[np.isfinite(finite.astype(np.float32))]
    return finite[rng.integers(0, finite.size, shape)].astype(np.float32)


def fp8_inputs(g: tf.Graph, seed: int) -> dict[str, np.ndarray]:
    """Fresh inputs for fp8_graph: full-range codes, positive scales sized so that y is of order one."""
    rng = np.random.default_rng(seed)
    node = {n.attr("name"): n for n in g.inputs}
    k = node["xq"].shape[1]
    out = {"xq": fp8_codes(rng, node["xq"].shape), "wq": fp8_codes(rng, node["wq"].shape),
           # e4m3 codes drawn over all patterns have an rms of ~130: scale both sides to rms ~ k^-1/4
           "sx": rng.uniform(0.5, 1.5, node["sx"].shape).astype(np.float32) / (130 * k ** 0.25),
           "sw": rng.uniform(0.5, 1.5, node["sw"].shape).astype(np.float32) / (130 * k ** 0.25)}
    if "bias" in node:
        out["bias"] = (rng.standard_normal(node["bias"].shape) * 0.1).astype(np.float32)
    return out


def fp8_mismatch(got: np.ndarray, want: np.ndarray) -> float:
    """DeepGEMM's check: 1 - 2<x, y> / (|x|^2 + |y|^2) (REFERENCES.md: < 1e-3 for FP8 GEMMs)."""
    x, y = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    return float(1.0 - 2.0 * np.dot(x, y) / (np.dot(x, x) + np.dot(y, y)))
