"""Causal attention with a dynamic sequence length compiles once and matches the reference at several
lengths under the interpreter (on cpu: tests/test_attention_cpu.py); the block-sparsity analysis falls back to
run time, per call's sizes, and the report says so. What still needs static sizes is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse import compiler
from tilefuse.compiler import check_against_reference
from tilefuse.ir.ops import VerifyError
from tilefuse.ir.sampling import random_inputs
from tilefuse.kernels.base import StaticSizeRequired
from tilefuse.kernels.lowering import LoweringError


def _graph(mask, hi=4096, heads=2):
    b = tf.GraphBuilder("causal")
    s = b.dyn("S", 1, hi, hint=64)
    q, k, v = (b.input(n, (1, heads, s, 32), "f16") for n in "qkv")
    b.output("o", tf.attention(q, k, v, mask_mod=mask(s)))
    return b.build()


def _ok(cg, g, s):
    rows = check_against_reference(cg, inputs=random_inputs(g.at({"S": s}), s))  # outputs poisoned first
    assert all(ok for *_, ok in rows), (s, rows)


def test_causal_attention_compiles_once_for_every_sequence_length(count_calls):
    g = _graph(lambda s: tf.causal_mask(s, s))
    builds = count_calls(compiler, "_build")
    cg = tf.compile(g, target="interp")
    at_compile = len(builds)
    assert at_compile == len(cg.distinct_kernels()) < len(cg.buckets)
    spec = cg.buckets[-1].compiled.kernels[0].spec
    for s in (1, 17, 64, 130):
        _ok(cg, g, s)
    assert len(builds) == at_compile  # no call built anything
    # one block-list entry per (block size, sizes) the calls used, analysed for those sizes
    assert {k[3:] for k in spec._aux} <= {(1, s, s) for s in (1, 17, 64, 130)} and len(spec._aux) >= 2
    assert "falls back to run time" in cg.report()


def test_sliding_window_with_a_dynamic_length_and_ragged_blocks():
    g = _graph(lambda s: tf.sliding_window_mask(24, s, s), hi=512)
    cg = tf.compile(g, target="interp", buckets=[64])
    for s in (5, 100):
        _ok(cg, g, s)


def test_what_still_needs_static_sizes_is_named():
    b = tf.GraphBuilder("docs")
    s = b.dyn("S", 1, 256)
    q, k, v = (b.input(n, (1, 2, s, 32), "f16") for n in "qkv")
    doc = b.input("doc", (s,), "i32")
    b.output("o", tf.attention(q, k, v, mask_mod=tf.document_mask(3, doc), extra=[doc]))
    with pytest.raises(StaticSizeRequired, match="mask reads operands .* depends on the dynamic parameter S"):
        tf.compile(b.build(), target="interp")
    b = tf.GraphBuilder("offset")
    s, t = b.dyn("S", 1, 64), b.dyn("T", 1, 64)
    with pytest.raises(VerifyError, match=r"Sk - Sq = -1\*S \+ T depends on a dynamic size"):
        tf.causal_mask(s, t)
    with pytest.raises(LoweringError, match="exceeds 2\\^31 - 1 elements at the top"):
        tf.compile(_graph(lambda s: tf.causal_mask(s, s), hi=2**26, heads=4), target="interp", buckets=[])


def test_static_attention_source_is_unchanged_by_the_dynamic_path():
    b = tf.GraphBuilder("st")
    q, k, v = (b.input(n, (1, 2, 100, 32), "f16") for n in "qkv")
    b.output("o", tf.attention(q, k, v, mask_mod=tf.causal_mask(100, 100)))
    src = tf.compile(b.build(), target="interp").kernels[0].source
    assert "* 2 + pid_m" in src and "< 100" in src and not np.any([" S" in ln for ln in src.splitlines()])
