"""What several test modules build the same way: the tiny stand-in for a user's a0, the tiny
dataset (real CIFAR-10 images when ``data/cifar10`` is there, else a generated ImageFolder), and
supernets with non-trivial BN statistics. Imported as ``helpers`` (pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rlnas
from rlnas.arch import Arch
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.spaces import create_supernet

REPO = rlnas.REPO_DIR
CIFAR10 = REPO / "data" / "cifar10"
TINY_FAMILY = "resnet_tiny"
#: classes of the generated ImageFolder that stands in for CIFAR-10 in :func:`tiny_dataset`
GENERATED_CLASSES = 4
#: the torch modules an extracted sub-network may hold (nothing elastic)
PLAIN = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
         nn.Sequential, nn.ModuleList)


def have_cifar10() -> bool:
    """Whether ``data/cifar10`` holds the training images (``make data``)."""
    return (CIFAR10 / "train").is_dir()


def tiny_network(num_classes: int = 10) -> nn.Module:
    """``resnet_tiny``'s maximal network, untrained (torch seed 0), in eval mode: a user's model
    in miniature."""
    torch.manual_seed(0)
    supernet = create_supernet(TINY_FAMILY, num_classes=num_classes)
    return supernet.extract(supernet.space.max_arch()).eval()


def tiny_a0(path: Path, num_classes: int = 10) -> Path:
    """:func:`tiny_network`'s state dict saved at ``path``: an a0 checkpoint."""
    torch.save(tiny_network(num_classes).state_dict(), path)
    return path


def search_data_overrides(root: Path) -> list[str]:
    """The data overrides of an ``rlnas-search experiment=tiny`` run: none when ``data/cifar10``
    is there, else ``dataset.root`` at a generated 10-class ImageFolder under ``root/images``
    (26 training and 13 test images a class)."""
    if have_cifar10():
        return []
    images = write_synthetic_imagefolder(root / "images", {"train": 26, "test": 13}, num_classes=10)
    return [f"dataset.root={images}"]


def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, train_limit: int, val_limit: int) -> dict[str, Any]:
    """A ``dataset`` config of ``train_limit`` training and ``val_limit`` validation images (the
    held-out ones drawn from the validation split): real CIFAR-10 when ``data/cifar10`` is there,
    else a generated ImageFolder of :data:`GENERATED_CLASSES` classes holding as many images."""
    cfg = {"name": "tiny", "root": str(CIFAR10), "train_split": "train", "val_split": "test",
           "holdout_split": "test", "train_limit": train_limit, "val_limit": val_limit, "store_size": 32,
           "num_classes": 10, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
           "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    if not have_cifar10():
        per_class = {"train": train_limit // GENERATED_CLASSES, "test": val_limit // GENERATED_CLASSES}
        root = write_synthetic_imagefolder(tmp_path_factory.mktemp("img") / "root", per_class,
                                           num_classes=GENERATED_CLASSES)
        cfg.update(root=str(root), num_classes=GENERATED_CLASSES)
    return cfg


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` in eval mode with non-trivial BN statistics and affine parameters, so that wiring
    or slicing mistakes show in the outputs (a fresh model's BNs are identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return net.eval()


def archs(space: Any, n_random: int = 4, seed: int = 0) -> list[Arch]:
    """The space's maximal and minimal architectures, then ``n_random`` seeded samples."""
    rng = np.random.default_rng(seed)
    return [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(n_random)]


def train_a0_argv(model: str, tmp_path: Path, train: int, val: int) -> list[str]:
    """experiments/train_a0.py's arguments for one epoch of ``model`` at 32 px on a generated
    3-class ImageFolder of ``train``/``val`` images under ``tmp_path``, written to ``tmp_path/a0``."""
    root = write_synthetic_imagefolder(tmp_path / "data", {"train": train, "val": val}, num_classes=3, size=32)
    return ["--model", model, "--dataset", "imagefolder", "--resolution", "32", "--epochs", "1",
            "--batch-size", "16", "--out", str(tmp_path / "a0"), "--threads", "1", "--accelerator", "cpu",
            "--eval-every", "1", "--override", f"dataset.root={root}", "--override", "dataset.val_split=train",
            "--override", "dataset.holdout_split=val", "--override", "dataset.val_fraction=0.25",
            "--override", "dataset.store_size=32", "--override", "dataset.eval_crop=1.0",
            "--override", f"dataset.cache_dir={tmp_path / 'cache'}", "--override", "log.progress=false",
            "--override", "eval.recal_images=16"]


def head_convolutions(ov_model) -> dict[str, bool]:
    """Each SSD head convolution of ``ov_model`` by name: whether it runs in floating point (no
    FakeQuantize on its input, f32 constant weights)."""
    out = {}
    for op in ov_model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Convolution" and "_heads." in name:
            act, weight = op.input_value(0).get_node(), op.input_value(1).get_node()
            out[name] = (act.get_type_name() != "FakeQuantize" and weight.get_type_name() == "Constant"
                         and str(weight.get_output_element_type(0)) == "<Type: 'float32'>")
    return out
