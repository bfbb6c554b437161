"""Pattern-aware compilation of constant sparse operands (`compile(..., constants={...})`).

A `sparse` node whose arrays are all compile-time constants and whose readers are all spmm has a known
structure: the compiler validates it on the host (once, not per run), analyses it
(kernels/sparse/pattern.py) and treats its format as a knob. Every format the pattern can take (CSR,
BSR at 16/32/64, 2:4 when every group of four holds at most two nonzeros, dense: a matmul) is built as
a candidate graph over converted constant arrays; the candidates' kernels are ranked by the cost model
(the loaded one, else the analytic roofline), each with its family's default config and the pattern's
statistics in its features (the sparse node's `pattern` attribute). The winner's graph is compiled and
its constant arrays are bound at every run, so callers pass only the other inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TilefuseError
from .ir import dtypes as dt
from .ir.graph import Graph
from .ir.ops import Node, Op, make
from .ir.sparse_op import SparseValue, validate_arrays
from .kernels import fusion_rules, spec_for
from .kernels.sparse.pattern import MAX_DENSE_CELLS, PatternStats, analyze, convert
from .passes import run_pipeline
from .passes.rewrite import pat, rewrite_graph
from .schedule.target import Target


INDEX_DTYPES = {"int32": dt.i32, "uint8": dt.u8}  # the converted structure arrays' dtypes
CONFIGS = 24  # legal configs per candidate kernel the model ranks (with the default)
# (spec, target, n) -> up to n legal configs: compiler._legal_candidates, passed in (no import cycle)
Legal = Callable[[Any, Target, int], list[Any]]


class ConstantInputError(TilefuseError, ValueError):
    """A `constants` entry that names no graph input, or whose array does not fit the input."""


@dataclass(frozen=True)
class PatternDecision:
    """The format chosen for one constant sparse operand, and why (for the report)."""

    name: str  # the sparse values' input name
    stats: PatternStats
    scores: tuple[tuple[str, float], ...]  # (format, score; higher is better), best first
    ranked_by: str

    def lines(self) -> list[str]:
        """Report lines: the analysis, then the ranking."""
        ranking = ", ".join(f"{f} {s:.3g}" for f, s in self.scores)
        return [f"constant sparse {self.name}: {self.stats.summary()}",
                f"  format {self.scores[0][0]} (ranked by {self.ranked_by}; scores {ranking})"]


def check_constants(g: Graph, constants: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The constants as numpy arrays of their inputs' storage dtypes; ConstantInputError otherwise."""
    out: dict[str, np.ndarray] = {}
    names = [n.attr("name") for n in g.inputs]
    for name, value in constants.items():
        if name not in names:
            raise ConstantInputError(f"compile: constant {name!r} names no input of graph {g.name}; inputs: {names}")
        node = g.input(name)
        arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if arr.shape != node.shape:
            raise ConstantInputError(f"compile: constant {name!r} has shape {list(arr.shape)}, input {name} is "
                                     f"{node.dtype}{list(node.shape)}")
        out[name] = np.ascontiguousarray(arr.astype(dt.storage_numpy(node.dtype), copy=False))
    return out


def _planned(g: Graph, consts: Mapping[str, np.ndarray]) -> list[Node]:
    """Sparse nodes whose operands are all constant inputs and whose readers are all spmm (operand 0)."""
    out = []
    for n in g.nodes:
        if n.op is not Op.SPARSE or not all(s.op is Op.INPUT and s.attr("name") in consts for s in n.src):
            continue
        users = g.users[id(n)]
        if users and all(u.op is Op.SPMM and u.src[0] is n and u.src[1] is not n for u in users):
            out.append(n)
    return out


