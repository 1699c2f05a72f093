"""Classification data: ImageFolder decoding and caching, clear errors, deterministic batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rlnas
from rlnas.data import DatasetError, DatasetSpec, resolve_path
from rlnas.data.loading import square, write_synthetic_imagefolder
from rlnas.tasks import build_data

REPO = Path(__file__).resolve().parent.parent
CIFAR = REPO / "data" / "cifar10"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_imagefolder(tmp_path_factory.mktemp("ds") / "root", {"train": 12, "val": 5},
                                       num_classes=3, size=20)


def spec(root: Path, tmp: Path, **kw) -> dict:
    return {"name": "imagefolder", "root": str(root), "train_split": "train", "val_split": "val",
            "store_size": 16, "cache_dir": str(tmp / "cache"), **kw}


def test_imagefolder_decodes_and_caches(folder: Path, tmp_path: Path) -> None:
    data = build_data(spec(folder, tmp_path), 16)
    assert data.classes == ["class0", "class1", "class2"] and data.num_classes == 3
    assert data.train.images.shape == (36, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.val.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = build_data(spec(folder, tmp_path), 16)
    assert again.train.source.startswith("cache:")
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.val.labels, data.val.labels)


def test_missing_root_and_split_are_explained(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"not found.*make data.*dataset\.root="):
        build_data({"name": "cifar10", "root": str(tmp_path / "nope"), "download_fallback": False}, 32)
    with pytest.raises(DatasetError, match="split folder .*test.* is missing"):
        build_data(spec(folder, tmp_path, val_split="test"), 16)
    with pytest.raises(DatasetError, match="no root"):
        DatasetSpec.from_config({"name": "imagefolder", "root": "???"})


def test_imagefolder_layout_errors_name_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "train" / ".hidden").mkdir(parents=True)
    with pytest.raises(DatasetError, match=rf"{root / 'train'} has no class folders"):
        build_data(spec(root, tmp_path), 16)
    (root / "train" / "cat").mkdir()
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=rf"no images \(\.jpg, .*\) under {root / 'train'}"):
        build_data(spec(root, tmp_path), 16)
    write_synthetic_imagefolder(root, {"train": 2}, num_classes=1, size=8)  # train/class0
    (root / "val" / "dog").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"val has classes not in the train split: \['dog'\]"):
        build_data(spec(root, tmp_path), 16)


def test_relative_paths_resolve_against_the_working_directory_then_the_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_path("rlnas/conf") == rlnas.CONF_DIR  # a shipped path, from any directory
    (tmp_path / "rlnas" / "conf").mkdir(parents=True)
    assert resolve_path("rlnas/conf") == tmp_path / "rlnas" / "conf"  # the user's own comes first
    assert resolve_path("nowhere/x") == tmp_path / "nowhere" / "x"  # missing: where the user looked
    assert resolve_path(tmp_path / "a" / ".." / "b") == tmp_path / "b"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/rlnas") == tmp_path / "rlnas"


def test_train_batches_are_deterministic_and_resumable(folder: Path, tmp_path: Path) -> None:
    data = build_data(spec(folder, tmp_path, pad=2), 24)
    first = list(data.train_batches(8, epoch=3, seed=5))
    assert len(first) == data.steps_per_epoch(8) == 4
    assert first[0][0].shape == (8, 3, 24, 24) and first[0][0].dtype == torch.float32
    resumed = list(data.train_batches(8, epoch=3, seed=5, start_step=2))
    for (xa, ya), (xb, yb) in zip(first[2:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = next(iter(data.train_batches(8, epoch=4, seed=5)))
    assert not torch.equal(other[0], first[0][0])
    labels = torch.cat([y for _, y in first])
    assert len(set(labels.tolist())) == 3


def test_rrc_augmentation_and_eval_transform(folder: Path, tmp_path: Path) -> None:
    data = build_data(spec(folder, tmp_path, augment="rrc", eval_crop=0.875), 12)
    x, _ = next(iter(data.train_batches(6, epoch=0)))
    assert x.shape == (6, 3, 12, 12) and torch.isfinite(x).all()
    images, labels = data.val_images()
    assert images.shape == (15, 3, 12, 12) and images.dtype == torch.uint8 and len(labels) == 15


def test_subsets_are_seeded_and_cached(folder: Path, tmp_path: Path) -> None:
    data = build_data(spec(folder, tmp_path), 16)
    a = data.train_subset(10, seed=1)
    assert a is data.train_subset(10, seed=1)
    assert not torch.equal(a, data.train_subset(10, seed=2))
    _, labels = data.val_images(6)
    assert len(set(labels.tolist())) > 1  # a random subset, not the first (class-ordered) images


def test_square_resizes_shorter_side_and_crops() -> None:
    img = torch.arange(3 * 20 * 40, dtype=torch.float32).reshape(3, 20, 40).to(torch.uint8)
    assert square(img, 10).shape == (3, 10, 10)


@pytest.mark.skipif(not (CIFAR / "train").is_dir(), reason="data/cifar10 absent (run make data)")
def test_tiny_config_reads_real_cifar(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "tiny.yaml")
    cfg.cache_dir = str(tmp_path)
    data = build_data(cfg, 32)
    assert len(data.train) == 256 and len(data.val) + len(data.holdout) == 128 and data.num_classes == 10
    assert data.train.images.shape[1:] == (3, 32, 32)


def _image_keys(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.flatten().tolist()) for img in images}


def test_validation_and_held_out_images_are_disjoint_halves(tmp_path: Path) -> None:
    """CIFAR-style: a seeded half of the test split is held out, the other half validates; the
    same seed gives the same halves, another seed others."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "tiny.yaml")
    cfg.cache_dir = str(tmp_path)
    data = build_data(cfg, 32)
    assert len(data.val) == len(data.holdout) == 64
    val, held = _image_keys(data.val.images), _image_keys(data.holdout.images)
    assert not val & held and len(val | held) == 128
    assert _image_keys(build_data(cfg, 32).holdout.images) == held
    cfg.split_seed = 1
    assert _image_keys(build_data(cfg, 32).holdout.images) != held
    assert data.eval_images("holdout")[1].tolist() != data.eval_images("val")[1].tolist()


def test_validation_carved_out_of_train(tmp_path: Path) -> None:
    """val_split = train_split: a share of the training images validates and is no longer trained on."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "tiny.yaml")
    cfg.update({"cache_dir": str(tmp_path), "val_split": "train", "holdout_split": "test", "val_fraction": 0.25})
    data = build_data(cfg, 32)
    assert len(data.val) == 64 and len(data.train) == 192 and len(data.holdout) == 128
    assert not _image_keys(data.val.images) & _image_keys(data.train.images)


def test_held_out_split_must_not_be_the_training_split() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "tiny.yaml")
    cfg.holdout_split = "train"
    with pytest.raises(ValueError, match="held-out images must be"):
        build_data(cfg, 32)


def test_cifar10_download_fallback_uses_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # stands in for the download: tests never touch the network
        classes = ["airplane", "automobile"]

        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            n = 6 if train else 4
            self.data = np.full((n, 32, 32, 3), 7, dtype=np.uint8)
            self.targets = [i % 2 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = build_data({"name": "cifar10", "root": str(tmp_path / "cifar10"), "train_split": "train",
                       "val_split": "test", "store_size": 32, "download_fallback": True}, 32)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert len(data.train) == 6 and len(data.val) == 4 and data.classes == ["airplane", "automobile"]
    assert int(data.train.images[0, 0, 0, 0]) == 7
