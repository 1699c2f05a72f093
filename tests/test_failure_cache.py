"""Which accuracy failures the store keeps: only those of the architecture itself. A one-off
failure (memory, a bug, a lost node) is reported and measured again by the next run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlnas.arch import InvalidArchError
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.oracles.store import MeasurementStore
from rlnas.spaces import create_supernet
from rlnas.tasks import build_data


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("failures")
    root = write_synthetic_imagefolder(tmp / "data", {"train": 8, "val": 4}, num_classes=4, size=16)
    cfg = OmegaConf.load(Path(__file__).parents[1] / "rlnas" / "conf" / "dataset" / "imagefolder.yaml")
    cfg.merge_with({"root": str(root), "store_size": 16, "eval_crop": 1.0, "cache_dir": ""})
    return build_data(cfg, 16)


def oracle(data, store: MeasurementStore) -> AccuracyOracle:
    supernet = create_supernet("resnet_tiny", num_classes=4).eval()
    return AccuracyOracle(supernet, data, store, "untrained", recal_images=8, calib_images=8, batch_size=8,
                          calib_batch_size=8, threads=1)


def raising(err: Exception):
    def extract(arch):
        raise err

    return extract


@pytest.mark.parametrize("err", [MemoryError(), TypeError("a bug"), RuntimeError("a lost worker")])
def test_a_one_off_failure_is_not_kept(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err) -> None:
    store = MeasurementStore(tmp_path / "store.db")
    first = oracle(data, store)
    arch = first.supernet.space.min_arch()
    monkeypatch.setattr(first.supernet, "extract", raising(err))
    failed = first.evaluate(arch)
    assert failed.status == "failed" and failed.transient and type(err).__name__ in failed.reason
    again = oracle(data, store).evaluate(arch)  # the next run
    assert again.ok and not again.cached and again.acc_int8 is not None


def test_a_failure_of_the_architecture_is_kept(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MeasurementStore(tmp_path / "store.db")
    first = oracle(data, store)
    arch = first.supernet.space.min_arch()
    monkeypatch.setattr(first.supernet, "extract", raising(InvalidArchError("no such block")))
    assert first.evaluate(arch).status == "failed"
    again = oracle(data, store).evaluate(arch)
    assert again.status == "failed" and again.cached and "no such block" in again.reason


class Broken(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("a0 cannot run today")


def test_a0_failure_is_never_kept(data, tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "store.db")
    failed = oracle(data, store).evaluate_model(Broken(), "a0-sha")
    assert failed.status == "failed" and "a0 cannot run today" in failed.reason
    fine = oracle(data, store)
    a0 = fine.supernet.extract(fine.supernet.space.max_arch()).eval()
    again = fine.evaluate_model(a0, "a0-sha")
    assert again.ok and not again.cached
