"""gpu-check's representative graphs for the quantized, sparse and splatting families, with valid inputs
(packed codes, sparse structures and visible Gaussians that random draws would not give)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ir.graph import Graph


def pack_int4_k(codes: np.ndarray) -> np.ndarray:
    """Unsigned 4-bit codes [K, N] packed along K into int32 [K/8, N], element j in bits 4j..4j+3."""
    k, n = codes.shape
    units = codes.astype(np.uint64).reshape(k // 8, 8, n)
    words = sum(units[:, j, :] << np.uint64(4 * j) for j in range(8))
    return np.asarray(words, dtype=np.uint64).astype(np.uint32).view(np.int32)


def quant_matmul(small: bool, rng: np.random.Generator) -> tuple[Graph, dict[str, Any]]:
    """x @ dequantize(GPTQ-style symmetric int4, G=128) + bias, as one quant_matmul kernel."""
    import tilefuse as tf

    m, k, n, grp = (5, 256, 72, 128) if small else (16, 4096, 4096, 128)
    g = tf.GraphBuilder("gc_quant_matmul")
    w = tf.dequantize(g.input("qw", (k // 8, n), "i32"), g.input("s", (k // grp, n), "f16"), shape=(k, n),
                      bits=4, group_size=grp, pack_axis=0)
    g.output("y", g.input("x", (m, k), "f16") @ w + g.input("bias", (n,), "f16"))
    ins = {"qw": pack_int4_k(rng.integers(0, 16, (k, n))),
           "s": (rng.uniform(0.2, 1.0, (k // grp, n)) / (8 * math.sqrt(k))).astype(np.float32),
           "x": rng.standard_normal((m, k)).astype(np.float32), "bias": rng.standard_normal(n).astype(np.float32)}
    return g.build(), ins


def quant_matmul_fp8(small: bool, rng: np.random.Generator) -> tuple[Graph, dict[str, Any]]:
    """Block-scaled FP8 (DeepSeek-V3 layout: the weight [N, K] with 128 x 128 block scales, activations with a
    scale per token and 128 K): one quant_matmul kernel, native e4m3 wgmma on sm_90 at this M."""
    import tilefuse as tf

    m, k, n = (5, 384, 200) if small else (256, 4096, 4096)
    g = tf.GraphBuilder("gc_quant_matmul_fp8")
    x = tf.dequantize_fp8_act(g.input("xq", (m, k), "f8e4m3"), g.input("sx", (m, -(-k // 128)), "f32"))
    w = tf.dequantize_fp8_block(g.input("wq", (n, k), "f8e4m3"), g.input("sw", (-(-n // 128), -(-k // 128)), "f32"),
                                out_dtype="f32", layout="nk")
    g.output("y", tf.matmul(x, w, out_dtype="bf16"))
    # +-(1..15) x 2^-3..2^4: every one exact in e4m3 (4 significant bits, at most 240 < 448)
    shape = (m + n, k)
    codes = rng.choice([-1.0, 1.0], shape) * rng.integers(1, 16, shape) * 2.0 ** rng.integers(-3, 5, shape)
    ins = {"xq": codes[:m].astype(np.float32), "wq": codes[m:].astype(np.float32),
           "sx": rng.uniform(0.5, 1.5, (m, -(-k // 128))).astype(np.float32) / (64 * k ** 0.25),
           "sw": rng.uniform(0.5, 1.5, (-(-n // 128), -(-k // 128))).astype(np.float32) / (64 * k ** 0.25)}
    return g.build(), ins


def spmm_csr(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    """relu(CSR @ dense + bias); ir.sampling draws a valid power-law structure."""
    import tilefuse as tf

    m, k, n, nnz = (37, 29, 45, 200) if small else (20000, 4096, 128, 400000)
    g = tf.GraphBuilder("gc_spmm_csr")
    a = tf.sparse_csr(g.input("ip", (m + 1,), "i32"), g.input("ix", (nnz,), "i32"), g.input("v", (nnz,), "f32"),
                      (m, k))
    g.output("y", tf.relu(tf.spmm(a, g.input("b", (k, n), "f32")) + g.input("bias", (n,), "f32")))
    return g.build(), None


def spmm_24(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    """2:4 semi-structured weights @ dense (decompressed in registers, then tl.dot)."""
    import tilefuse as tf

    m, k, n = (48, 64, 40) if small else (4096, 4096, 16)
    g = tf.GraphBuilder("gc_spmm_24")
    w = tf.sparse_24(g.input("values", (m, k // 2), "f16"), g.input("meta", (m, k // 2), "u8"))
    g.output("y", tf.spmm(w, g.input("b", (k, n), "f16")))
    return g.build(), None


def sddmm_csr(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    """(a @ b^T) at a CSR pattern's nonzeros."""
    import tilefuse as tf

    m, n, d, nnz = (30, 26, 16, 150) if small else (8192, 8192, 64, 200000)
    g = tf.GraphBuilder("gc_sddmm")
    pat = tf.sparse_csr(g.input("ip", (m + 1,), "i32"), g.input("ix", (nnz,), "i32"),
                        g.input("v", (nnz,), "f32"), (m, n))
    g.output("s", tf.sddmm(g.input("a", (m, d), "f32"), g.input("b", (n, d), "f32"), pat))
    return g.build(), None


