"""Configs per size bucket: `tune` tunes each (kernel, bucket) of a dynamic graph under the bucket's
workload key, compile picks each bucket's record (and the family default where a bucket was not tuned),
and the report shows the dispatch table. Fake timings (autotune/runners.FakeRunner) and a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

import tilefuse as tf
from tilefuse.autotune.database import TuningDB
from tilefuse.autotune.device import cpu_device
from tilefuse.autotune.runners import FakeRunner
from tilefuse.autotune.tune import tune_graph, workload_groups
from tilefuse.compiler import ConfigSources, choose_config
from tilefuse.ir.buckets import all_edges, bucket_graphs
from tilefuse.kernels import graph_specs
from tilefuse.schedule.target import get_target


def _graph():
    b = tf.GraphBuilder("dyn_rms")
    t = b.dyn("T", 1, 64, hint=8)
    x = b.input("x", (t, 32), "f32")
    w = b.input("w", (32,), "f32")
    b.output("y", x * tf.rsqrt(tf.mean(x * x, axis=-1, keepdim=True) + 1e-6) * w)
    return b.build()


def _fast(c):  # fake timings: parallel_rows=4 with vector=8 is the fastest config
    return 1e-4 if (c.get("parallel_rows"), c.get("vector")) == (4, 8) else 1e-3


def test_one_workload_per_kernel_and_bucket_static_kernels_once():
    g = _graph()
    groups = workload_groups(g, "tvm", buckets=[8])
    specs = [s for ss in groups.values() for s in ss]
    assert sorted(s.bucket for s in specs) == [(("T", 1, 8),), (("T", 9, 64),)]
    assert len({s.code_key for s in specs}) == 1 and len(groups) == 2  # one code, one key per bucket
    static = workload_groups(tf.compiler.as_graph(g).freeze({"T": 8}), "tvm")
    (only,) = [s for ss in static.values() for s in ss]
    assert only.bucket is None and only.key == only.code_key  # a static kernel's key is what it always was


def test_tune_per_bucket_then_compile_picks_each_buckets_record(tmp_path: Path):
    g = _graph()
    dev = cpu_device()
    with TuningDB(f"sqlite:///{tmp_path / 't.db'}") as db:
        res = tune_graph(g, "cpu", budget=12, strategy="grid", db=db, runner=FakeRunner(_fast), device=dev,
                         buckets=[8])
        name = "k0_mean_add_rsqrt_mul"
        assert [r.kernels for r in res.rows] == [[f"{name} [T=1..8]"], [f"{name} [T=9..64]"]]
        keys = {r.workload_key for r in res.rows}
        assert len(keys) == 2 and all(db.records(workload_key=k) for k in keys)
        tgt = get_target("cpu")
        sources = ConfigSources(db=db, device=dev)
        # compiled with a finer bucket list: T=1..4 and 5..8 were never tuned -> the family default
        for ranges, gb in bucket_graphs(g, all_edges(g, [4, 8])):
            (spec,) = graph_specs(gb, "tvm", ranges)[1]
            config, source = choose_config(spec, tgt, None, sources)
            if ranges == (("T", 9, 64),):
                assert source.startswith("database: this device") and dict(config)["parallel_rows"] == 4
            else:
                assert source == "default" and config == spec.default_config(tgt)


@pytest.mark.parametrize("target", ["interp"])
def test_report_shows_the_dispatch_table(target):
    cg = tf.compile(_graph(), target=target, buckets=[4, 16])
    text = cg.report()
    assert "dynamic sizes T=dyn[1..64, hint=8]: 3 bucket(s)" in text
    assert "dispatch table (size bucket -> config):" in text
    for span in ("T=1..4", "T=5..16", "T=17..64"):
        assert span in text


def test_real_measurements_of_a_dynamic_kernel_per_bucket(tmp_path: Path):
    # The worker rebuilds the spec from the graph text: it must get the bucket (the record's key) and the
    # bucket's sizes back, and a TVM kernel's size arguments follow its outputs (both once failed every trial).
    g = _graph()
    with TuningDB(f"sqlite:///{tmp_path / 't.db'}") as db:
        res = tune_graph(g, "cpu", budget=2, strategy="random", db=db, buckets=[4], patience=None)
        assert [r.statuses for r in res.rows] == [{"ok": 2}, {"ok": 2}]
        cg = tf.compile(g, target="cpu", db=db, cost_model=None, buckets=[4])
        assert all(ck.config_source.startswith("database: this device") for b in cg.buckets
                   for ck in b.compiled.kernels)


def test_cost_model_trained_on_some_buckets_picks_configs_for_untuned_ones(tmp_path: Path):
    # Issue 17: "the cost model predicts buckets that were not tuned". Records of every config in the buckets T=1..8 and
    # T=9..64 train a real XGBoost ranker; a compile with other buckets (none of them in the database) asks
    # the model, which must carry the fast config over to the new bucket sizes.
    from tilefuse.costmodel.models import XGBRankModel

    g = _graph()
    dev = cpu_device()
    with TuningDB(f"sqlite:///{tmp_path / 't.db'}") as db:
        tune_graph(g, "cpu", budget=48, strategy="grid", db=db, runner=FakeRunner(_fast), device=dev, buckets=[8])
        model = XGBRankModel(num_boost_round=30)
        model.fit(db.records())
    tgt = get_target("cpu")
    sources = ConfigSources(model=model, device=dev)
    edges = all_edges(g, [3, 20])
    picked = {}
    for ranges, gb in bucket_graphs(g, edges):
        (spec,) = graph_specs(gb, "tvm", ranges)[1]
        config, source = choose_config(spec, tgt, None, sources)
        assert source == "cost model (xgb)"
        picked[ranges] = (config.get("parallel_rows"), config.get("vector"))
    assert sorted(picked) == [(("T", 1, 3),), (("T", 4, 20),), (("T", 21, 64),)]
    assert set(picked.values()) == {(4, 8)}
