"""GPU: sparse kernels vs torch in the same run (issue 14's GPU benchmark; Sparton's head is benchmarked
with the matmul reduction epilogues, not here).

- CSR SpMM (f32, N features) at 70/90/95/99% sparsity vs torch.sparse CSR (cuSPARSE) and dense cuBLAS;
  target: >= 1.5x cuSPARSE at 90%.
- Decode-sized linear layers y = x @ W^T, W [4096, 4096] f16 at M in {1, 8, 16} tokens: 2:4 weights and
  unstructured 80%-sparse CSR weights vs dense f16 (torch); target: unstructured 80% >= 1.5x dense.
- Graph attention (SDDMM -> edge softmax -> SpMM, one kernel) vs torch's sampled_addmm + sparse softmax +
  SpMM on a CSR graph.

Run on a machine with a CUDA GPU: python bench/sparse_gpu.py --json bench/results/sparse_gpu-<device>.json
Timing: triton.testing.do_bench (CUDA events, median), outputs checked against torch before timing.
--quick: reduced sizes (gpu-check runs this). --dry-run: no GPU; the same code path under the Triton
interpreter on CPU tensors at toy sizes (the times say nothing about speed). Family defaults only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import warnings
from typing import Any

import gpu_env  # bench/gpu_env.py: the scripts run by path, so their folder is on sys.path
import numpy as np

SIZES = {  # CSR: M = K, N; linear: d_in = d_out, token counts; attention: nodes, degree, features
    "full": {"csr": (8192, 128), "linear": 4096, "tokens": (1, 8, 16), "gat": (65536, 16, 64)},
    "quick": {"csr": (4096, 64), "linear": 2048, "tokens": (1, 16), "gat": (16384, 16, 64)},
    "dry": {"csr": (16, 16), "linear": 32, "tokens": (1, 8), "gat": (12, 3, 16)},
}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Device, target, timer and sizes for this run."""
    env = gpu_env.setup(args, "bench/sparse_gpu.py")
    env["sizes"] = SIZES["dry" if args.dry_run else "quick" if args.quick else "full"]
    return env


def random_csr(rng: np.random.Generator, m: int, k: int, density: float) -> tuple[np.ndarray, ...]:
    """(indptr i32, indices i32 sorted per row, values f32) with uniform random nonzeros."""
    lengths = rng.binomial(k, density, m)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = np.concatenate([np.sort(rng.choice(k, n, replace=False)) for n in lengths]).astype(np.int32)
    return indptr, indices, rng.standard_normal(len(indices)).astype(np.float32)


def _t(env: dict[str, Any], x: np.ndarray, dtype: Any = None) -> Any:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).to(env["device"])
    return t if dtype is None else t.to(dtype)


def _rel(out: Any, ref: Any) -> float:
    return float((out.float() - ref.float()).norm() / max(float(ref.float().norm()), 1e-30))