def _scene(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """n Gaussians around and in front of a camera looking down +z (some behind it), pinhole intrinsics."""
    means = np.column_stack([rng.uniform(-2.5, 2.5, n), rng.uniform(-2, 2, n), rng.uniform(-0.8, 6, n)])
    view = np.eye(4)
    view[:3, 3] = (0.2, -0.1, 0.5)
    return {"means": means.astype(np.float32), "scales": rng.uniform(0.02, 0.25, (n, 3)).astype(np.float32),
            "quats": rng.standard_normal((n, 4)).astype(np.float32),
            "opac": rng.uniform(0.2, 1.0, n).astype(np.float32), "view": view.astype(np.float32),
            "K": np.array([[55.0, 0, 31.0], [0, 50.0, 25.0], [0, 0, 1]], dtype=np.float32)}


def _size(small: bool) -> tuple[int, int, int]:
    return (300, 64, 48) if small else (100000, 1920, 1080)


def splat_project(small: bool, rng: np.random.Generator) -> tuple[Graph, dict[str, Any]]:
    """Projection of a synthetic scene (pinhole) to means2d, conics, depths and radii."""
    import tilefuse as tf

    n, w, h = _size(small)
    ins = _scene(rng, n)
    g = tf.GraphBuilder("gc_splat_project")
    t = {name: g.input(name, a.shape, "f32") for name, a in ins.items()}
    outs = tf.project_gaussians(t["means"], t["scales"], t["quats"], t["opac"], t["view"], t["K"], width=w, height=h)
    for name, out in zip(("means2d", "conics", "depths", "radii"), outs):
        g.output(name, out)
    return g.build(), ins


def splat_raster(small: bool, rng: np.random.Generator) -> tuple[Graph, dict[str, Any]]:
    """Tile binning, sort and front-to-back compositing of the reference projection of a synthetic scene."""
    import tilefuse as tf
    from tilefuse.ir.reference import evaluate

    n, w, h = _size(small)
    proj_graph, scene = splat_project(small, rng)
    proj = evaluate(proj_graph, scene)
    ins = {"m2d": proj["means2d"], "con": proj["conics"], "col": rng.random((n, 3)), "opac": scene["opac"],
           "dep": np.maximum(proj["depths"], 0.0), "rad": proj["radii"].astype(np.int32)}
    ins = {k: (v if k == "rad" else np.asarray(v, dtype=np.float32)) for k, v in ins.items()}
    g = tf.GraphBuilder("gc_splat_raster")
    t = {name: g.input(name, a.shape, "i32" if name == "rad" else "f32") for name, a in ins.items()}
    outs = tf.rasterize_gaussians(t["m2d"], t["con"], t["col"], t["opac"], t["dep"], t["rad"], width=w, height=h)
    for name, out in zip(("img", "T"), outs):
        g.output(name, out)
    return g.build(), ins


def splat_backward(small: bool, rng: np.random.Generator) -> tuple[Graph, dict[str, Any]]:
    """Projection and rasterization of a synthetic scene, then both backward ops (splat_backward) for a
    random image gradient: the forward's final T and last contributors are computed in the graph (128
    Gaussians under the interpreter: four kernels run, the kernel step's time cap is shared)."""
    import tilefuse as tf

    n, w, h = (128, 64, 48) if small else _size(small)
    ins: dict[str, Any] = {**_scene(rng, n), "col": rng.random((n, 3)).astype(np.float32),
                           "gimg": rng.standard_normal((h, w, 3)).astype(np.float32)}
    g = tf.GraphBuilder("gc_splat_backward")
    t = {name: g.input(name, a.shape, "f32") for name, a in ins.items()}
    m2d, con, dep, rad = tf.project_gaussians(t["means"], t["scales"], t["quats"], t["opac"], t["view"], t["K"],
                                              width=w, height=h)
    raster = tf.rasterize_gaussians(m2d, con, t["col"], t["opac"], dep, rad, width=w, height=h,
                                    last_contributor=True)
    for name, grad in tf.splat_backward(raster, t["gimg"]).items():
        if name in ("means3d", "scales", "quats", "colors", "opacities"):
            g.output(f"d_{name}", grad)
    return g.build(), ins


def spmm_bsr(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    """BSR (32x32 blocks, f16) @ dense: one tl.dot per stored block."""
    import tilefuse as tf

    m, k, n, nnzb = (96, 64, 40, 4) if small else (4096, 4096, 128, 1600)
    g = tf.GraphBuilder("gc_spmm_bsr")
    w = tf.sparse_bsr(g.input("ip", (m // 32 + 1,), "i32"), g.input("ix", (nnzb,), "i32"),
                      g.input("v", (nnzb, 32, 32), "f16"), (m, k), (32, 32))
    g.output("y", tf.spmm(w, g.input("b", (k, n), "f16")))
    return g.build(), None


def graph_attention(small: bool, rng: np.random.Generator, probs: bool = False) -> tuple[Graph, None]:
    """SDDMM -> edge softmax -> SpMM: one sparse_attention kernel, or (probs=True: the probabilities are an
    output too) a sparse_softmax kernel with the SDDMM fused in and an SpMM."""
    import tilefuse as tf

    m, d, nnz = (30, 16, 150) if small else (16384, 64, 400000)
    g = tf.GraphBuilder("gc_gat_probs" if probs else "gc_gat")
    ip, ix = g.input("ip", (m + 1,), "i32"), g.input("ix", (nnz,), "i32")
    q, k = g.input("q", (m, d), "f32"), g.input("k", (m, d), "f32")
    scores = tf.sddmm(q, k, tf.sparse_csr(ip, ix, g.input("v", (nnz,), "f32"), (m, m))) * (1.0 / math.sqrt(d))
    p = tf.sparse_softmax(tf.sparse_csr(ip, ix, scores, (m, m)))
    if probs:
        g.output("p", p)
    g.output("y", tf.spmm(tf.sparse_csr(ip, ix, p, (m, m)), g.input("x", (m, d), "f32")))
    return g.build(), None


def graph_attention_probs(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    """graph_attention with the probabilities an output (sddmm + softmax in one kernel, then spmm)."""
    return graph_attention(small, rng, probs=True)


CASES = {"family:quant_matmul": quant_matmul, "family:quant_matmul_fp8": quant_matmul_fp8, "family:spmm_csr": spmm_csr,
         "family:spmm_24": spmm_24, "family:spmm_bsr": spmm_bsr, "family:sparse_attention": graph_attention,
         "family:sparse_softmax": graph_attention_probs, "family:sddmm": sddmm_csr,
         "family:splat_project": splat_project, "family:splat_raster": splat_raster,
         "family:splat_backward": splat_backward}
