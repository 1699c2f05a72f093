"""LatencyOracle with real OpenVINO and NNCF on tiny CNNs (16-32 px), kept short."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlnas.oracles.device import (
    DeviceProfile,
    DeviceProfileError,
    host_cpu_flags,
    kernels_above,
    missing_flags,
)
from rlnas.oracles.irbuild import check_input_shape
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.latency_results import LatencyResult
from rlnas.oracles.ratios import TimingConfig, ratio_estimates

FAST = TimingConfig(warmup_iters=2, block_iters=5, block_skip=1, min_rounds=3, min_iters=10, min_time_s=0.05,
                    max_time_s=5.0, target_rel_error=None)
SHAPE = (1, 3, 16, 16)


def tiny(width: int = 8, depth: int = 2) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers).eval()


class Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("this forward always fails")


class ReturnsString(nn.Module):
    def forward(self, x):
        return "not a tensor"


def make_oracle(tmp_path_factory, profile, reference=None, **kwargs) -> LatencyOracle:
    root = tmp_path_factory.mktemp("latency")
    return LatencyOracle(profile, cache_dir=root, reference=reference, timing=FAST,
                         lock_path=str(root / "lock"), timeout_s=120, **kwargs)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    with make_oracle(tmp_path_factory, "host", reference=tiny(16, 3), reference_key="tiny16x3") as o:
        yield o


@pytest.fixture(scope="module")
def int8_result(oracle) -> LatencyResult:
    return oracle.measure(tiny(8, 2), SHAPE, "int8", model_key="tiny8x2")


def test_int8_result_runs_int8_kernels(int8_result):
    r = int8_result
    assert r.ok, r.reason
    assert r.int8_kernels(), r.kernels
    assert any("i8" in k.lower() for k in r.kernels)
    assert r.inference_precision == "f32"
    assert r.p10_ms <= r.latency_ms <= r.p90_ms
    assert r.ref_latency_ms > 0 and r.ratio > 0
    assert set(r.ratio_estimates) >= {"median_round_p10", "p10", "median"}
    assert r.ir_path.endswith(".xml") and os.path.isfile(r.ir_path) and r.ir_size_bytes > 0
    assert {"convert", "quantize", "save", "compile", "measure", "total"} <= set(r.stage_seconds)
    assert r.versions["openvino"] and r.versions["nncf"]
    assert not r.cached and r.iterations >= FAST.min_iters and r.rounds >= FAST.min_rounds
    assert r.ratio_rel_error is not None and r.ratio_rel_error >= 0


def kill_worker(oracle) -> int:
    """Kill the oracle's timing worker (the next timing restarts it); returns its restart count."""
    oracle.worker.kill()
    assert not oracle.worker.alive()
    return oracle.worker.restarts


def test_cache_hit_builds_and_times_nothing(oracle, int8_result):
    """A cache hit is the stored record: the builder is not called and nothing is timed (the
    killed worker stays dead: any request would have restarted it)."""
    built = []

    def builder():
        built.append(1)
        return tiny(8, 2)

    restarts = kill_worker(oracle)
    again = oracle.measure(builder, SHAPE, "int8", model_key="tiny8x2")
    assert again.cached and not built
    assert not oracle.worker.alive() and oracle.worker.restarts == restarts
    assert again.latency_ms == int8_result.latency_ms and again.kernels == int8_result.kernels
    assert again.measured_at == int8_result.measured_at and again.stage_seconds == int8_result.stage_seconds


def test_cache_keys_differ_by_precision_profile_and_shape(oracle, tmp_path_factory):
    key = oracle.cache_key("m", SHAPE, "int8")
    assert key != oracle.cache_key("m", SHAPE, "fp32")
    assert key != oracle.cache_key("m", (1, 3, 32, 32), "int8")
    other = LatencyOracle(DeviceProfile("host", None, "f32", threads=1), store=oracle.store,
                          cache_dir=oracle.cache_dir, reference=tiny(16, 3), reference_key="tiny16x3")
    assert other.cache_key("m", SHAPE, "int8") != key
    no_ref = LatencyOracle("host", store=oracle.store, cache_dir=oracle.cache_dir)
    assert no_ref.cache_key("m", SHAPE, "int8") != key
    assert oracle.cache_key("m", (3, 16, 16), "int8") == key


