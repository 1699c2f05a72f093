"""``latency.metric=throughput``: the oracle times OpenVINO's throughput mode (real OpenVINO and
NNCF on tiny CNNs at 16 px), in interleaved rounds against the reference, and says so in every
result, key and confirmation. No assertion on speed: the machine may be busy."""

from __future__ import annotations

import pytest
from torch import nn

from rlnas.oracles.latency import KIND, LatencyOracle
from rlnas.oracles.ratios import TimingConfig

FAST = TimingConfig(warmup_iters=2, block_iters=4, block_skip=1, min_rounds=3, min_iters=8, min_time_s=0.05,
                    max_time_s=5.0, target_rel_error=None)
SHAPE = (1, 3, 16, 16)


def tiny(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("throughput")


def oracle(root, metric: str) -> LatencyOracle:
    return LatencyOracle("host", cache_dir=root, reference=tiny(16, 3), reference_key="tiny16x3", timing=FAST,
                         lock_path=str(root / "lock"), timeout_s=300, metric=metric)


@pytest.fixture(scope="module")
def throughput(root):
    with oracle(root, "throughput") as o:
        yield o


def test_throughput_result_has_ratios_and_records_the_metric(throughput):
    r = throughput.measure(tiny(8, 2), SHAPE, "int8", model_key="tiny8x2")
    assert r.ok, r.reason
    assert r.metric == "throughput" and not r.cached
    assert r.ratio is not None and r.ratio > 0 and set(r.ratio_estimates) >= {"median_round_p10", "median"}
    assert r.latency_ms > 0 and r.ref_latency_ms > 0  # time per image, candidate and a0 in the same rounds
    assert r.rounds >= FAST.min_rounds and r.iterations == r.rounds * FAST.block_iters  # one sample per wave
    assert r.infer_requests >= 1 and r.streams >= 1  # the plugin's choice in throughput mode
    assert r.inference_precision == throughput.profile.inference_precision  # the hint set and recorded
    assert any("i8" in k.lower() for k in r.kernels)
    stored = [(k, rec) for k, rec in throughput.store.items(KIND) if k["model"] == "tiny8x2"]
    assert [k["metric"] for k, _ in stored] == ["throughput"] and stored[0][1]["metric"] == "throughput"
    again = throughput.measure(tiny(8, 2), SHAPE, "int8", model_key="tiny8x2")
    assert again.cached and again.metric == "throughput" and again.ratio == r.ratio


def test_latency_and_throughput_are_two_records_of_one_ir(root, throughput):
    with oracle(root, "latency") as latency:
        lat = latency.measure(tiny(8, 3), SHAPE, "int8", model_key="tiny8x3")
    thr = throughput.measure(tiny(8, 3), SHAPE, "int8", model_key="tiny8x3")
    assert lat.ok and thr.ok, (lat.reason, thr.reason)
    assert lat.metric == "latency" and lat.infer_requests == 1 and thr.metric == "throughput"
    assert not thr.cached and thr.ir_reused and thr.ir_path == lat.ir_path  # the IR is built once
    keys = [k for k, _ in throughput.store.items(KIND) if k["model"] == "tiny8x3"]
    assert len(keys) == 2 and sorted(k.get("metric", "latency") for k in keys) == ["latency", "throughput"]
    assert [k for k in keys if "metric" not in k] == [latency.cache_key("tiny8x3", SHAPE, "int8")]


def test_confirmation_uses_the_oracle_metric(throughput):
    """The finalists' confirmation (no metric given) times what the search timed; a throughput
    confirmation of a latency oracle is the export's throughput figure."""
    irs = {"a0": throughput.measure(tiny(16, 3), SHAPE, "int8", model_key="tiny16x3-ir").ir_path,
           "small": throughput.measure(tiny(4, 2), SHAPE, "int8", model_key="tiny4x2").ir_path}
    c = throughput.confirm(irs, "a0", FAST)
    assert c.metric == "throughput" and c.reference == "a0" and c.rounds >= FAST.min_rounds
    assert set(c.ratio) == set(irs) and c.ratio["a0"] == 1.0
    for name in irs:
        low, high = c.ratio_ci[name]
        assert low <= c.ratio[name] <= high and c.latency_ms[name] > 0
        assert c.infer_requests[name] >= 1 and c.streams[name] >= 1
        assert c.inference_precision[name] == throughput.profile.inference_precision
    assert throughput.confirm(irs, "a0", FAST).cached
    latency = throughput.confirm(irs, "a0", FAST, metric="latency")
    assert latency.metric == "latency" and not latency.cached and set(latency.infer_requests.values()) == {1}
