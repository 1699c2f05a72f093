"""What every dataset shares: the error a user sees for a dataset that cannot be loaded, the
one rule of every configured data path (:func:`resolve_path`), the evaluation splits by name
(:class:`EvalSplits`), and for classification, what a ``conf/dataset/*.yaml`` says
(:class:`DatasetSpec`) and one split of decoded images (:class:`ImageSet`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

import rlnas
from rlnas.data.augment import AUGMENTATIONS
from rlnas.errors import ConfigError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(UserError, RuntimeError):
    """A dataset that cannot be loaded (missing root or split, bad layout); the message says why."""


def resolve_path(path: str | os.PathLike) -> Path:
    """Where a configured data or model path points, absolute (the one rule of every data path).

    ``~`` is expanded; an absolute path is taken as it is. A relative path is looked up under the
    working directory first (what a user typing it means), then under the source checkout
    (:data:`rlnas.REPO_DIR`: the shipped defaults such as ``data/cifar10`` work from any directory).
    When it exists in neither, the working-directory path is returned, so an error names the
    place the user would look.
    """
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    in_repo = rlnas.REPO_DIR / p
    return in_repo.resolve() if in_repo.exists() else p.resolve()


@dataclass(frozen=True)
class DatasetSpec:
    """What a ``conf/dataset/*.yaml`` says about a classification dataset.

    :param name: dataset identity (cache keys, logs).
    :param root: ImageFolder root holding ``train_split``/``val_split`` folders; relative paths are
        tried against the working directory, then the repository.
    :param num_classes: None: the number of class folders.
    :param store_size: side of the square uint8 images kept in memory; None: the resolution
        divided by ``eval_crop`` (rounded), e.g. 256 for 224 px.
    :param augment: ``crop_pad`` (CIFAR: pad, random crop, flip), ``rrc`` (RandomResizedCrop with
        ``rrc_scale``, flip) or ``none``.
    :param eval_crop: central fraction kept for evaluation (0.875: ImageNet's resize 256/crop 224).
    :param download_fallback: CIFAR-10 only: download with torchvision when ``root`` is absent.
    :param train_limit: use a seeded subset of this many training images (None: all).
    :param holdout_split: folder of the held-out images (what reports call accuracy: the search
        never selects on them); None: no held-out images. Equal to ``val_split``: that folder is
        split in two, ``holdout_fraction`` of it (seeded by ``split_seed``) held out, the rest
        validation (CIFAR-10: a0 was trained on the whole train split, so validation and
        held-out images both come from the test split).
    :param val_fraction: with ``val_split == train_split``: the share of the training folder
        carved out (seeded) as validation images and no longer trained on.
    :param cache_dir: where decoded arrays are cached; None: ``<root>/../.cache``; "" disables.
    """

    name: str
    root: str
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    store_size: int | None = None
    augment: str = "crop_pad"
    pad: int = 4
    rrc_scale: tuple[float, float] = (0.25, 1.0)
    eval_crop: float = 1.0
    download_fallback: bool = False
    train_limit: int | None = None
    val_limit: int | None = None
    holdout_split: str | None = None
    holdout_fraction: float = 0.5
    val_fraction: float = 0.1
    split_seed: int = 0
    cache_dir: str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for key in ("holdout_fraction", "val_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"dataset.{key}={getattr(self, key)} must be in (0, 1)")
        if self.holdout_split is not None and self.holdout_split == self.train_split:
            raise ConfigError(f"dataset.holdout_split={self.holdout_split!r} is the training split: held-out "
                             "images must be images nothing trained or selected on")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"dataset.augment={self.augment!r}; choose one of {AUGMENTATIONS}")
        if not 0 < self.eval_crop <= 1:
            raise ConfigError(f"dataset.eval_crop={self.eval_crop} must be in (0, 1]")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "rrc_scale", tuple(float(v) for v in self.rrc_scale))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DatasetSpec:
        """Build from a dataset config (a dict or DictConfig); unknown keys go to ``extra``."""
        data = dict(_to_plain(cfg))
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        if known.get("root") in (None, "", "???"):
            raise DatasetError(f"dataset {data.get('name', '?')!r} has no root: set dataset.root=<ImageFolder root>")
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def resolved_store_size(self, resolution: int) -> int:
        return int(self.store_size or round(resolution / self.eval_crop))


@dataclass
class ImageSet:
    """Decoded images of one split: ``images`` uint8 ``[N, 3, S, S]``, ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    def take(self, index: Tensor, part: str) -> ImageSet:
        """The images at ``index`` (their order kept), ``part`` naming them in ``source``."""
        return ImageSet(self.images[index], self.labels[index], self.classes, f"{self.source}[{part}]")

    def split(self, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
        """Two disjoint parts, the second holding ``round(fraction * len)`` images chosen by ``seed``."""
        n = len(self)
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
        cut = n - max(1, min(n - 1, round(fraction * n)))
        first, second = perm[:cut].sort().values, perm[cut:].sort().values
        return self.take(first, f"split {seed}: {cut}/{n}"), self.take(second, f"split {seed}: {n - cut}/{n}")


EvalImages = TypeVar("EvalImages")


class EvalSplits(Generic[EvalImages]):
    """A dataset's evaluation images by name: ``val`` (what a search selects on) and ``holdout``
    (what reports state; None where the dataset has none). A subclass holds both attributes and a
    ``name``, and says in ``HOLDOUT_HINT`` how its config gets held-out images."""

    #: evaluation image sets by name
    SPLITS = ("val", "holdout")
    #: how to configure held-out images, the end of the error when a dataset has none
    HOLDOUT_HINT = "set dataset.holdout_split"
    name: str
    val: EvalImages
    holdout: EvalImages | None

    def eval_set(self, split: str = "val") -> EvalImages:
        """The evaluation images ``split`` (``val`` or ``holdout``).

        :raises DatasetError: an unknown name, or held-out images the dataset does not have.
        """
        if split not in self.SPLITS:
            raise DatasetError(f"evaluation split {split!r}; choose one of {self.SPLITS}")
        images = getattr(self, split)
        if images is None:
            raise DatasetError(f"dataset {self.name!r} has no held-out images: {self.HOLDOUT_HINT}")
        return images


def _to_plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return cfg