def test_fp32_and_fp16_record_the_precision_used(oracle):
    fp16 = oracle.measure(tiny(8, 2), SHAPE, "fp16", model_key="tiny8x2")
    assert fp16.ok, fp16.reason
    assert fp16.inference_precision == "f32"  # the host profile states f32
    assert not fp16.int8_kernels()
    assert fp16.ir_path != oracle.ir_path("tiny8x2", SHAPE, "fp32")


def test_calibration_iterable(oracle):
    batches = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    r = oracle.measure(tiny(8, 1), SHAPE, "int8", model_key="tiny8x1", calibration=batches)
    assert r.ok, r.reason
    assert r.int8_kernels(), r.kernels


def _broken_builder() -> nn.Module:
    raise RuntimeError("cannot build")


@pytest.mark.parametrize(("bad", "stage"), [(Raises(), "convert"), (ReturnsString(), "convert"),
                                            (_broken_builder, "build")],
                         ids=["forward-raises", "not-convertible", "builder-raises"])
def test_failing_model_gives_failed_result(oracle, bad, stage):
    key = f"bad:{getattr(bad, '__name__', type(bad).__name__)}"
    r = oracle.measure(bad, SHAPE, "int8", model_key=key)
    assert r.status == "failed" and not r.ok
    assert f"{stage} failed" in r.reason
    again = oracle.measure(bad, SHAPE, "int8", model_key=key)
    assert again.cached and again.status == "failed"
    retried = oracle.measure(bad, SHAPE, "int8", model_key=key, retry_failed=True)
    assert not retried.cached and retried.status == "failed"


def test_bad_arguments_raise_clear_errors(oracle):
    for shape in [(3, 16), (2, 3, 16, 16), (1, 3, 0, 16), ("a", 3, 16, 16), (1, 3, 16.5, 16)]:
        with pytest.raises(ValueError, match="input_shape"):
            oracle.measure(tiny(), shape, model_key="x")
    with pytest.raises(ValueError, match="int8"):
        oracle.measure(tiny(), SHAPE, "int4", model_key="x")
    with pytest.raises(DeviceProfileError, match="valid"):
        LatencyOracle("nope", cache_dir=oracle.cache_dir)
    if not oracle.profile.supports("bf16"):
        with pytest.raises(ValueError, match="bf16"):
            oracle.measure(tiny(), SHAPE, "bf16", model_key="x")
    assert check_input_shape([3, 8, 8]) == (1, 3, 8, 8)


def test_worker_restarts_after_kill_and_timeout(oracle):
    first = oracle.measure(tiny(8, 2), SHAPE, "fp32", model_key="tiny8x2")
    assert first.ok, first.reason
    pid = oracle.worker.pid
    os.kill(pid, signal.SIGKILL)
    r = oracle.measure(tiny(8, 2), SHAPE, "fp32", model_key="tiny8x2", force=True)
    assert r.ok, r.reason
    assert r.ir_reused and oracle.worker.pid != pid
    oracle.timeout_s = 0.01
    try:
        timed_out = oracle.measure(tiny(8, 2), SHAPE, "fp32", model_key="tiny8x2", force=True)
    finally:
        oracle.timeout_s = 120
    assert timed_out.status == "failed" and "timed out" in timed_out.reason
    assert not oracle.worker.alive()
    assert oracle.measure(tiny(8, 2), SHAPE, "fp32", model_key="tiny8x2").status == "failed"
    r = oracle.measure(tiny(8, 2), SHAPE, "fp32", model_key="tiny8x2", retry_failed=True)
    assert r.ok, r.reason


