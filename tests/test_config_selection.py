"""compile() picks each kernel's config from the tuning database (exact device, then same arch),
then the cost model, then the family default, and says which in the report."""

import numpy as np

import tilefuse as tf
from tilefuse.schedule.config import Config
from tilefuse.autotune.database import TuningDB
from tilefuse.autotune.device import NOMINAL
from tilefuse.schedule.records import Measurement, Record, Status
from tilefuse.schedule.target import get_target
from tilefuse.compiler import ConfigSources, choose_config, compile_graph
from tilefuse.kernels import fusion_rules, spec_for
from tilefuse.passes import run_pipeline


def _spec():
    g = tf.GraphBuilder("sel")
    x, w = g.input("x", (256, 512), "f16"), g.input("w", (512, 384), "f16")
    g.output("y", tf.silu(x @ w))
    graph = g.build()
    kg = run_pipeline(graph, fusion_rules()).kernels
    return graph, spec_for(kg, kg.kernels[0], "triton")


def _record(spec, dev, cfg, seconds, status=Status.OK):
    m = Measurement(status, (seconds, seconds * 1.01), verified=status is Status.OK)
    return Record(spec.key, spec.family, spec.describe(), dev.key, dev.fingerprint, cfg, m, {"tilefuse": "test"})


def test_selection_order(tmp_path):
    graph, spec = _spec()
    sm90 = get_target("sm_90")
    h100, h200 = NOMINAL["H100"], NOMINAL["H200"]
    default = spec.default_config(sm90)
    a = default.replace(BLOCK_N=64)
    b = default.replace(BLOCK_N=128, num_stages=2)
    db = TuningDB(f"sqlite:///{tmp_path / 't.db'}")
    src = ConfigSources(db=db, device=h100)
    assert choose_config(spec, sm90, None, src) == (default, "default")
    db.add(_record(spec, h200, a, 2e-5))
    cfg, how = choose_config(spec, sm90, None, src)
    assert cfg == a and how.startswith("database: same arch (NVIDIA H200")
    db.add(_record(spec, h100, b, 3e-5))
    db.add(_record(spec, h100, default, 1e-6, Status.WRONG_RESULT))  # fast but wrong: never chosen
    cfg, how = choose_config(spec, sm90, None, src)
    assert cfg == b and how.startswith("database: this device")
    # a stored config that is no longer legal is skipped
    db.add(_record(spec, h100, default.replace(BLOCK_M=256, BLOCK_N=256, num_warps=2), 1e-7))
    assert choose_config(spec, sm90, None, src)[0] == b
    cg = compile_graph(graph, "sm_90", db=db, cost_model=None)
    assert "config (database: this device" in cg.report()


class _PreferWide:
    name = "stub"

    def predict(self, feats):
        return np.array([f["knob_BLOCK_N"] * 10 - f["knob_num_stages"] for f in feats])


def test_cost_model_pick_and_given_config():
    _, spec = _spec()
    sm90 = get_target("sm_90")
    cfg, how = choose_config(spec, sm90, None, ConfigSources(device=NOMINAL["H100"], model=_PreferWide()))
    assert how == "cost model (stub)" and cfg["BLOCK_N"] == 256 and not spec.constraints(cfg, sm90)
    given = spec.default_config(sm90).replace(num_stages=2)
    assert choose_config(spec, sm90, {spec.name: given}, None) == (given, "given")
    assert Config(given) == given
