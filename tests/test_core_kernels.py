"""Every fused-kernel kind at sizes that are not multiples of the blocks, f32/f16/bf16, fresh random
inputs, poisoned outputs, against the reference: under the Triton interpreter and on TVM/LLVM."""

import pytest

import tilefuse as tf
from tilefuse.schedule.config import Config

from helpers import check_graph

M, K, N = 37, 53, 71


def pointwise_chain(d):
    g = tf.GraphBuilder("chain")
    x = g.input("x", (M, K), d)
    y = g.input("y", (K,), d)
    g.output("z", tf.tanh(tf.silu(x) * y + 0.5) - tf.exp(tf.minimum(x, 1.0)))
    return g


def softmax(d):
    g = tf.GraphBuilder("softmax")
    g.output("y", tf.softmax(g.input("x", (M, K), d)))
    return g


def rmsnorm(d):
    g = tf.GraphBuilder("rmsnorm")
    g.output("y", tf.rms_norm(g.input("x", (M, K), d), g.input("w", (K,), d)))
    return g


def layernorm(d):
    g = tf.GraphBuilder("layernorm")
    g.output("y", tf.layer_norm(g.input("x", (M, K), d), g.input("w", (K,), d), g.input("b", (K,), d)))
    return g


def matmul_epilogue(d):
    g = tf.GraphBuilder("mm_epi")
    x, w, b, r = g.input("x", (M, K), d), g.input("w", (K, N), d), g.input("b", (N,), d), g.input("r", (M, N), d)
    g.output("y", tf.gelu(x @ w + b) + r)
    return g


def matmul_prologue(d):
    g = tf.GraphBuilder("mm_pro")
    x, s, w = g.input("x", (M, K), "f32"), g.input("s", (K,), "f32"), g.input("w", (N, K), d)
    g.output("y", tf.matmul(tf.cast(x * s, d), w, trans_b=True))
    return g


def batched_matmul(d):
    g = tf.GraphBuilder("bmm")
    a, b = g.input("a", (3, M, K), d), g.input("b", (K, N), d)
    g.output("y", tf.relu(a @ b))
    return g


KINDS = [pointwise_chain, softmax, rmsnorm, layernorm, matmul_epilogue, matmul_prologue, batched_matmul]
DTYPES = ["f32", "f16", "bf16"]


@pytest.mark.interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS, ids=lambda f: f.__name__)
def test_interp(kind, dtype):
    check_graph(tf.compile(kind(dtype), target="interp"), seed=hash((kind.__name__, dtype)) % 1000)


@pytest.mark.interp
def test_interp_split_k_and_small_tiles():
    g = matmul_epilogue("f32").build()
    cg = tf.compile(g, target="interp")
    mm = next(ck for ck in cg.kernels if ck.spec.family == "matmul")
    cfg = Config(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, GROUP_M=4, SPLIT_K=2, num_warps=2, num_stages=2)
    check_graph(tf.compile(g, target="interp", configs={mm.spec.name: cfg}), seed=5)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda f: f.__name__)
def test_tvm_cpu(kind, dtype):
    check_graph(tf.compile(kind(dtype), target="cpu"), seed=hash((kind.__name__, dtype, 1)) % 1000)


def test_narrow_pointwise_default_config_is_legal():
    """A pointwise kernel over many rows of 3 columns (an image's RGB gradient): the default BLOCK_R was
    1024 // 4 = 256, beyond the knob space's 128, so compiling it raised ConfigRejected."""
    g = tf.GraphBuilder("rgb_residual")
    a, b = g.input("a", (32, 32, 3), "f32"), g.input("b", (32, 32, 3), "f32")
    g.output("o", (a - b) * 2.0)
    for target in ("interp", "sm_90"):
        ck = tf.compile(g.build(), target=target, aot=False).kernels[0]
        assert ck.config["BLOCK_R"] == 128