def csr_rows(env: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """CSR SpMM vs cuSPARSE and dense at each sparsity."""
    import torch

    import tilefuse as tf

    m, n = env["sizes"]["csr"]
    rows = []
    for sparsity in (0.70, 0.90, 0.95, 0.99):
        ip, ix, v = random_csr(rng, m, m, 1.0 - sparsity)
        g = tf.GraphBuilder("csr")
        a = tf.sparse_csr(g.input("ip", ip.shape, "i32"), g.input("ix", ix.shape, "i32"),
                          g.input("v", v.shape, "f32"), (m, m))
        g.output("c", tf.spmm(a, g.input("b", (m, n), "f32")))
        cg = tf.compile(g, target=env["target"], db=None, cost_model=None)
        tip, tix, tv = _t(env, ip), _t(env, ix), _t(env, v)
        b = _t(env, rng.standard_normal((m, n)).astype(np.float32))
        sp = torch.sparse_csr_tensor(tip.long(), tix.long(), tv, (m, m))
        dense = sp.to_dense()
        rel = _rel(cg(tip, tix, tv, b), dense @ b)
        assert rel < 1e-4, f"csr {sparsity:.0%}: relative error {rel} vs torch"
        t_tf = env["bench"](lambda: cg(tip, tix, tv, b))
        t_sp = env["bench"](lambda: sp @ b)
        t_dense = env["bench"](lambda: dense @ b)
        rows.append({"case": f"csr spmm {m}x{m} @ {n} sparsity {sparsity:.0%}", "tilefuse_ms": t_tf,
                     "cusparse_ms": t_sp, "dense_ms": t_dense, "ratio_cusparse": t_sp / t_tf,
                     "ratio_dense": t_dense / t_tf, "rel_err": rel, "config": cg.kernels[0].config.to_json()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _linear(env: dict[str, Any], fmt: str, d: int, tokens: int, arrays: dict[str, np.ndarray]) -> Any:
    import tilefuse as tf

    g = tf.GraphBuilder("linear")
    x = g.input("x", (tokens, d), "f16")
    if fmt == "2:4":
        w = tf.sparse_24(g.input("v", arrays["v"].shape, "f16"), g.input("meta", arrays["meta"].shape, "u8"))
    else:
        w = tf.sparse_csr(g.input("ip", arrays["ip"].shape, "i32"), g.input("ix", arrays["ix"].shape, "i32"),
                          g.input("v", arrays["v"].shape, "f16"), (d, d))
    g.output("y", tf.sparse_linear(x, w))
    return tf.compile(g, target=env["target"], db=None, cost_model=None)


def linear_rows(env: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """x @ W^T at decode token counts: 2:4 and 80%-sparse CSR weights vs the dense f16 product."""
    import torch

    from tilefuse.ir.sparse_op import prune_2to4

    d = env["sizes"]["linear"]
    half = torch.float16 if env["device"] == "cuda" else torch.float32  # torch's CPU f16 matmul is slow
    w24, v24, meta = prune_2to4(rng.standard_normal((d, d)).astype(np.float32) / np.sqrt(d))
    ip, ix, vc = random_csr(rng, d, d, 0.2)
    vc /= np.sqrt(0.2 * d)
    wcsr = np.zeros((d, d), np.float32)
    wcsr[np.repeat(np.arange(d), np.diff(ip)), ix] = vc
    weights = {"2:4": (w24, {"v": v24.astype(np.float16), "meta": meta}),
               "csr 80%": (wcsr, {"ip": ip, "ix": ix, "v": vc.astype(np.float16)})}
    rows = []
    for fmt, (dense_w, arrays) in weights.items():
        wt = _t(env, dense_w.astype(np.float16), half)
        targs = {k: _t(env, a) for k, a in arrays.items()}
        for tokens in env["sizes"]["tokens"]:
            cg = _linear(env, fmt.split()[0], d, tokens, arrays)
            x = _t(env, rng.standard_normal((tokens, d)).astype(np.float16))
            rel = _rel(cg(x=x, **targs), x.to(half) @ wt.T)
            assert rel < 2e-2, f"linear {fmt} M={tokens}: relative error {rel} vs torch"
            t_tf = env["bench"](lambda: cg(x=x, **targs))
            xh = x.to(half)
            t_dense = env["bench"](lambda: xh @ wt.T)
            rows.append({"case": f"linear {fmt} {d}x{d} M={tokens}", "tilefuse_ms": t_tf, "dense_ms": t_dense,
                         "ratio_dense": t_dense / t_tf, "rel_err": rel, "config": cg.kernels[0].config.to_json()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def gat_rows(env: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Fused graph attention vs torch (sampled_addmm, sparse softmax, SpMM) on a random graph."""
    import torch

    import tilefuse as tf

    nodes, degree, f = env["sizes"]["gat"]
    ip, ix, _ = random_csr(rng, nodes, nodes, degree / nodes)
    g = tf.GraphBuilder("gat")
    tip, tix = g.input("ip", ip.shape, "i32"), g.input("ix", ix.shape, "i32")
    pat = tf.sparse_csr(tip, tix, g.input("ones", ix.shape, "f32"), (nodes, nodes))
    q, k, x = (g.input(n, (nodes, f), "f32") for n in "qkx")
    s = tf.sparse_csr(tip, tix, tf.sddmm(q, k, pat) * (1.0 / np.sqrt(f)), (nodes, nodes))
    g.output("y", tf.spmm(tf.sparse_softmax(s, as_sparse=True), x))
    cg = tf.compile(g, target=env["target"], db=None, cost_model=None)
    ins = {"ip": _t(env, ip), "ix": _t(env, ix), "ones": _t(env, np.ones(len(ix), np.float32))}
    ins.update({n: _t(env, rng.standard_normal((nodes, f)).astype(np.float32)) for n in "qkx"})
    pattern = torch.sparse_csr_tensor(ins["ip"].long(), ins["ix"].long(), ins["ones"], (nodes, nodes))

    def torch_gat() -> Any:
        scores = torch.sparse.sampled_addmm(pattern, ins["q"], ins["k"].T, beta=0.0, alpha=1.0 / np.sqrt(f))
        return torch.sparse.softmax(scores.to_sparse_coo(), dim=1).to_sparse_csr() @ ins["x"]

    rel = _rel(cg(**ins), torch_gat())
    assert rel < 1e-4, f"graph attention: relative error {rel} vs torch"
    t_tf, t_torch = env["bench"](lambda: cg(**ins)), env["bench"](torch_gat)
    rows = [{"case": f"graph attention {nodes} nodes degree {degree} f={f}", "tilefuse_ms": t_tf,
             "torch_ms": t_torch, "ratio": t_torch / t_tf, "rel_err": rel,
             "kernels": [ck.spec.family for ck in cg.kernels]}]
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--target", help="sm_80 or sm_90 (default: the device's)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (gpu-check)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the interpreter on CPU tensors at toy sizes")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Sparse")  # torch's beta / invariant-check notices
    env = setup(args)
    rng = np.random.default_rng(0)
    rows = csr_rows(env, rng) + linear_rows(env, rng) + gat_rows(env, rng)
    if args.json:
        import torch
        import triton

        meta = {"device": env["name"], "target": env["target"], "torch": torch.__version__,
                "triton": triton.__version__, "numpy": np.__version__, "date": datetime.date.today().isoformat(),
                "host": platform.node(), "size": "dry-run" if args.dry_run else "quick" if args.quick else "full"}
        with open(args.json, "w") as f:
            json.dump({"benchmark": "sparse_gpu", "meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
