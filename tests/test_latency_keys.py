"""The latency oracle's cache keys and IR paths, pinned: a refactoring that changes one of them
orphans every stored measurement and IR, so each is compared with the value it had before."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from torch import nn

from rlnas.oracles.device import DeviceProfile
from rlnas.oracles.irbuild import structural_key
from rlnas.oracles.latency import PROTOCOL_VERSION, LatencyOracle
from rlnas.oracles.ratios import TimingConfig
from rlnas.oracles.store import key_hash
from rlnas.ovtools import ir_content_key

VERSIONS = {"openvino": "OV", "nncf": "NNCF", "torch": "T"}
SHAPE = (1, 3, 8, 8)


def reference() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()


def pinned_oracle(root: Path, **kwargs) -> LatencyOracle:
    """An oracle on a fixed profile with fixed library versions (the host's CPU model stays in
    the keys: the tests replace it where they pin a hash)."""
    oracle = LatencyOracle(DeviceProfile("pinned", None, "f32", threads=2), cache_dir=root, reference=reference(),
                           lock_path=None, check_host=False, **kwargs)
    oracle.versions = dict(VERSIONS)
    return oracle


@pytest.fixture
def ir_pair(tmp_path: Path) -> Path:
    xml = tmp_path / "a.xml"
    xml.write_bytes(b"<xml/>")
    xml.with_suffix(".bin").write_bytes(b"\x00\x01")
    return xml


def test_model_identities_are_unchanged(ir_pair):
    assert structural_key(reference()) == "struct:93b799dfea5bbb844deea17ca1e181c0"
    assert ir_content_key(ir_pair) == "ir:90ebd392db4bb3f65f9e44a5579a3aecb37ccf5d04342b2e2aaaa3ae4cf6c4b8"


def test_latency_cache_key_is_unchanged(tmp_path):
    oracle = pinned_oracle(tmp_path)
    key = oracle.cache_key("net:abc", SHAPE, "int8")
    assert key == {"model": "net:abc", "input_shape": [1, 3, 8, 8], "precision": "int8",
                   "profile": {"name": "pinned", "isa": None, "inference_precision": "f32", "threads": 2},
                   "cpu": oracle.timing_cpu(), "openvino": "OV", "nncf": "NNCF", "protocol": 2,
                   "reference": {"model": "struct:93b799dfea5bbb844deea17ca1e181c0"}}
    assert key_hash({**key, "cpu": "CPU"}) == "b7f39696c416f9f8fc94533ff635480ad1eba2c97d0db2caf806b3a0fc439220"


def test_ir_paths_are_unchanged(tmp_path):
    oracle = pinned_oracle(tmp_path)
    names = {p: oracle.ir_path("net:abc", SHAPE, p).name for p in ("int8", "fp16", "bf16")}
    assert names == {"int8": "int8-b2e13128e4f0829361a7b356.xml", "fp16": "fp16-375ca1ca454771895d6ceaaa.xml",
                     "bf16": "fp32-29bd37adc5b5823d44fbbedc.xml"}


def test_confirmation_key_is_unchanged(tmp_path, ir_pair):
    oracle = pinned_oracle(tmp_path)
    timing = TimingConfig(min_rounds=7)
    key = oracle.confirm_key({"a0": ir_pair}, {"a0": [1, 3, 8, 8]}, "a0", timing, "int8", repeat=2)
    assert key == {"models": {"a0": ir_content_key(ir_pair)}, "reference": "a0", "shapes": {"a0": [1, 3, 8, 8]},
                   "precision": "int8", "profile": oracle.profile.key(), "cpu": oracle.timing_cpu(),
                   "openvino": "OV", "protocol": PROTOCOL_VERSION, "timing": asdict(timing), "repeat": 2}
    assert "repeat" not in oracle.confirm_key({"a0": ir_pair}, {"a0": [1, 3, 8, 8]}, "a0", timing, "int8")


def test_throughput_keys_add_the_metric_and_share_the_irs(tmp_path, ir_pair):
    latency, throughput = pinned_oracle(tmp_path), pinned_oracle(tmp_path, metric="throughput")
    key = latency.cache_key("net:abc", SHAPE, "int8")
    assert "metric" not in key
    assert throughput.cache_key("net:abc", SHAPE, "int8") == {**key, "metric": "throughput"}
    assert throughput.ir_path("net:abc", SHAPE, "int8") == latency.ir_path("net:abc", SHAPE, "int8")
    args = ({"a0": ir_pair}, {"a0": [1, 3, 8, 8]}, "a0", TimingConfig(), "int8")
    assert latency.confirm_key(*args, metric="throughput") == {**latency.confirm_key(*args), "metric": "throughput"}


def test_unknown_metric_is_refused(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        pinned_oracle(tmp_path, metric="fps")
