"""Feature splatting (kernels/splat/raster_features.py) under the interpreter against the float64
reference: dense C-channel features (C = 3 on the unrolled path, 16 and 64 in channel chunks on the
grid's second axis) and the sparse-coefficient LangSplatV2 variant (K codebook rows per Gaussian, an
L-channel accumulator, one codebook product per pixel); the plan, the knobs, bad indices and the
verifier; AOT builds without spills."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tf
from tilefuse.ir import VerifyError
from tilefuse.ir.reference import ReferenceEvalError, evaluate
from tilefuse.ir.sampling import raster_operands
from tilefuse.ir.splat_op import tile_rect
from tilefuse.kernels.splat.common import SplatInputError
from tilefuse.schedule.config import Config
from tilefuse.schedule.target import get_target

W, H, N = 64, 48, 160
RASTER = (("m2d", (N, 2), "f32"), ("con", (N, 3), "f32"), None, ("opac", (N,), "f32"), ("dep", (N,), "f32"),
          ("rad", (N,), "i32"))


def feature_graph(c: int, sparse: tuple[int, int] | None = None) -> tf.Graph:
    """rasterize_gaussians of C-channel features, or with sparse = (K, L) of K weights into an [L, C] codebook."""
    g = tf.GraphBuilder(f"feat_{c}" + ("" if sparse is None else f"_k{sparse[0]}_l{sparse[1]}"))
    third = ("feat", (N, c), "f32") if sparse is None else ("w", (N, sparse[0]), "f32")
    ts = [g.input(*spec) for spec in RASTER[:2] + (third,) + RASTER[3:]]
    bg = [0.05 * (i % 3) for i in range(c)]
    if sparse is None:
        outs = tf.rasterize_gaussians(*ts, width=W, height=H, background=bg, last_contributor=True)
    else:
        k, rows = sparse
        outs = tf.rasterize_sparse_features(*ts, g.input("idx", (N, k), "i32"), g.input("book", (rows, c), "f32"),
                                            width=W, height=H, background=bg, last_contributor=True)
    for name, t in zip(("img", "T", "last"), outs):
        g.output(name, t)
    return g.build()


def feature_inputs(seed: int, c: int, sparse: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """A random splat draw whose last four Gaussians are a near-opaque stack in front of pixel (40, 20)
    (T = 0.01 x 0.02 after two, so the third stops compositing there, off the 1e-4 threshold), with every
    Gaussian reaching the top-right tile culled (an empty tile)."""
    rng = np.random.default_rng(seed)
    m2d, con, _, opac, dep, rad = raster_operands(rng, N, W, H)
    m2d[-4:], con[-4:], dep[-4:], rad[-4:] = (40.5, 20.5), (0.02, 0.0, 0.02), 0.01, 8
    opac[-4:] = (0.99, 0.98, 0.99, 0.97)
    for g in range(N):
        x0, y0, x1, y1 = tile_rect(m2d[g, 0], m2d[g, 1], rad[g], 16, (4, 3))
        if x0 <= 3 < x1 and y0 <= 0 < y1:
            rad[g] = 0
    ins = {"m2d": m2d, "con": con, "opac": opac, "dep": dep, "rad": rad.astype(np.int32)}
    if sparse is None:
        return {**ins, "feat": rng.standard_normal((N, c))}
    k, rows = sparse
    return {**ins, "w": rng.random((N, k)), "idx": np.argsort(rng.random((N, rows)), axis=1)[:, :k].astype(np.int32),
            "book": rng.standard_normal((rows, c))}


@pytest.mark.interp
@pytest.mark.parametrize("c, sparse", [(3, None), (16, None), (64, None), (16, (4, 64)), (64, (4, 20)),
                                       (3, (2, 16))])
def test_features_match_the_reference(c, sparse):
    cg = tf.compile(feature_graph(c, sparse), target="interp", aot=False)
    ins = feature_inputs(c, c, sparse)
    got = {k: v.numpy() for k, v in cg.run(ins, poison=True).items()}
    want = evaluate(cg.graph, ins)
    assert (want["T"] < 1e-3).any() and (want["T"] == 1.0).any()  # opaque pixels and uncovered ones
    np.testing.assert_allclose(got["img"], want["img"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["T"], want["T"], rtol=1e-5, atol=1e-6)
    assert (got["last"] != want["last"]).sum() <= 2


def test_dense_features_take_channel_chunks_on_the_grid():
    cg = tf.compile(feature_graph(64), target="interp", aot=False)
    ck = cg.kernels[0]
    assert ck.config["CHUNK"] == 32 and ck.spec.launch_plan(ck.config).launches[-1].grid == (12, 2, 1)
    sm90 = get_target("sm_90")
    assert ck.spec.check_problems(ck.config.replace(CHUNK=64, num_warps=4), sm90) == [
        "a 256-pixel accumulator of 64 channels is 128 values per thread with 4 warps (over 32: registers spill)"]
    assert "tl.dot needs a contraction" in ck.spec.check_problems(ck.config.replace(BATCH=8), sm90)[0]
    rgb = tf.compile(feature_graph(3), target="interp", aot=False).kernels[0]
    assert "CHUNK" not in rgb.config and "acc2 +=" in rgb.source  # RGB keeps one accumulator per channel
    sparse = tf.compile(feature_graph(64, (4, 64)), target="interp", aot=False).kernels[0]
    assert sparse.config["PIX"] == 64 and sparse.spec.launch_plan(sparse.config).launches[-1].grid == (12, 4, 1)
    assert isinstance(sparse.config, Config) and "tl.dot(acc, cb" in sparse.source
    feats = sparse.spec.features(sparse.config)  # what the cost model reads
    assert feats["programs"] == 48 and feats["codebook_rows"] == 64


@pytest.mark.interp
def test_sparse_indices_outside_the_codebook_are_refused():
    cg = tf.compile(feature_graph(16, (4, 32)), target="interp", aot=False)
    ins = feature_inputs(3, 16, (4, 32))
    idx = ins["idx"].copy()
    idx[9, 2] = 32
    with pytest.raises(SplatInputError, match=r"indices must lie in \[0, 32\) .* \(first: row 9\)"):
        cg.run({**ins, "idx": idx})
    with pytest.raises(ReferenceEvalError, match=r"indices must lie in \[0, 32\) .* row 9 holds"):
        evaluate(cg.graph, {**ins, "idx": idx})


def test_sparse_variant_verifier_errors():
    g = tf.GraphBuilder("bad")
    ts = [g.input(*spec) for spec in RASTER[:2] + (("w", (N, 4), "f32"),) + RASTER[3:]]
    with pytest.raises(VerifyError, match=r"indices must be an integer \[160, 4\] like the weights"):
        tf.rasterize_sparse_features(*ts, g.input("i", (N, 4), "f32"), g.input("b", (8, 16), "f32"), width=W, height=H)
    with pytest.raises(VerifyError, match=r"codebook must be a float \[L, C\], got f32\[8\]"):
        tf.rasterize_sparse_features(*ts, g.input("i2", (N, 4), "i32"), g.input("b2", (8,), "f32"), width=W, height=H)


@pytest.mark.parametrize("arch", [pytest.param("sm_80", marks=pytest.mark.slow), "sm_90"])
def test_aot_feature_renders_build_without_spills(arch):
    """C = 64 dense (CHUNK = 32) and sparse (L = 64, PIX = 64) at their defaults (sm_80 under -m slow: each
    arch is about 25 s of compiles)."""
    for gr in (feature_graph(64), feature_graph(64, (4, 64))):
        ck = tf.compile(gr, target=arch).kernels[0]
        b = ck.binaries[arch][f"{ck.spec.name}_render"]
        assert not b.resources.spills, f"{gr.name} render spills on {arch} with {ck.config.to_json()}: {b.resources}"
