"""Shared test helpers: random inputs and dtype-aware comparison with the reference."""

from __future__ import annotations

import numpy as np

from tilefuse.ir import dtypes as dt
from tilefuse.ir.reference import evaluate


def to_np(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return x.float().numpy().astype(np.float64) if x.is_floating_point() else x.numpy()
    return np.asarray(x, dtype=np.float64)


def check_graph(cg, seed: int):
    """Run a compiled graph on fresh random inputs with poisoned outputs; compare to the reference."""
    from tilefuse.cli import random_inputs

    ins = random_inputs(cg.graph, seed)
    outs = cg.run(ins, poison=True)
    ref = evaluate(cg.graph, ins)
    for name, node in cg.graph.outputs:
        got = to_np(outs[name])
        want = ref[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert np.all(np.isfinite(got)), f"{name}: unwritten (poisoned) or non-finite elements"
        rtol, atol = dt.tolerance(node.dtype)
        scale = max(1.0, float(np.max(np.abs(want))))
        err = float(np.max(np.abs(got - want)))
        assert err <= atol * scale + rtol * scale, (f"{name}: max error {err} (scale {scale}, dtype {node.dtype})\n"
                                                    f"{cg.graph.text}")