def save_tiny_ir(path, shape=SHAPE):
    """A conv + relu + pool IR written with ``ov.save_model`` (no torch, no NNCF); ``shape`` may
    hold -1 for dynamic dimensions."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter(list(shape), np.float32, name="x")
    w = ops.constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    y = ops.relu(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1]))
    y = ops.reduce_mean(y, ops.constant(np.array([2, 3], dtype=np.int64)), keep_dims=False)
    ov.save_model(ov.Model([y], [x], "tiny_ir"), str(path), compress_to_fp16=False)
    return path


def sha256_of(*paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    return save_tiny_ir(tmp_path_factory.mktemp("ir") / "tiny.xml")


def test_measure_ir_times_an_existing_ir_then_caches_it(oracle, tiny_ir):
    r = oracle.measure_ir(tiny_ir)
    assert r.ok, r.reason
    assert not r.cached and r.ir_reused
    assert r.input_shape == SHAPE  # read from the IR's static input
    assert r.model_key == "ir:" + sha256_of(tiny_ir, tiny_ir.with_suffix(".bin"))
    assert r.ir_path == str(tiny_ir) and r.ir_size_bytes > 0
    assert r.precision == "int8" and r.inference_precision == "f32"
    assert r.ref_latency_ms > 0 and r.ratio > 0  # the module reference was interleaved
    assert r.stage_seconds["convert"] == 0 and r.stage_seconds["quantize"] == 0 and "measure" in r.stage_seconds
    assert not r.int8_kernels()  # an f32 IR taken as is: the "int8" label never quantizes it
    restarts = kill_worker(oracle)
    again = oracle.measure_ir(str(tiny_ir), SHAPE)
    assert again.cached and again.latency_ms == r.latency_ms and again.model_key == r.model_key
    assert again.measured_at == r.measured_at
    assert not oracle.worker.alive() and oracle.worker.restarts == restarts  # nothing was timed
    forced = oracle.measure_ir(tiny_ir, force=True)
    assert forced.ok and not forced.cached
    fp32 = oracle.measure_ir(tiny_ir, precision="fp32")
    assert fp32.ok and not fp32.cached and fp32.precision == "fp32"


def test_measure_ir_key_is_the_content_not_the_path(oracle, tiny_ir, tmp_path):
    first = oracle.measure_ir(tiny_ir)
    copy = tmp_path / "copy.xml"
    shutil.copyfile(tiny_ir, copy)
    shutil.copyfile(tiny_ir.with_suffix(".bin"), copy.with_suffix(".bin"))
    same = oracle.measure_ir(copy)
    assert same.cached and same.model_key == first.model_key and same.latency_ms == first.latency_ms
    other = tmp_path / "other.xml"  # same .xml, one weight changed in the .bin (same size)
    shutil.copyfile(tiny_ir, other)
    weights = bytearray(tiny_ir.with_suffix(".bin").read_bytes())
    weights[:4] = np.float32(0.5).tobytes() if weights[:4] != np.float32(0.5).tobytes() else b"\0\0\0\0"
    other.with_suffix(".bin").write_bytes(bytes(weights))
    changed = oracle.measure_ir(other)
    assert changed.ok and not changed.cached and changed.model_key != first.model_key
    named = oracle.measure_ir(copy, model_key="my-ir")
    assert named.model_key == "my-ir" and not named.cached


def test_measure_ir_missing_or_bad_files_raise_before_anything(oracle, tiny_ir, tmp_path):
    before = len(oracle.store)
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        oracle.measure_ir(tmp_path / "nope.xml")
    lonely = tmp_path / "lonely.xml"
    shutil.copyfile(tiny_ir, lonely)
    with pytest.raises(FileNotFoundError, match=r"lonely\.bin"):
        oracle.measure_ir(lonely)
    with pytest.raises(ValueError, match=r"\.xml"):
        oracle.measure_ir(tiny_ir.with_suffix(".bin"))
    broken = tmp_path / "broken.xml"
    broken.write_text("<net><layers>")
    broken.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read"):
        oracle.measure_ir(broken)
    with pytest.raises(ValueError, match="does not fit"):
        oracle.measure_ir(tiny_ir, (1, 3, 32, 32))
    import openvino as ov
    from openvino import opset13 as ops

    a, b = ops.parameter(list(SHAPE), np.float32), ops.parameter(list(SHAPE), np.float32)
    two = tmp_path / "two.xml"
    ov.save_model(ov.Model([ops.add(a, b)], [a, b]), str(two))
    with pytest.raises(ValueError, match="2 inputs"):
        oracle.measure_ir(two)
    with pytest.raises(ValueError, match="int8"):
        oracle.measure_ir(tiny_ir, precision="int4")
    assert len(oracle.store) == before


def test_measure_ir_dynamic_input_needs_a_shape(oracle, tmp_path):
    dynamic = save_tiny_ir(tmp_path / "dynamic.xml", shape=(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="dynamic"):
        oracle.measure_ir(dynamic)
    r = oracle.measure_ir(dynamic, (3, 16, 16))
    assert r.ok, r.reason
    assert r.input_shape == SHAPE and r.ratio > 0


def test_reference_may_be_an_ir(tmp_path_factory, tiny_ir):
    with make_oracle(tmp_path_factory, "host", reference=tiny_ir) as o:
        assert o.cache_key("m", SHAPE, "int8")["reference"] == {"ir": o.measure_ir(tiny_ir).model_key}
        r = o.measure(tiny(8, 1), SHAPE, "fp32", model_key="tiny8x1")
        assert r.ok, r.reason
        assert r.ref_latency_ms > 0 and r.ratio > 0
    with pytest.raises(FileNotFoundError, match="reference IR"):
        LatencyOracle("host", cache_dir=o.cache_dir, reference=tiny_ir.with_name("absent.xml"))


#: Layer types whose kernels OpenVINO's CPU plugin generates itself, at the host's ISA whatever
#: ONEDNN_MAX_CPU_ISA says (pooling by Reduce, quantizers, fused element-wise subgraphs).
OPENVINO_OWN_JIT_LAYERS = {"Reduce", "FakeQuantize", "Subgraph", "Eltwise", "Pooling"}


@pytest.mark.skipif(bool(missing_flags("AVX2")), reason="host lacks AVX2")
def test_avx2_profile_caps_onednn_kernels_at_avx2(tmp_path_factory):
    with make_oracle(tmp_path_factory, "kabylake_avx2") as o:
        r = o.measure(tiny(8, 2), SHAPE, "int8", model_key="tiny8x2")
        assert o.worker.hello["isa_env"] == "AVX2"
        assert r.ok, r.reason
        once = TimingConfig(warmup_iters=1, block_iters=2, block_skip=0, min_rounds=2, min_iters=2,
                            min_time_s=0.0, max_time_s=5.0)
        confirmed = o.confirm({"a": r.ir_path, "b": r.ir_path}, "a", once)
    assert confirmed.above_cap["a"] == confirmed.above_cap["b"] == r.above_cap
    assert r.int8_kernels() and r.isa == "AVX2"
    # oneDNN's primitives honour the cap: every convolution and matmul runs AVX2 at most
    compute = [k.lower() for k in r.layer_kernels if k.startswith(("Convolution:", "FullyConnected:"))]
    assert any("avx2" in k for k in compute), r.layer_kernels
    assert not [k for k in compute if "avx512" in k or "amx" in k], r.layer_kernels
    # OpenVINO's own JIT kernels do not (seen on a Zen 4 host: Reduce:jit_avx512_I8 under the AVX2
    # cap, FakeQuantize:jit_avx512_f32 under SSE41): only those may exceed it
    assert r.above_cap == kernels_above(r.layer_kernels, "AVX2")
    assert {k.partition(":")[0] for k in r.above_cap} <= OPENVINO_OWN_JIT_LAYERS, r.layer_kernels


def test_isa_cap_reaches_the_worker(tmp_path_factory):
    """On any host, an SSE4.1 cap must turn the convolutions into SSE kernels."""
    with make_oracle(tmp_path_factory, DeviceProfile("sse41", "SSE41", "f32")) as o:
        r = o.measure(tiny(8, 2), SHAPE, "fp32", model_key="tiny8x2")
    assert r.ok, r.reason
    assert any("sse" in k for k in r.kernels), r.kernels


@pytest.mark.skipif("avx512_vnni" not in host_cpu_flags(), reason="host lacks AVX512_VNNI")
def test_vnni_profile_runs_avx512_int8(tmp_path_factory):
    with make_oracle(tmp_path_factory, "icelake_vnni") as o:
        r = o.measure(tiny(8, 2), SHAPE, "int8", model_key="tiny8x2")
    assert r.ok, r.reason
    assert any("avx512" in k and k.lower().endswith("i8") for k in r.kernels), r.kernels
    assert "amx" not in " ".join(r.kernels).lower()


def test_adaptive_stop_runs_until_the_ratio_is_precise():
    from rlnas.oracles.worker import _done

    timing = TimingConfig(min_rounds=3, min_iters=3, min_time_s=0.0, max_time_s=10.0, target_rel_error=0.01)
    steady = {"cand": [[2.0, 2.0]] * 5, "ref": [[1.0, 1.0]] * 5}
    noisy = {"cand": [[2.0, 2.0], [3.0, 3.0], [2.0, 2.0], [2.6, 2.6], [2.2, 2.2]], "ref": [[1.0, 1.0]] * 5}
    assert _done(steady["cand"], steady["ref"], 0.5, timing)
    assert not _done(noisy["cand"], noisy["ref"], 0.5, timing)
    assert _done(noisy["cand"], noisy["ref"], 10.0, timing)
    assert _done(noisy["cand"], noisy["ref"], 0.5,
                 TimingConfig(min_rounds=3, min_iters=3, min_time_s=0.0, target_rel_error=None))


def test_ratio_estimates_on_known_rounds():
    cand = [[2.0, 2.2, 4.0], [2.0, 2.1, 2.3]]
    ref = [[1.0, 1.1, 2.0], [1.0, 1.0, 1.2]]
    est = ratio_estimates(cand, ref)
    assert est["min"] == pytest.approx(2.0)
    assert 1.8 < est["median_round_p10"] < 2.2 and 1.8 < est["median"] < 2.2


def test_latency_app_end_to_end(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    import rlnas
    from rlnas.oracles import latency_app

    overrides = ["models=[mobilenet_v3_small]", "num_classes=10", "resolution=16", "precisions=[fp32]",
                 f"cache_dir={tmp_path}", f"lock_path={tmp_path / 'lock'}", "timing.min_time_s=0.05",
                 "timing.min_iters=10", "timing.min_rounds=2", "torch_fp32=false"]
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="latency", overrides=overrides)
    rows, raw = latency_app.run(cfg)
    assert len(rows) == 1 and raw[0]["status"] == "ok", raw[0]["reason"]
    assert "(f32)" in rows[0]["ov fp32 ms"]
    assert "mobilenet_v3_small" in latency_app.report(rows, raw)


def test_torch_latency(tmp_path):
    from rlnas.oracles.latency_app import TorchTiming, torch_latency

    t = torch_latency(tiny(), SHAPE, threads=1, timing=TorchTiming(1, 5, 0.01), lock_path=str(tmp_path / "l"))
    assert t["iterations"] >= 5 and t["p10_ms"] <= t["latency_ms"] <= t["p90_ms"]


def test_latency_app_rejects_bad_input():
    from rlnas.oracles import latency_app

    with pytest.raises(ValueError, match="resnet50"):
        latency_app.check_models(["resnet5"])
    for bad in (0, [32], "x", 3.5):
        with pytest.raises(ValueError, match="resolution"):
            latency_app.input_shape(bad)
    assert latency_app.input_shape([32, 48]) == (1, 3, 32, 48)


def test_confirmation_times_n_models_in_the_same_rounds(oracle, int8_result, tmp_path):
    """a0, a copy of a0's IR and two candidates in one interleaved measurement: the search's
    network as a0 and a0's copy both run as fast as a0 (ratio near 1), a model twice as deep is
    slower than a shallow one, the ratios order the networks as the latencies of the same rounds
    do, every ratio lies in its bootstrap interval, and the result is cached by the IRs' contents
    until forced."""
    deep = oracle.measure(tiny(8, 6), SHAPE, "int8", model_key="tiny8x6")
    ref = oracle.measure(tiny(16, 3), SHAPE, "int8", model_key="tiny16x3-as-candidate")
    # the oracle's reference is this network too: the search measured it as fast as itself
    assert 2 / 3 < ref.ratio < 3 / 2, ref.ratio_estimates
    copy = tmp_path / "a0_copy.xml"
    shutil.copyfile(ref.ir_path, copy)
    shutil.copyfile(Path(ref.ir_path).with_suffix(".bin"), copy.with_suffix(".bin"))
    irs = {"a0": ref.ir_path, "a0_copy": str(copy), "shallow": int8_result.ir_path, "deep": deep.ir_path}
    timing = TimingConfig(warmup_iters=2, block_iters=5, block_skip=1, min_rounds=8, min_iters=10,
                          min_time_s=0.2, max_time_s=10.0)
    c = oracle.confirm(irs, "a0", timing)
    assert c.reference == "a0" and c.rounds >= 8 and not c.cached
    assert set(c.ratio) == set(irs) and set(c.above_cap) == set(irs)
    assert not any(c.above_cap.values())  # the host profile has no cap
    assert 2 / 3 < c.ratio["a0_copy"] < 3 / 2  # the same network timed in the same rounds as a0
    assert c.ratio["shallow"] < c.ratio["deep"]
    # a ratio is candidate / a0 (not a0 / candidate): the ratios order the networks as their latencies do
    # (a0 and the deep network: about twice apart; the shallow one times within noise of a0 at 16 px)
    distinct = ["a0", "deep"]
    assert sorted(distinct, key=c.ratio.get) == sorted(distinct, key=c.latency_ms.get), (c.ratio, c.latency_ms)
    for name in irs:
        low, high = c.ratio_ci[name]
        assert low <= c.ratio[name] <= high and c.latency_ms[name] > 0
        assert any("i8" in k.lower() for k in c.kernels[name])
        # each round's p10 times are kept: the ratio is their per-round quotient's median
        assert len(c.round_p10[name]) == c.rounds
        per_round = [t / ref for t, ref in zip(c.round_p10[name], c.round_p10["a0"], strict=True)]
        assert c.ratio[name] == pytest.approx(float(np.median(per_round)))
    again = oracle.confirm(irs, "a0", timing)
    assert again.cached and again.ratio == c.ratio and again.round_p10 == c.round_p10
    assert not oracle.confirm(irs, "a0", timing, force=True).cached
    with pytest.raises(ValueError, match="reference"):
        oracle.confirm(irs, "nope", timing)


def test_layer_times_split_a_network_by_layer_class(oracle):
    """PERF_COUNT per layer class: the first conv is the stem, 3x3 convs and the FC are found,
    and the classes add up to a plausible inference time."""
    r = oracle.measure(tiny(8, 3), SHAPE, "int8", model_key="tiny8x3")
    times = oracle.layer_times(r.ir_path, iters=20)
    assert set(times) == {"stem", "conv1x1", "conv3x3", "grouped", "fc", "other"}
    assert times["stem"] > 0 and times["conv3x3"] > 0 and times["fc"] > 0 and times["grouped"] == 0
    assert 0 < sum(times.values()) < 50 * r.latency_ms
    kernels = oracle.kernel_times(r.ir_path, iters=20)
    assert any(k.startswith("Convolution:") for k in kernels) and all(":" in k for k in kernels)
    assert all(ms >= 0 for ms in kernels.values()) and sum(kernels.values()) > 0
