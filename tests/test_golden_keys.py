"""Refactors must not change what is compiled: for every graph the test suite and the examples compile
(captured once into golden/kernel_keys.json), the kernel grouping, kernel names, families and workload
keys stay as they were. A changed key would orphan every tuning record stored under the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tilefuse.ir.text import parse_graph
from tilefuse.kernels import LoweringError, fusion_rules, spec_for
from tilefuse.passes import run_pipeline

GOLDEN = json.loads((Path(__file__).parent / "golden" / "kernel_keys.json").read_text())


def kernels_of(text: str) -> tuple[str, list[dict]]:
    g = parse_graph(text)
    pr = run_pipeline(g, fusion_rules())
    rows = []
    for k in pr.kernels.kernels:
        row = {"name": k.name, "kind": k.group.kind, "nodes": len(k.group.nodes), "prologue": len(k.group.prologue)}
        for backend in ("triton", "tvm"):
            try:
                spec = spec_for(pr.kernels, k, backend)
                row[backend] = [spec.family, spec.key]
            except LoweringError:
                row[backend] = ["error"]
        rows.append(row)
    return g.key, rows


def _comparable(rows: list[dict]) -> list[dict]:
    return [{**r, "triton": r["triton"][:1] if r["triton"][0] == "error" else r["triton"],
             "tvm": r["tvm"][:1] if r["tvm"][0] == "error" else r["tvm"]} for r in rows]


def test_golden_covers_every_family():
    kinds = {k["kind"] for v in GOLDEN.values() for k in v["kernels"]}
    assert {"pointwise", "reduction", "copy", "matmul", "attention", "attention_bwd", "paged_attention"} <= kinds


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_kernel_grouping_names_and_keys_unchanged(key):
    want = GOLDEN[key]
    got_key, rows = kernels_of(want["text"])
    assert got_key == key, "the graph's key changed (text form or hashing)"
    assert _comparable(rows) == _comparable(want["kernels"])