def _candidate(g: Graph, sp: Node, fmt: str, arrays: dict[str, np.ndarray], stats: PatternStats, base: str
               ) -> tuple[Graph, dict[str, np.ndarray]]:
    """`g` with `sp` in format `fmt` over new constant inputs named `base_fmt_role` (dense: spmm -> matmul)."""
    taken = {n.attr("name") for n in g.inputs}
    named: dict[str, np.ndarray] = {}
    inputs: dict[str, Node] = {}
    for role, a in arrays.items():
        name = f"{base}_{fmt.replace(':', '')}_{role}"
        while name in taken:
            name += "_"
        named[name] = a
        d = sp.dtype if role in ("values", "dense") else INDEX_DTYPES[a.dtype.name]
        inputs[role] = make(Op.INPUT, name=name, dtype=d, shape=a.shape)
    m, k = sp.shape
    if fmt == "dense":
        w = inputs["dense"]

        def swap(n: Node, _: Any) -> Node | None:
            if n.op is not Op.SPMM or n.src[0] is not sp:
                return None
            if n.attr("transposed", False):
                return make(Op.MATMUL, [n.src[1], w], trans_b=True, out_dtype=n.dtype)
            return make(Op.MATMUL, [w, n.src[1]], out_dtype=n.dtype)
        return rewrite_graph(g, [(pat(Op.SPMM), swap)]), named
    if fmt == "2:4":
        new = make(Op.SPARSE, [inputs["values"], inputs["meta"]], format="2:4", shape=(m, k), pattern=stats.attr())
    else:
        block = {} if fmt == "csr" else {"block": (int(fmt[3:]),) * 2}
        new = make(Op.SPARSE, [inputs["indptr"], inputs["indices"], inputs["values"]],
                   format="csr" if fmt == "csr" else "bsr", shape=(m, k), pattern=stats.attr(), **block)
    return rewrite_graph(g, [(pat(Op.SPARSE), lambda n, _: new if n is sp else None)]), named


def _score(g: Graph, target: Target, model: Any, device: Any, legal: Legal) -> float:
    """The model's summed score (higher is better) of the kernels of `g`, each at the best of its default
    and CONFIGS legal configs by the same model (what compile would pick without a database)."""
    from .costmodel.features import featurize

    kg = run_pipeline(g, fusion_rules()).kernels
    total = 0.0
    for kernel in kg.kernels:
        spec = spec_for(kg, kernel, target.backend)
        configs = [spec.check(spec.default_config(target), target)] + legal(spec, target, CONFIGS)
        total += float(np.max(model.predict([featurize(spec, c, device) for c in configs])))
    return total


def plan(g: Graph, consts: dict[str, np.ndarray], target: Target, sources: Any, legal: Legal
         ) -> tuple[Graph, dict[str, np.ndarray], list[PatternDecision]]:
    """The graph to compile, every constant array it reads (by input name), and one decision per planned
    sparse operand (module docstring)."""
    from .autotune.device import device_for_target
    from .costmodel.models import RooflineModel

    model = sources.model if sources is not None and sources.model is not None else RooflineModel()
    device = sources.device if sources is not None and sources.device is not None else device_for_target(target.name)
    decisions = []
    for sp in _planned(g, consts):
        arrays = tuple(consts[s.attr("name")] for s in sp.src)
        base = sp.src[0 if sp.attr("format") == "2:4" else 2].attr("name")
        validate_arrays(sp.attr("format"), sp.attr("shape"), sp.attr("block", (1, 1)), arrays,
                        what=f"constant sparse {base}")
        if sp.shape[0] * sp.shape[1] > MAX_DENSE_CELLS:
            continue  # too large to densify at compile time: it keeps its own format
        sv = SparseValue(sp.attr("format"), (sp.shape[0], sp.shape[1]), tuple(np.asarray(a) for a in arrays),
                         sp.attr("block", (1, 1)))
        dense = sv.to_dense()
        stats = analyze(dense)
        values_dtype = dt.storage_numpy(sp.dtype)
        built = {fmt: _candidate(g, sp, fmt, convert(dense, fmt, values_dtype), stats, base)
                 for fmt in stats.formats()}
        stored = {fmt: sum(a.nbytes for a in named.values()) for fmt, (_, named) in built.items()}
        # ties (a compute-bound roofline) go to the format that stores fewer bytes: dense over a full BSR
        scores = sorted(((fmt, _score(cand, target, model, device, legal)) for fmt, (cand, _) in built.items()),
                        key=lambda fs: (-fs[1], stored[fs[0]]))
        g, named = built[scores[0][0]]
        consts = {**consts, **named}
        decisions.append(PatternDecision(base, stats, tuple(scores), getattr(model, "name", type(model).__name__)))
    return g, consts, decisions
