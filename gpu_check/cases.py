"""What gpu-check launches against the reference: each example's kernels and a small representative
graph per registered kernel family, at GPU sizes or (under the interpreter) small ones.

A case builds a graph and, where random inputs would not be valid (a paged KV cache needs page
tables), its inputs; otherwise the checker draws fresh random ones. Sizes are deliberately not
multiples of the default tiles, so masked edges are exercised."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.graph import Graph
from .family_cases import CASES as MORE_FAMILY_CASES

# (graph, inputs or None for fresh random ones) from (small, rng)
Builder = Callable[[bool, np.random.Generator], tuple[Graph, dict[str, Any] | None]]

# Example sizes: under the interpreter small enough for seconds; on a GPU the numpy float64 reference
# bounds them (32 heads x S^2 x D for the attention example). An example missing here runs at its
# own default sizes.
EXAMPLE_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "decoder_mlp": {"small": {"T": 4, "H": 64, "I": 96}, "gpu": {"T": 16, "H": 4096, "I": 11008}},
    "streaming_attention": {"small": {"S": 64, "D": 32}, "gpu": {"S": 1024, "D": 128}},
    "gcn_layer": {"small": {"E": 1500, "F": 16, "H": 16}, "gpu": {"E": 4096, "F": 64, "H": 32}},
    "splat_render": {"small": {"N": 128}, "gpu": {"N": 256}},  # the 64x48 image is fixed in the attributes
    # packed sizes are parameters of their own (the text form has no size arithmetic): H8 = H/8, HG = H/128
    "w4a16_mlp": {"small": {"T": 4, "H": 256, "I": 384, "H8": 32, "I8": 48, "HG": 2, "IG": 3}, "gpu": {}},
    "w8a8_linear": {"small": {"T": 5, "K": 256, "N": 72}, "gpu": {}},
}


def example_names(examples: Path) -> list[str]:
    """One case name per examples/*.tf file."""
    return [f"example:{p.stem}" for p in sorted(examples.glob("*.tf"))]


def example_graph(examples: Path, stem: str, small: bool) -> Graph:
    """The example `stem` at the sizes for this mode."""
    from ..ir.text import load_graph

    sizes = EXAMPLE_SIZES.get(stem, {}).get("small" if small else "gpu", {})
    return load_graph(str(examples / f"{stem}.tf"), sizes)


def _pointwise(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    import tilefuse as tf

    r, c = (33, 70) if small else (1000, 3000)
    g = tf.GraphBuilder("gc_pointwise")
    x, b = g.input("x", (r, c), "f16"), g.input("b", (c,), "f16")
    g.output("y", tf.silu(x * 2.0 + b))
    return g.build(), None


def _reduction(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    import tilefuse as tf

    r, c = (19, 100) if small else (1000, 4000)
    g = tf.GraphBuilder("gc_reduction")
    x, w = g.input("x", (r, c), "f16"), g.input("w", (c,), "f16")
    g.output("norm", tf.rms_norm(x, w))
    g.output("probs", tf.softmax(g.input("s", (r, c), "f32")))
    return g.build(), None


def _matmul(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    import tilefuse as tf

    m, n, k = (67, 80, 48) if small else (1000, 1536, 1000)
    g = tf.GraphBuilder("gc_matmul")
    a, w, b = g.input("a", (m, k), "f16"), g.input("w", (k, n), "f16"), g.input("bias", (n,), "f16")
    g.output("y", tf.gelu(a @ w + b))
    return g.build(), None


def _attention(streaming: bool) -> Builder:
    def build(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
        import tilefuse as tf

        b, hq, hkv, s, d = (1, 4, 2, 100, 32) if small else (2, 8, 2, 1000, 128)
        g = tf.GraphBuilder("gc_attention_streaming" if streaming else "gc_attention_causal")
        q, k, v = g.input("q", (b, hq, s, d), "f16"), g.input("k", (b, hkv, s, d), "f16"), g.input(
            "v", (b, hkv, s, d), "f16")
        mask = tf.streaming_mask(8, 24, s, s) if small and streaming else (
            tf.streaming_mask(64, 256, s, s) if streaming else tf.causal_mask(s, s))
        g.output("out", tf.attention(q, k, v, mask_mod=mask))
        return g.build(), None

    return build


def _attention_backward(small: bool, rng: np.random.Generator) -> tuple[Graph, None]:
    import tilefuse as tf

    b, h, s, d = (1, 2, 70, 32) if small else (1, 4, 500, 64)
    g = tf.GraphBuilder("gc_attention_backward")
    q, k, v, do = (g.input(n, (b, h, s, d), "f16") for n in ("q", "k", "v", "do"))
    mask = tf.causal_mask(s, s)
    out, lse = tf.attention(q, k, v, mask_mod=mask, return_lse=True)
    for name, t in zip(("dq", "dk", "dv"), tf.attention_backward(q, k, v, out, do, lse, mask_mod=mask)):
        g.output(name, t)
    return g.build(), None


def _paged_decode(small: bool, rng: np.random.Generator) -> tuple[Graph, dict[str, Any]]:
    import tilefuse as tf

    b, hq, hkv, d, ps, lens = (3, 4, 2, 32, 16, (40, 17, 1)) if small else (4, 32, 8, 128, 16, (1000, 517, 64, 1))
    q = rng.standard_normal((b, hq, 1, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, hkv, max(lens), d)).astype(np.float32) for _ in range(2))
    kp, vp, ip, ix, ll = tf.paginate(k, v, ps, rng, lens)  # unused page slots are NaN
    ins = {"q": q, "kp": kp, "vp": vp, "ip": ip, "ix": ix, "ll": ll}
    g = tf.GraphBuilder("gc_paged_decode")
    t = {n: g.input(n, a.shape, "f16" if a.dtype == np.float32 else "i32") for n, a in ins.items()}
    g.output("out", tf.paged_attention(t["q"], t["kp"], t["vp"], t["ip"], t["ix"], t["ll"]))
    return g.build(), ins


# Case name -> builder. Every registered family must be launched by at least one case (gpu-check
# fails otherwise), so a new family adds its representative graph here.
FAMILY_CASES: dict[str, Builder] = {
    "family:rowwise_pointwise": _pointwise,
    "family:rowwise_reduction": _reduction,
    "family:matmul_epilogue": _matmul,
    "family:attention_causal": _attention(streaming=False),
    "family:attention_streaming": _attention(streaming=True),
    "family:attention_backward": _attention_backward,
    "family:paged_decode": _paged_decode,
}
FAMILY_CASES.update(MORE_FAMILY_CASES)


def build_case(name: str, small: bool, examples: Path, seed: int) -> tuple[Graph, dict[str, Any] | None]:
    """The graph of case `name` and its inputs (None: draw random ones with `seed`)."""
    rng = np.random.default_rng(seed)
    kind, _, stem = name.partition(":")
    if kind == "example":
        return example_graph(examples, stem, small), None
    if name not in FAMILY_CASES:
        raise KeyError(f"no gpu-check case {name!r}; known: {', '.join(FAMILY_CASES)} and example:<stem>")
    return FAMILY_CASES[name](small, rng)
