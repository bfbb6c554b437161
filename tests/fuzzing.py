"""Mutation fuzzing of the text form through the whole pipeline, shared by tests/test_fuzz.py (bounded,
in `make test`) and bench/fuzz_campaign.py (long budget).

A mutant is a seed graph's text (an example .tf file, a golden test graph, or a random graph built with
GraphBuilder) after a few mutations: character edits, token deletions/duplications/swaps, tokens replaced
by others of the text form's vocabulary, and numbers replaced by values at the edges of every integer type
(and floats, nan, inf). `check_text` takes it through parse -> round trip -> verify/fuse/partition -> the
cpu (TVM schedule), interp (Triton source) and sm_90 (Triton source + launch plan) kernels, stopping
before any compiler runs. Each step either succeeds or raises TilefuseError; anything else is a crash,
named by its signature: the exception type and the innermost frame inside the library."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package `tilefuse`

# Values at the edges of every integer type (and beyond), and floats where integers are expected.
_INT_EDGES = [0, 1, 2, 3, 7, 127, 128, 255, 256, 2**15 - 1, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
              2**63 - 1, 2**63, 2**64, 10**30, 10**400]
EDGE_NUMBERS = [str(v) for v in _INT_EDGES] + [str(-v) for v in _INT_EDGES if v] + \
    ["1.5", "0.5", "-0.0", "1e-45", "1e308", "1e999", "-1e999", "nan", "inf", "-inf", "1e+30", "0x10", "1_000"]

# Identifiers of the text form: op names, dtypes, attribute names, expression heads, keywords.
VOCAB = ["graph", "input", "output", "pointwise", "reduce", "matmul", "reshape", "permute", "expand", "slice",
         "attention", "attention_bwd", "paged_attention", "result", "copy", "dequantize", "spmm", "sddmm",
         "f16", "bf16", "f32", "f64", "i8", "i16", "i32", "i64", "u8", "int4", "uint4", "int2", "bool", "f8e4m3",
         "f8e5m2", "expr", "op", "axes", "keepdim", "out_dtype", "trans_a", "trans_b", "shape", "perm", "starts",
         "stops", "steps", "scale", "mask_mod", "score_mod", "results", "index", "return_lse", "true", "false",
         "none", "sum", "max", "min", "mean", "add", "sub", "mul", "div", "where", "cast", "load", "lt", "le",
         "gt", "eq", "and", "or", "not", "exp", "log", "rsqrt", "sigmoid", "tanh", "select", "bitcast", "shl",
         "q_idx", "kv_idx", "h", "b", "score", "quantize", "group_size", "round"]
CHARS = list("()[]{}%$:,=\"-+.# \n0123456789abcdefxyzT_") + ["\x00", "\t", "é", "\u00b2", "\ufeff", "\\"]

_TOKEN = re.compile(r'%[\w.]+|\$\d+|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\w+|"[^"\n]*"|\s+|.', re.S)
_NUMBER = re.compile(r"(?<![\w$%.])-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


# ---- seeds -------------------------------------------------------------------------------------------
def example_texts() -> list[str]:
    """The example programs (examples/*.tf), in name order."""
    return [p.read_text() for p in sorted((ROOT / "examples").glob("*.tf"))]


def golden_texts() -> list[str]:
    """Every graph the test suite compiles (tests/golden/kernel_keys.json): one or more of each family."""
    golden = json.loads((ROOT / "tests" / "golden" / "kernel_keys.json").read_text())
    return [golden[k]["text"] for k in sorted(golden)]


_DTYPES = ["f32", "f16", "bf16", "i32", "i8", "f64", "bool", "u8"]
_DIMS = [1, 2, 3, 4, 7, 8, 16, 17, 32, 33, 64, 100, 128]


def random_graph_text(rng: random.Random) -> str:
    """The text of a small random graph built with GraphBuilder (pointwise, reductions, matmuls, views)."""
    from tilefuse.errors import TilefuseError
    from tilefuse.frontend import GraphBuilder

    b = GraphBuilder(rng.choice(["g", "rand", "fz"]))
    rank = rng.randint(1, 4)
    shape = tuple(rng.choice(_DIMS) for _ in range(rank))
    pool = [b.input("x0", shape, rng.choice(_DTYPES[:3]))]
    for i in range(rng.randint(1, 6)):
        try:
            pool.append(_random_op(rng, b, pool, i))
        except TilefuseError:
            continue  # the builder refused an ill-typed combination: draw the next op
    outs = pool[-rng.randint(1, min(2, len(pool))):]
    for i, t in enumerate(outs):
        b.output(f"y{i}", t)
    try:
        return str(b.build().text)
    except TilefuseError:
        b = GraphBuilder("g")
        b.output("y", pool[0] + 1.0)
        return str(b.build().text)


def _random_op(rng: random.Random, b: object, pool: list, i: int) -> object:
    """One op over tensors of `pool` (new inputs are declared on `b` where an operand is missing)."""
    import tilefuse.frontend as tf

    x = rng.choice(pool)
    kinds = ["unary", "binary", "scalar", "reduce", "softmax", "matmul", "permute", "reshape", "slice", "cast",
             "where", "norm", "quantize"]
    kind = rng.choice(kinds if x.ndim else ["unary", "scalar", "cast", "where"])
    if kind == "unary":
        return rng.choice([tf.exp, tf.relu, tf.silu, tf.sigmoid, tf.tanh, tf.abs, tf.sqrt, tf.log, tf.gelu])(x)
    if kind == "binary":
        y = rng.choice(pool) if rng.random() < 0.5 else b.input(f"in{i}", x.shape[rng.randrange(x.ndim + 1):],
                                                                 str(x.dtype))
        return rng.choice([tf.maximum, tf.minimum, lambda a, c: a + c, lambda a, c: a * c, lambda a, c: a / c])(x, y)
    if kind == "scalar":
        return x * rng.choice([0.5, 2, -1, 1e-3, 3.0])
    if kind == "reduce":
        return tf.reduce(x, rng.choice(["sum", "max", "min", "mean"]), rng.randrange(-x.ndim, x.ndim),
                         rng.random() < 0.5)
    if kind == "softmax":
        return tf.softmax(x, rng.randrange(-x.ndim, x.ndim))
    if kind == "matmul":
        w = b.input(f"w{i}", (x.shape[-1], rng.choice(_DIMS)), str(x.dtype))
        return tf.matmul(x, w, out_dtype=rng.choice([None, "f32", "f16"]))
    if kind == "permute":
        perm = list(range(x.ndim))
        rng.shuffle(perm)
        return tf.permute(x, perm)
    if kind == "reshape":
        n = 1
        for d in x.shape:
            n *= d
        return tf.reshape(x, (n,) if rng.random() < 0.5 else (1, n))
    if kind == "slice":
        starts = [rng.randrange(d) for d in x.shape]
        return tf.slice_(x, starts, [d for d in x.shape], [rng.choice([1, 1, 2]) for _ in x.shape])
    if kind == "quantize":
        from tilefuse.builders import quantize

        q, s = quantize(x, rng.choice(["i8", "f8e4m3"]), rng.choice([-1, -1, 2, 128]))
        return q if rng.random() < 0.5 else s
    if kind == "cast":
        return tf.cast(x, rng.choice(_DTYPES))
    if kind == "where":
        from tilefuse.ir import expr as ex

        return tf.apply(lambda a, c: ex.where(ex.binary(ex.E.GT, a, 0), a, c), x,
                        rng.choice(pool) if rng.random() < 0.3 else 0.0)
    w = b.input(f"n{i}", (x.shape[-1],), str(x.dtype))
    return tf.rms_norm(x, w) if rng.random() < 0.5 else tf.layer_norm(x, w, w)


# ---- mutators ----------------------------------------------------------------------------------------
def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _solid(toks: list[str]) -> list[int]:
    return [i for i, t in enumerate(toks) if not t.isspace()] or [0]


def char_insert(rng: random.Random, text: str) -> str:
    i = rng.randint(0, len(text))
    return text[:i] + rng.choice(CHARS) + text[i:]


def char_delete(rng: random.Random, text: str) -> str:
    i = rng.randrange(max(1, len(text)))
    return text[:i] + text[i + rng.choice([1, 1, 1, 2, 5, 20]):]


def char_replace(rng: random.Random, text: str) -> str:
    i = rng.randrange(max(1, len(text)))
    return text[:i] + rng.choice(CHARS) + text[i + 1:]


def token_delete(rng: random.Random, text: str) -> str:
    toks = _tokens(text)
    i = rng.choice(_solid(toks))
    return "".join(toks[:i] + toks[i + 1:])


def token_duplicate(rng: random.Random, text: str) -> str:
    toks = _tokens(text)
    i = rng.choice(_solid(toks))
    return "".join(toks[:i + 1] + [" " + toks[i] if toks[i][:1].isalnum() else toks[i]] + toks[i + 1:])


def token_swap(rng: random.Random, text: str) -> str:
    toks = _tokens(text)
    solid = _solid(toks)
    i, j = rng.choice(solid), rng.choice(solid)
    if i < len(toks) and j < len(toks):
        toks[i], toks[j] = toks[j], toks[i]
    return "".join(toks)


def token_copy(rng: random.Random, text: str) -> str:
    """A token replaced by another token of the same text (names, numbers, dtypes move around)."""
    toks = _tokens(text)
    solid = _solid(toks)
    if toks:
        toks[rng.choice(solid)] = toks[rng.choice(solid)]
    return "".join(toks)


def token_vocab(rng: random.Random, text: str) -> str:
    """An identifier replaced by another word of the text form (op, dtype, attribute, expression head)."""
    toks = _tokens(text)
    words = [i for i, t in enumerate(toks) if t[:1].isalpha()]
    if words:
        toks[rng.choice(words)] = rng.choice(VOCAB)
    return "".join(toks)


def number_edge(rng: random.Random, text: str) -> str:
    """A number replaced by a value at the edge of an integer type, a float, nan or inf."""
    spans = [m.span() for m in _NUMBER.finditer(text)]
    if not spans:
        return char_insert(rng, text)
    a, b = rng.choice(spans)
    return text[:a] + rng.choice(EDGE_NUMBERS) + text[b:]


def line_delete(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def line_duplicate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[rng.randrange(len(lines))])
    return "\n".join(lines)


MUTATORS = {f.__name__: f for f in (char_insert, char_delete, char_replace, token_delete, token_duplicate,
                                      token_swap, token_copy, token_vocab, number_edge, line_delete, line_duplicate)}
# Numbers and vocabulary swaps reach past the parser more often than character noise: weigh them up.
_WEIGHTED = list(MUTATORS) + ["number_edge"] * 3 + ["token_vocab", "token_copy"]


def mutate(rng: random.Random, text: str) -> tuple[str, list[str]]:
    """`text` after 1 to 3 random mutations (mostly one: a mutant that still parses reaches further),
    and their names in order."""
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        name = rng.choice(_WEIGHTED)
        text = MUTATORS[name](rng, text)
        names.append(name)
    return text, names
