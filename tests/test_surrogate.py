"""The surrogate benchmark's models and oracles on a real tiny supernet.

The targets here are a known function of the networks' real layers (the supernet builds them), so
the tests can say what a model must recover; the surrogate run on real measurements is in
test_search_e2e.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlnas.oracles.surrogate import (
    BenchmarkTable,
    Featurizer,
    Surrogate,
    SurrogateAccuracyOracle,
    SurrogateError,
    SurrogateLatencyOracle,
    cross_validate,
    layer_features,
)
from rlnas.search.evaluator import Evaluator, NetworkBuilder

RES = 32


def test_layer_features_add_up_to_the_macs(supernet):
    arch = supernet.space.sample(np.random.default_rng(1))
    feats = layer_features(supernet, arch, RES)
    assert sum(v for k, v in feats.items() if k.endswith("mmacs")) == pytest.approx(supernet.count_macs(arch, RES) / 1e6)
    assert {k.split("/")[1] for k in feats} <= {"conv1x1", "convkxk", "grouped", "fc"}


def test_additive_model_recovers_an_additive_latency(supernet, make_table):
    table = make_table(supernet)
    additive = cross_validate(table, Featurizer(supernet, RES), "latency_ratio", "additive")
    ridge = cross_validate(table, Featurizer(supernet, RES), "latency_ratio", "ridge")
    assert additive.kendall_tau > 0.95 and additive.mae < 0.02 * np.mean(table.targets("latency_ratio"))
    assert additive.n == 60 and len(additive.residuals) == 60
    assert ridge.kendall_tau > 0.5


def test_trees_rank_a_saturating_accuracy(supernet, make_table):
    report = cross_validate(make_table(supernet), Featurizer(supernet, RES), "acc_int8", "trees")
    assert report.kendall_tau > 0.7


def test_noise_is_fixed_per_network_and_bounded_by_the_residuals(supernet, make_table):
    table = make_table(supernet)
    clean = Surrogate(table, supernet, RES, seed=3)  # the same trees: only the noise differs
    noisy = Surrogate(table, supernet, RES, noise=1.0, seed=3)
    rng = np.random.default_rng(7)
    archs = [supernet.space.sample(rng) for _ in range(10)]
    assert [noisy.predict(a) for a in archs] == [noisy.predict(a) for a in archs]
    diffs = [noisy.predict(a)["acc_int8"] - clean.predict(a)["acc_int8"] for a in archs]
    assert any(abs(d) > 0 for d in diffs)
    assert max(abs(d) for d in diffs) <= np.abs(noisy.residuals["acc_int8"]).max() + 1e-9


def test_oracles_behind_the_evaluator(supernet, make_table):
    surrogate = Surrogate(make_table(supernet), supernet, RES)
    latency, accuracy = SurrogateLatencyOracle(surrogate), SurrogateAccuracyOracle(surrogate)
    evaluator = Evaluator(supernet, latency, accuracy, (1, 3, RES, RES), budget=15,
                          reference=accuracy.evaluate_model(None, "a0"))
    rng = np.random.default_rng(0)
    while not evaluator.budget_exhausted:
        m = evaluator.evaluate(supernet.space.sample(rng))
        assert m.ok and m.latency_ratio == pytest.approx(surrogate.predict(m.arch)["latency_ratio"])
        assert m.feasible == (m.acc_int8 >= evaluator.target_accuracy)
    assert evaluator.unique_evaluations == 15
    with pytest.raises(TypeError, match="NetworkBuilder"):
        latency.measure(supernet.extract(supernet.space.max_arch()), (1, 3, RES, RES))
    assert latency.measure(NetworkBuilder(supernet, evaluator.a0), (1, 3, RES, RES)).latency_ms > 0


def test_bad_tables_say_what_to_do(tmp_path, supernet, make_table):
    with pytest.raises(SurrogateError, match="surrogate_benchmark.py build"):
        BenchmarkTable.load(tmp_path / "missing.json")
    table = make_table(supernet, n=12)
    table.save(tmp_path / "t.json")
    loaded = BenchmarkTable.load(tmp_path / "t.json")
    assert len(loaded.rows) == 12
    with pytest.raises(SurrogateError, match="checkpoint_id, device"):
        loaded.check_context({**table.header["context"], "checkpoint_id": "other", "device": {"name": "icelake_vnni"}})
    loaded.check_context(dict(table.header["context"]))
    with pytest.raises(SurrogateError, match="unknown surrogate model 'gp'"):
        Surrogate(loaded, supernet, RES, latency_model="gp")
    with pytest.raises(SurrogateError, match="cross-validation needs"):
        cross_validate(make_table(supernet, n=6), Featurizer(supernet, RES), "acc_int8", "trees")


def test_a_table_names_its_supernet_and_loads_from_a_relative_path(tmp_path, monkeypatch, supernet, make_table):
    """The fit command's supernet comes from the table itself (the package reads the whole format);
    a relative table path is the working directory's, as every configured path."""
    table = make_table(supernet, n=12)
    table.header["context"] = {**table.header["context"],
                               "model": json.dumps({"family": "resnet_tiny", "kwargs": {"num_classes": 10}})}
    rebuilt = table.supernet()
    assert [rebuilt.network_key(a) for a in table.archs] == [supernet.network_key(a) for a in table.archs]
    table.save(tmp_path / "t.json")
    monkeypatch.chdir(tmp_path)
    assert BenchmarkTable.load("t.json").rows == table.rows
    with pytest.raises(SurrogateError, match="oracle.table="):
        BenchmarkTable.load("missing.json")
