"""Cost model: metrics on hand-made examples, features of real kernels, save/load in the empty,
untrained, trained and corrupt states, learning a synthetic ranking, cross-device transfer, CLI."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

from tilefuse.schedule.config import Config
from tilefuse.schedule.records import Measurement, Record, Status
from tilefuse.costmodel import (FEATURE_SCHEMA, ModelError, RandomModel, RooflineModel, XGBRankModel, cross_device,
                                evaluate, feature_names, featurize, kendall_tau, load_model, pairwise_accuracy,
                                record_features, split_by_workload, to_matrix, topk_score, train_and_eval)
from tilefuse.cli import costmodel as cm_cli

FAST = {"num_boost_round": 30}


# -- metrics on hand-computed examples --
def test_perfect_and_reversed_rankings():
    lat = [1.0, 2.0, 3.0, 4.0]
    assert topk_score(lat, [4, 3, 2, 1], 1) == 1.0
    assert pairwise_accuracy(lat, [4, 3, 2, 1]) == 1.0
    assert kendall_tau(lat, [4, 3, 2, 1]) == pytest.approx(1.0)
    assert topk_score(lat, [1, 2, 3, 4], 1) == pytest.approx(0.25)  # picks the 4.0 s config
    assert topk_score(lat, [1, 2, 3, 4], 5) == 1.0  # k beyond the group takes everything
    assert pairwise_accuracy(lat, [1, 2, 3, 4]) == 0.0
    assert kendall_tau(lat, [1, 2, 3, 4]) == pytest.approx(-1.0)


def test_one_discordant_pair():
    # order by score: lat 2, 1, 3, 4 -> top-1 picks 2 s (score 1/2), top-2 reaches 1 s; only pair (0, 1) is wrong
    lat, sc = [2.0, 1.0, 4.0, 3.0], [0.9, 0.5, 0.1, 0.3]
    assert topk_score(lat, sc, 1) == pytest.approx(0.5)
    assert topk_score(lat, sc, 2) == 1.0
    assert pairwise_accuracy(lat, sc) == pytest.approx(5 / 6)
    assert kendall_tau(lat, sc) == pytest.approx((5 - 1) / 6)


def test_ties_in_latency_and_score():
    # pairs: (0,1) latency tie (not counted), (1,2) score tie (half), the other four correct
    lat, sc = [1.0, 1.0, 2.0, 3.0], [3.0, 2.0, 2.0, 1.0]
    assert pairwise_accuracy(lat, sc) == pytest.approx(4.5 / 5)
    # tau-b: 4 concordant, 0 discordant, n0 = 6, one tie on each side -> 4 / sqrt(5 * 5)
    assert kendall_tau(lat, sc) == pytest.approx(0.8)
    assert topk_score(lat, sc, 1) == 1.0


def test_constant_scores_and_tie_break():
    lat = [3.0, 1.0, 2.0]
    assert topk_score(lat, [0, 0, 0], 1) == pytest.approx(1 / 3)  # equal scores: the first config is picked
    assert topk_score(lat, [0, 0, 0], 2) == 1.0
    assert pairwise_accuracy(lat, [0, 0, 0]) == 0.5
    assert kendall_tau(lat, [0, 0, 0]) == 0.0
    assert pairwise_accuracy([1.0, 1.0], [1, 2]) == 1.0  # nothing to order


def test_metric_input_errors():
    with pytest.raises(ValueError, match="2 latencies but 3 scores"):
        pairwise_accuracy([1.0, 2.0], [1, 2, 3])
    with pytest.raises(ValueError, match="k >= 1"):
        topk_score([1.0], [1.0], 0)
    with pytest.raises(ValueError, match="at least one"):
        kendall_tau([], [])
    with pytest.raises(ValueError, match="finite and positive"):
        topk_score([1.0, float("nan")], [1, 2], 1)


# -- synthetic records --
BLOCKS_M, BLOCKS_N, WARPS = (16, 32, 64, 128, 256), (32, 64, 128), (4, 8)


def make_records(n_workloads: int, device: str = "devA", opt_m: int = 64, bandwidth: float = 3.35e12,
                 seed: int = 0, failed: int = 2) -> list[Record]:
    """Matmul-like workloads whose latency is a known function of the knobs, with 2% noise."""
    rng = np.random.default_rng(seed)
    out = []
    for w in range(n_workloads):
        m, n, k = (int(rng.choice([256, 512, 1024, 2048, 4096])) for _ in range(3))
        scale = m * n * k * 1e-13 * (1 + rng.random())
        opt_n = min(128, max(32, n // 16))
        wl = {"M": m, "N": n, "K": k, "w": w}
        for i, (bm, bn, warps) in enumerate((a, b, c) for a in BLOCKS_M for b in BLOCKS_N for c in WARPS):
            lat = scale * (1 + abs(bm - opt_m) / 64 + 0.3 * abs(math.log2(bn / opt_n)) + 0.1 * (warps == 8))
            lat *= 1 + 0.02 * rng.standard_normal()
            feats = {"knob_BLOCK_M": bm, "knob_BLOCK_N": bn, "knob_num_warps": warps, "spec_M": m, "spec_N": n,
                     "spec_K": k, "dev_mem_bandwidth": bandwidth, "roofline_time": scale,
                     "feature_schema": FEATURE_SCHEMA}
            ok = i >= failed
            meas = Measurement(Status.OK if ok else Status.COMPILE_ERROR, (lat, lat * 1.01, lat * 0.99) if ok else (),
                               verified=ok, error="" if ok else "ptxas: out of registers")
            out.append(Record(f"wl{w:03d}-{seed}", "matmul", wl, device, {"name": f"GPU {device}"},
                              Config(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps), meas, {"tilefuse": "0.1.0"},
                              {k2: float(v) for k2, v in feats.items()}))
    return out


@pytest.fixture(scope="module")
def synthetic() -> list[Record]:
    return make_records(20)


@pytest.fixture(scope="module")
def trained(synthetic) -> XGBRankModel:
    model = XGBRankModel(**FAST)
    model.fit(synthetic)
    return model


def test_xgb_learns_synthetic_ranking_on_held_out_workloads(synthetic):
    train, test = split_by_workload(synthetic, 0.25, seed=1)
    xgb = XGBRankModel()
    xgb.fit(train)
    m = evaluate(xgb, test)
    r = evaluate(RandomModel(0), test)
    assert m["groups"] == 5 and m["records"] == 5 * 28
    assert m["top1"] >= 0.95 and m["top1"] > r["top1"] + 0.1
    assert m["pairwise"] >= 0.85 and m["pairwise"] > r["pairwise"] + 0.25
    assert m["kendall_tau"] > 0.7 > r["kendall_tau"]


def test_train_and_eval_compares_baselines_and_saves(synthetic, tmp_path):
    res = train_and_eval(synthetic, holdout_frac=0.25, seed=0, xgb_params=FAST, out=tmp_path / "m")
    assert set(res["metrics"]) == {"xgb", "roofline", "random"}
    assert res["train"]["workloads"] == 15 and res["test"]["workloads"] == 5
    xgb, roof = res["metrics"]["xgb"], res["metrics"]["roofline"]
    assert xgb["pairwise"] > roof["pairwise"]
    assert roof["pairwise"] == 0.5  # roofline_time is constant within a synthetic workload
    assert res["trained_on"]["records"] == 20 * 28 and res["trained_on"]["workloads"] == 20
    assert isinstance(load_model(tmp_path / "m"), XGBRankModel)


def test_split_by_workload_holds_out_whole_workloads(synthetic):
    train, test = split_by_workload(synthetic, 0.2, seed=3)
    assert not {r.workload_key for r in train} & {r.workload_key for r in test}
    assert len(train) + len(test) == len(synthetic)
    assert len({r.workload_key for r in test}) == 4
    assert split_by_workload(synthetic, 0.2, seed=3)[1] == test
    assert split_by_workload(synthetic, 0.0)[1] == []
    with pytest.raises(ValueError, match="at least 2"):
        split_by_workload(make_records(1), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_by_workload(synthetic, 1.0)


def test_failed_records_do_not_train_unless_asked(synthetic):
    m = XGBRankModel(**FAST)
    m.fit(synthetic)
    assert m.trained_on["failed"] == 0 and m.trained_on["records"] == 20 * 28
    worst = XGBRankModel(failed_as_worst=True, **FAST)
    worst.fit(synthetic)
    assert worst.trained_on["failed"] == 20 * 2 and worst.trained_on["records"] == 20 * 30


def test_features_of_another_schema_neither_train_nor_score(synthetic, caplog):
    """Records stored by an older tilefuse (features without the schema marker, or another schema)
    are left out of training with a warning that says why, and evaluation skips them."""
    import dataclasses

    def stale(r, marker):
        f = {k: v for k, v in r.features.items() if k != "feature_schema"}
        return dataclasses.replace(r, features=f if marker is None else {**f, "feature_schema": marker})

    old = [stale(r, None) for r in make_records(3, seed=7)] + [stale(r, FEATURE_SCHEMA + 1.0)
                                                             for r in make_records(2, seed=8)]
    assert all(record_features(r) == {} for r in old)
    m = XGBRankModel(**FAST)
    with caplog.at_level("WARNING"):
        m.fit(synthetic[:30 * 4] + old)  # 4 workloads of 30 records, 28 measured
    assert m.trained_on["records"] == 4 * 28 and m.trained_on["workloads"] == 4
    assert f"{5 * 28} carry features of another schema" in caplog.text
    assert evaluate(m, old)["groups"] == 0.0
    with pytest.raises(ModelError, match="no training data"):
        XGBRankModel(**FAST).fit(old)


def test_cross_device_with_and_without_few_shot():
    records = make_records(8, "devA", opt_m=64, bandwidth=3.35e12) + make_records(
        8, "devB", opt_m=128, bandwidth=4.8e12, seed=1)
    res = cross_device(records, "devA", "devB", few_shot=0, xgb_params=FAST)
    assert set(res["metrics"]) == {"xgb", "roofline", "random"}
    assert res["test"]["records"] == 8 * 30
    few = cross_device(records, "devA", "devB", few_shot=8, xgb_params=FAST)
    assert set(few["metrics"]) == {"xgb", "xgb+few_shot", "xgb_target_only", "roofline", "random"}
    assert few["shots"]["records"] == 8 * 8 and few["test"]["records"] == 8 * 22
    assert all(0.0 <= v["pairwise"] <= 1.0 and 0.0 < v["top1"] <= 1.0 for v in few["metrics"].values())
    # devB's best BLOCK_M differs: records of the new device must help
    assert few["metrics"]["xgb+few_shot"]["pairwise"] > few["metrics"]["xgb"]["pairwise"]
    with pytest.raises(ValueError, match="no records of device 'devC'"):
        cross_device(records, "devA", "devC")


# -- save / load --
def test_empty_training_set_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no training data"):
        XGBRankModel().fit([])
    only_failed = [r for r in make_records(2) if r.measurement.status is not Status.OK]
    with pytest.raises(ModelError, match="none verified OK"):
        XGBRankModel().fit(only_failed)
    with pytest.raises(ModelError, match="no meta.json"):
        load_model(tmp_path)


def test_untrained_model_refuses_predict_and_save(tmp_path):
    m = XGBRankModel()
    with pytest.raises(ModelError, match="not trained"):
        m.predict([{"knob_BLOCK_M": 64.0}])
    with pytest.raises(ModelError, match="untrained"):
        m.save(tmp_path / "m")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_trained_round_trip_predicts_identically(trained, synthetic, tmp_path):
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "model.json"]  # no temp files left
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "xgb" and meta["feature_schema"] == FEATURE_SCHEMA and meta["schema"] == 1
    assert meta["feature_names"] == trained.feature_names and "xgboost" in meta["versions"]
    assert meta["trained_on"]["devices"] == ["devA"]
    assert "learner" in json.loads((tmp_path / "model.json").read_text())  # XGBoost's own JSON format
    loaded = load_model(tmp_path)
    assert isinstance(loaded, XGBRankModel) and loaded.params == trained.params
    feats = [record_features(r) for r in synthetic[:60]]
    np.testing.assert_array_equal(loaded.predict(feats), trained.predict(feats))
    assert loaded.predict([]).shape == (0,)


def _edit_meta(path, **changes):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    ("truncated_model", "sha256 differs"),
    ("truncated_model_resigned", "not a valid XGBoost JSON model"),
    ("truncated_meta", "corrupt cost-model metadata"),
    ("wrong_schema", "metadata schema 99"),
    ("wrong_feature_schema", "feature schema 0"),
    ("unknown_kind", "unknown model kind"),
    ("dropped_feature", "do not match"),
    ("renamed_feature", "do not match"),
    ("missing_model", "cannot read the XGBoost model"),
])
def test_corrupt_saved_model_raises_model_error(trained, tmp_path, damage, message):
    import hashlib

    trained.save(tmp_path)
    model = tmp_path / "model.json"
    names = list(trained.feature_names)
    if damage.startswith("truncated_model"):
        raw = model.read_bytes()[: model.stat().st_size // 2]
        model.write_bytes(raw)
        if damage.endswith("resigned"):
            _edit_meta(tmp_path, model_sha256=hashlib.sha256(raw).hexdigest())
    elif damage == "truncated_meta":
        text = (tmp_path / "meta.json").read_text()
        (tmp_path / "meta.json").write_text(text[: len(text) // 2])
    elif damage == "wrong_schema":
        _edit_meta(tmp_path, schema=99)
    elif damage == "wrong_feature_schema":
        _edit_meta(tmp_path, feature_schema=0)
    elif damage == "unknown_kind":
        _edit_meta(tmp_path, kind="pickle")
    elif damage == "dropped_feature":
        _edit_meta(tmp_path, feature_names=names[:-1])
    elif damage == "renamed_feature":
        _edit_meta(tmp_path, feature_names=names[:-1] + ["knob_other"])
    elif damage == "missing_model":
        model.unlink()
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path)


@pytest.mark.parametrize("field, value, words", [
    ("versions", "xgboost 2", "versions must be an object"),
    ("versions", {"xgboost": 2}, "versions must be an object"),
    ("params", [4, 0.2], "params must be an object"),
    ("params", {"max_depth": "deep"}, "params.max_depth must be an integer"),
    ("params", {"eta": "fast"}, "params.eta must be a number"),
    ("params", {"seed": 1.5}, "params.seed must be an integer"),
    ("trained_on", "devA", "trained_on must be an object"),
    ("num_boost_round", "200", "num_boost_round must be a positive integer"),
    ("num_boost_round", 0, "num_boost_round must be a positive integer"),
    ("failed_as_worst", "false", "failed_as_worst must be true or false"),
    ("model_file", "../model.json", "model_file must be a file name"),
    ("schema", True, "metadata schema True"),
])
def test_wrongly_typed_meta_fields_raise_model_error(trained, tmp_path, capsys, field, value, words):
    """The model file and its sha256 stay valid: only meta.json's types are wrong."""
    trained.save(tmp_path)
    _edit_meta(tmp_path, **{field: value})
    with pytest.raises(ModelError, match=words):
        load_model(tmp_path)
    assert cm_cli.main(["costmodel", "eval", "--data", str(tmp_path / "none.jsonl"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize("kind", ["missing", "empty directory", "file"])
def test_a_costmodel_setting_that_names_no_model_warns_once(tmp_path, monkeypatch, caplog, kind):
    from tilefuse.compiler import open_sources
    from tilefuse.schedule.target import get_target
    from tilefuse.settings import reload_settings

    path = tmp_path / "cm"
    if kind == "empty directory":
        path.mkdir()
    elif kind == "file":
        path.write_text("not a model")
    monkeypatch.setenv("TILEFUSE_COSTMODEL", str(path))
    reload_settings()
    try:
        with caplog.at_level("WARNING", logger="tilefuse.settings"):
            for _ in range(2):
                assert open_sources(get_target("cpu"), db=None).model is None
        warnings = [r.getMessage() for r in caplog.records if r.name == "tilefuse.settings"]
        assert len(warnings) == 1 and f"TILEFUSE_COSTMODEL={path}" in warnings[0], warnings
        assert {"missing": "does not exist", "empty directory": "no saved cost model",
                "file": "is a file"}[kind] in warnings[0]
    finally:
        monkeypatch.undo()
        reload_settings()


def test_the_default_model_place_is_silent_and_the_warning_reaches_stderr(tmp_path):
    """No TILEFUSE_COSTMODEL and no model yet is the normal state: no word. With no logging configured
    (the CLI configures none), the warning is printed on stderr by Python's last-resort handler."""
    import subprocess

    code = ("from tilefuse.compiler import open_sources; from tilefuse.schedule.target import get_target; "
            "assert open_sources(get_target('cpu'), db=None).model is None")
    env = {k: v for k, v in os.environ.items() if k != "TILEFUSE_COSTMODEL"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    env["TILEFUSE_COSTMODEL"] = str(tmp_path / "typo")
    loud = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0 and f"TILEFUSE_COSTMODEL={tmp_path / 'typo'} does not exist" in loud.stderr


def test_baselines_round_trip(tmp_path):
    feats = [{"roofline_time": 2.0}, {"roofline_time": 1.0}, {}]
    np.testing.assert_array_equal(RooflineModel().predict(feats), [-2.0, -1.0, 0.0])
    RooflineModel().save(tmp_path / "roof")
    assert isinstance(load_model(tmp_path / "roof"), RooflineModel)
    RandomModel(7).save(tmp_path / "rand")
    loaded = load_model(tmp_path / "rand")
    assert isinstance(loaded, RandomModel) and loaded.seed == 7
    np.testing.assert_array_equal(loaded.predict(feats), RandomModel(7).predict(feats))
    with pytest.raises(ModelError, match="holds a 'random' model"):
        XGBRankModel.load(tmp_path / "rand")


# -- features of real kernels --
def _stand_in_device(kind="cuda"):
    class Dev:
        name = "stand-in"
        arch = "sm_90" if kind == "cuda" else "cpu"
        num_units = 132 if kind == "cuda" else 2
        peak_flops, peak_f32_flops, mem_bandwidth, l2_bytes = 989e12, 67e12, 3.35e12, 50 * 2**20
    Dev.kind = kind
    return Dev()


def _device(target: str):
    try:
        from tilefuse.autotune.device import device_for_target
    except ImportError:
        return _stand_in_device("cpu" if target == "cpu" else "cuda")
    return device_for_target(target)


@pytest.fixture(scope="module")
def matmul_spec():
    import tilefuse as tf
    from tilefuse.kernels import fusion_rules, spec_for
    from tilefuse.passes import run_pipeline

    g = tf.GraphBuilder("t")
    x = g.input("x", (64, 128), "f16")
    w = g.input("w", (128, 256), "f16")
    g.output("y", tf.silu(x @ w))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    return spec_for(kg, kg.kernels[0], "triton")


def test_featurize_real_matmul_on_sm90(matmul_spec):
    from tilefuse.schedule.target import get_target

    cfg = matmul_spec.default_config(get_target("sm_90"))
    dev = _device("sm_90")
    f = featurize(matmul_spec, cfg, dev)
    assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
    assert f == featurize(matmul_spec, cfg, dev)
    for k in ("knob_BLOCK_M", "knob_num_warps", "spec_M", "arith_intensity", "flops_per_program", "bytes_per_program",
              "programs", "waves", "occupancy", "occupancy_blocks", "regs_per_thread", "shared_per_program",
              "dev_units", "dev_mem_bandwidth", "dev_peak_flops", "dev_l2_bytes", "roofline_time",
              "roofline_time_min", "res_registers", "res_hgmma"):
        assert k in f, k
    assert f["flops"] == 2.0 * 64 * 128 * 256 and f["arith_intensity"] == pytest.approx(f["flops"] / f["bytes"])
    assert f["dev_units"] == 132 and f["dev_arch"] == 90 and f["dev_is_gpu"] == 1.0
    assert f["res_registers"] == -1.0 and f["res_spills"] == -1.0  # no resource report given
    assert 0 < f["occupancy"] <= 1 and f["roofline_time"] >= f["roofline_time_min"] > 0
    smaller = cfg.replace(BLOCK_M=64, BLOCK_N=32, num_warps=4)
    g = featurize(matmul_spec, smaller, dev)
    assert g["programs"] == 8 * f["programs"] and g["roofline_time"] != f["roofline_time"]


def test_featurize_with_resource_report(matmul_spec):
    from tilefuse.schedule.target import get_target
    from tilefuse.codegen.resources import ResourceReport

    fields = dict.fromkeys(("stack_bytes", "local_bytes", "spill_stores", "spill_loads", "imma", "qgmma", "igmma",
                            "utmaldg", "ldl", "stl"), 0)
    rep = ResourceReport(registers=168, static_shared_bytes=0, dynamic_shared_bytes=98304, hgmma=32, hmma=0,
                         ldgsts=0, ffma=40, total_instructions=900, **fields)
    cfg = matmul_spec.default_config(get_target("sm_90"))
    f = featurize(matmul_spec, cfg, _device("sm_90"), rep.to_dict())
    assert f["res_registers"] == 168 and f["res_shared_bytes"] == 98304 and f["res_hgmma"] == 32
    assert f["res_spills"] == 0.0 and f["regs_per_thread"] == 168
    assert featurize(matmul_spec, cfg, _device("sm_90"), rep) == f  # the report object itself works too
    # a record made before the report existed gets it from its measurement
    meas = Measurement(Status.OK, (1e-5,), True, resources=rep.to_dict())
    rec = Record(matmul_spec.key, "matmul", {}, "d", {}, cfg, meas, {}, featurize(matmul_spec, cfg, _device("sm_90")))
    assert record_features(rec)["res_registers"] == 168


def test_featurize_cpu_config_and_stand_in_device(matmul_spec):
    from tilefuse.schedule.target import get_target

    cfg = matmul_spec.default_config(get_target("cpu"))
    f = featurize(matmul_spec, cfg, _stand_in_device("cpu"))
    assert f["dev_is_gpu"] == 0.0 and f["occupancy"] == 1.0 and f["knob_tile_m"] == cfg["tile_m"]
    assert all(math.isfinite(v) for v in f.values())
    assert featurize(matmul_spec, matmul_spec.default_config(get_target("sm_80")), _stand_in_device())["dev_arch"] == 90


def test_cpu_matmul_features_count_padding_and_core_balance():
    """An odd 777x333 GEMM: tiles of 112x48 pad M to 784 and N to 336 and make 7 x 7 = 49 parallel
    tasks (2 cores: the busier runs 25, so balance 49/50); tiles of 128x256 pad to 896x512 in 7 x 2
    tasks (balance 14/14) and the roofline charges the padded work."""
    import tilefuse as tf
    from tilefuse.kernels import fusion_rules, spec_for
    from tilefuse.passes import run_pipeline

    g = tf.GraphBuilder("odd")
    g.output("c", g.input("a", (777, 1024), "f32") @ g.input("b", (1024, 333), "f32"))
    kg = run_pipeline(g.build(), fusion_rules()).kernels
    spec = spec_for(kg, kg.kernels[0], "tvm")
    dev = _stand_in_device("cpu")
    base = dict(tile_k=256, micro_m=8, micro_n=48, vector=16, unroll=4)
    fitted = featurize(spec, Config(tile_m=112, tile_n=48, **base), dev)
    assert fitted["spec_pad_m"] == pytest.approx(784 / 777) and fitted["spec_pad_n"] == pytest.approx(336 / 333)
    assert fitted["spec_pad_k"] == 1.0 and fitted["spec_k_tiles"] == 4
    assert fitted["spec_parallel_tasks"] == 49 and fitted["unit_balance"] == pytest.approx(49 / 50)
    assert fitted["spec_micro_accumulators"] == 8 * 3
    assert fitted["spec_b_panel_bytes"] == 256 * 48 * 4 and fitted["spec_micro_panel_bytes"] == (8 + 48) * 256 * 4
    pow2 = featurize(spec, Config(tile_m=128, tile_n=256, **{**base, "micro_n": 32}), dev)
    assert pow2["spec_work_ratio"] == pytest.approx(896 * 512 / (777 * 333))
    assert pow2["spec_parallel_tasks"] == 14 and pow2["unit_balance"] == 1.0
    assert pow2["roofline_time"] > fitted["roofline_time"]  # 1.77x the work outweighs 2% imbalance


def test_feature_names_and_matrix():
    dicts = [{"b": 1.0, "a": 2.0}, {"c": 3.0}]
    names = feature_names(dicts)
    assert names == ["a", "b", "c"]
    x = to_matrix(dicts, names)
    assert x.shape == (2, 3) and x[0, 0] == 2.0 and np.isnan(x[1, 0]) and x[1, 2] == 3.0
    assert feature_names(make_records(1)[:3])[:3] == ["dev_mem_bandwidth", "feature_schema", "knob_BLOCK_M"]


# -- import hygiene and CLI --
def test_library_imports_without_xgboost(monkeypatch):
    import importlib

    for mod in [m for m in sys.modules if m.startswith("tilefuse.costmodel")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "xgboost", None)  # `import xgboost` now raises ImportError
    cm = importlib.import_module("tilefuse.costmodel")
    assert cm.RooflineModel().predict([{"roofline_time": 1.0}])[0] == -1.0


def test_cli_train_eval_and_cross_device(tmp_path, capsys):
    data = tmp_path / "records.jsonl"
    recs = make_records(8) + make_records(8, "devB", opt_m=128, bandwidth=4.8e12, seed=1)
    data.write_text("\n".join(r.to_json() for r in recs) + "\n")
    out = tmp_path / "model"
    rc = cm_cli.main(["costmodel", "train", "--data", str(data), "--out", str(out), "--holdout", "0.25",
                      "--device", "devA", "--rounds", "30"])
    text = capsys.readouterr().out
    assert rc == 0 and (out / "meta.json").is_file()
    for word in ("xgb", "roofline", "random", "top-1", "kendall-tau", "held out"):
        assert word in text
    assert cm_cli.main(["costmodel", "eval", "--data", str(data), "--model", str(out), "--device", "GPU devB"]) == 0
    assert "roofline" in capsys.readouterr().out
    rc = cm_cli.main(["costmodel", "train", "--data", str(data), "--device", "devA", "--test-device", "devB",
                      "--few-shot", "4", "--rounds", "30"])
    assert rc == 0 and "xgb+few_shot" in capsys.readouterr().out
    assert cm_cli.main(["costmodel", "eval", "--data", str(data), "--model", str(tmp_path / "nope")]) == 2
    assert "no meta.json" in capsys.readouterr().err
    data.write_text("{not json\n")
    assert cm_cli.main(["costmodel", "train", "--data", str(data)]) == 2
    assert "records.jsonl:1" in capsys.readouterr().err


def test_cli_train_saves_where_compile_looks(tmp_path, monkeypatch, capsys):
    """Without --out, `costmodel train` saves to the model directory compile's "auto" reads;
    --no-save saves nothing."""
    from tilefuse.schedule.target import get_target
    from tilefuse.compiler import open_sources
    from tilefuse.settings import reload_settings

    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(r.to_json() for r in make_records(6)) + "\n")
    home = tmp_path / "cm"
    monkeypatch.setenv("TILEFUSE_COSTMODEL", str(home))
    reload_settings()
    try:
        assert cm_cli.main(["costmodel", "train", "--data", str(data), "--rounds", "10", "--no-save"]) == 0
        assert not home.exists()
        assert cm_cli.main(["costmodel", "train", "--data", str(data), "--rounds", "10"]) == 0
        assert f"to {home}" in capsys.readouterr().out and (home / "meta.json").is_file()
        assert open_sources(get_target("cpu"), db=None).model is not None
        assert cm_cli.main(["costmodel", "train", "--data", str(data), "--no-save", "--out", str(home)]) == 2
    finally:
        monkeypatch.undo()
        reload_settings()
