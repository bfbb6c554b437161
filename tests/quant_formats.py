"""Quantized-weight test cases: graphs `x @ dequantize(...)` of every integer/codebook format, with fresh random
packed inputs built the way AWQ, GPTQ and bitsandbytes pack them (full-range codes, never zeros)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import tilefuse as tf

AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def pack_stream(codes: np.ndarray, bits: int, cbits: int, axis: int, order: tuple[int, ...] | None = None,
                dtype: type = np.int32) -> np.ndarray:
    """Pack unsigned codes along `axis` as a little-endian bit stream, element j of a unit in slot order[j]
    (the IR's layout: AWQ's nibble order, GPTQ's int3 in three words, bitsandbytes' high nibble first)."""
    codes = np.moveaxis(np.asarray(codes, dtype=np.int64), axis, -1)
    lcm = int(np.lcm(bits, cbits))
    e, c = lcm // bits, lcm // cbits
    order = order or tuple(range(e))
    units = codes.reshape(*codes.shape[:-1], -1, e)
    acc = np.zeros(units.shape[:-1], dtype=object)
    for j in range(e):
        acc = acc + (units[..., j].astype(object) << (bits * order[j]))
    words = [(acc >> (cbits * w)) & ((1 << cbits) - 1) for w in range(c)]
    out = np.stack(words, axis=-1).reshape(*codes.shape[:-1], -1).astype(np.uint64)
    unsigned = {8: np.uint8, 16: np.uint16, 32: np.uint32}[cbits]
    return np.moveaxis(out.astype(unsigned).view(dtype), -1, axis)


@dataclass
class Case:
    """A graph builder (x, weight inputs) and a function making its inputs from a seed."""

    name: str
    act: str
    weight: Callable[[tf.GraphBuilder, int, int], tf.Tensor]
    inputs: Callable[[np.random.Generator, int, int], dict[str, np.ndarray]]


def _scales(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    # |w| ~ 8 * s: keep x @ w of order one for K terms
    return rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape) / (8 * np.sqrt(k))


def awq(g: int = 128) -> Case:
    def weight(b: tf.GraphBuilder, k: int, n: int) -> tf.Tensor:
        return tf.dequantize_awq(b.input("qw", (k, n // 8), "i32"), b.input("qz", (k // g, n // 8), "i32"),
                                 b.input("s", (k // g, n), "f16"), group_size=g)

    def inputs(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
        return {"qw": pack_stream(rng.integers(0, 16, (k, n)), 4, 32, 1, AWQ_ORDER),
                "qz": pack_stream(rng.integers(0, 16, (k // g, n)), 4, 32, 1, AWQ_ORDER),
                "s": _scales(rng, (k // g, n), k)}

    return Case(f"awq_int4_g{g}", "f16", weight, inputs)


def gptq(bits: int, sym: bool, g: int = 128) -> Case:
    """GPTQ: codes packed along K in i32 (int3: 32 codes in three words), zeros as plain ints."""
    words = {4: 8, 3: 32, 2: 16}[bits]  # codes per packing unit
    rows = {4: 1, 3: 3, 2: 1}[bits]

    def weight(b: tf.GraphBuilder, k: int, n: int) -> tf.Tensor:
        qw = b.input("qw", (k // words * rows, n), "i32")
        z = None if sym else b.input("z", (k // g, n), "i32")
        return tf.dequantize(qw, b.input("s", (k // g, n), "f16"), z, shape=(k, n), bits=bits, group_size=g,
                             pack_axis=0)

    def inputs(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
        out = {"qw": pack_stream(rng.integers(0, 1 << bits, (k, n)), bits, 32, 0), "s": _scales(rng, (k // g, n), k)}
        if not sym:
            out["z"] = rng.integers(0, 1 << bits, (k // g, n)).astype(np.int32)
        return out

    return Case(f"gptq_int{bits}_{'sym' if sym else 'asym'}_g{g}", "f16", weight, inputs)


def sym_int4(g: int, act: str = "f16", out: str = "f16") -> Case:
    """Symmetric int4 (implicit zero 8) packed along N in i32, per-channel (G=-1: scales [N]) or per-group."""
    def weight(b: tf.GraphBuilder, k: int, n: int) -> tf.Tensor:
        grid = (n,) if g == -1 else (k // g, n)
        return tf.dequantize(b.input("qw", (k, n // 8), "i32"), b.input("s", grid, out), shape=(k, n), bits=4,
                             group_size=g, out_dtype=out)

    def inputs(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
        grid = (n,) if g == -1 else (k // g, n)
        return {"qw": pack_stream(rng.integers(0, 16, (k, n)), 4, 32, 1), "s": _scales(rng, grid, k)}

    return Case(f"sym_int4_g{g if g > 0 else 'ch'}_{act}", act, weight, inputs)


def int2_asym(g: int, packed_zeros: bool) -> Case:
    """BitDistiller int2: asymmetric, codes in u8 along N, zeros packed the same way or plain f16."""
    def weight(b: tf.GraphBuilder, k: int, n: int) -> tf.Tensor:
        z = b.input("z", (k // g, n // 4), "u8") if packed_zeros else b.input("z", (k // g, n), "f16")
        return tf.dequantize(b.input("qw", (k, n // 4), "u8"), b.input("s", (k // g, n), "f16"), z, shape=(k, n),
                             bits=2, group_size=g, zeros_packed=packed_zeros)

    def inputs(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
        zc = rng.integers(0, 4, (k // g, n))
        z = pack_stream(zc, 2, 8, 1, dtype=np.uint8) if packed_zeros else zc + rng.uniform(-0.5, 0.5, zc.shape)
        return {"qw": pack_stream(rng.integers(0, 4, (k, n)), 2, 8, 1, dtype=np.uint8), "z": z,
                "s": _scales(rng, (k // g, n), k) * 4}

    return Case(f"int2_asym_g{g}_{'packed' if packed_zeros else 'plain'}_zeros", "f16", weight, inputs)


def nf4(block: int = 64, dq_block: int = 256) -> Case:
    """QLoRA NF4 (bitsandbytes layout: u8 [K, N/2], first code in the high nibble, absmax per `block` along N
    as u8 codes of a 256-entry map times an f32 level-2 scale per `dq_block`, plus an offset), bf16 out."""
    scb = tuple(float(v) for v in np.sort(np.random.default_rng(7).uniform(-1, 1, 256)).astype(np.float32))

    def weight(b: tf.GraphBuilder, k: int, n: int) -> tf.Tensor:
        nblk = -(-(k * -(-n // block)) // dq_block)
        return tf.dequantize_nf4(b.input("qw", (k, n // 2), "u8"), b.input("ac", (k, -(-n // block)), "u8"),
                                 b.input("s2", (nblk,), "f32"), b.input("off", (1,), "f32"), shape=(k, n),
                                 block=block, dq_block=dq_block, scale_codebook=scb)

    def inputs(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
        nblk = -(-(k * -(-n // block)) // dq_block)
        return {"qw": pack_stream(rng.integers(0, 16, (k, n)), 4, 8, 1, (1, 0), dtype=np.uint8),
                "ac": rng.integers(0, 256, (k, -(-n // block))).astype(np.uint8),
                "s2": rng.uniform(0.5, 1.0, (nblk,)) / np.sqrt(k), "off": np.array([0.05 / np.sqrt(k)])}

    return Case(f"nf4_dq_b{block}", "bf16", weight, inputs)


def int8_per_channel(act: str = "f32") -> Case:
    """Weight-only int8: signed codes [K, N], one scale per output channel."""
    def weight(b: tf.GraphBuilder, k: int, n: int) -> tf.Tensor:
        return tf.dequantize(b.input("qw", (k, n), "i8"), b.input("s", (n,), act), shape=(k, n), bits=8,
                             group_size=-1, signed=True, out_dtype=act)

    def inputs(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
        return {"qw": rng.integers(-128, 128, (k, n)).astype(np.int8), "s": _scales(rng, (n,), k) / 16}

    return Case(f"int8_per_channel_{act}", act, weight, inputs)


def graph(case: Case, m: int, k: int, n: int, epilogue: bool = False, batch: tuple[int, ...] = ()) -> tf.Graph:
    """y = x @ dequantize(...) (with a bias and SiLU epilogue when asked)."""
    b = tf.GraphBuilder(case.name)
    x = b.input("x", (*batch, m, k), case.act)
    y = x @ case.weight(b, k, n)
    if epilogue:
        y = tf.silu(y + b.input("bias", (n,), case.act))
    b.output("y", y)
    return b.build()


def inputs(case: Case, g: tf.Graph, seed: int) -> dict[str, np.ndarray]:
    """Fresh random inputs of `g` (floats as float32, as the runtimes take them)."""
    rng = np.random.default_rng(seed)
    node = {n.attr("name"): n for n in g.inputs}
    k, n = node["x"].shape[-1], g.outputs[0][1].shape[-1]
    out = {name: v for name, v in case.inputs(rng, k, n).items()}
    out["x"] = rng.standard_normal(node["x"].shape)
    if "bias" in node:
        out["bias"] = rng.standard_normal((n,)) * 0.1
    return {name: v.astype(np.float32) if v.dtype.kind == "f" else v for name, v in out.items()}
