"""Image classification data held in memory as decoded uint8 tensors (:mod:`rlnas.data.loading`),
augmented per batch (:mod:`rlnas.data.augment`): :class:`ClassificationData`, what training and
the accuracy oracle read, built from a dataset config by :func:`build_classification_data`.

Every random choice is a function of ``(seed, epoch, step)``: a resumed run sees exactly the
batches an uninterrupted run would have seen, and skipping the steps already done costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlnas.data.augment import augment_batch, seeded_generator
from rlnas.data.loading import load_split
from rlnas.data.spec import DatasetError, DatasetSpec, EvalSplits, ImageSet, resolve_path


class ClassificationData(EvalSplits[ImageSet]):
    """Train and validation splits in memory, with augmented training batches and cached
    evaluation tensors; :meth:`eval_set` names the evaluation splits.

    :param spec: the dataset description.
    :param resolution: input side length the networks see.
    :param train: decoded training images; ``val``: validation images (the search selects on
        them); ``holdout``: held-out images (reports), None when the dataset has none.
    """

    task = "classification"
    HOLDOUT_HINT = "set dataset.holdout_split (a folder, or val_split's own folder to split it in two)"

    def __init__(self, spec: DatasetSpec, resolution: int, train: ImageSet, val: ImageSet,
                 holdout: ImageSet | None = None) -> None:
        self.spec, self.resolution, self.train, self.val = spec, int(resolution), train, val
        self.holdout = holdout
        self.classes = train.classes
        self.num_classes = int(spec.num_classes or len(train.classes))
        if len(train.classes) > self.num_classes:
            raise DatasetError(f"dataset {spec.name!r}: num_classes={spec.num_classes} but "
                               f"{len(train.classes)} class folders")
        self._mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255
        self._eval_cache: dict[tuple, Any] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def identity(self) -> dict[str, Any]:
        """What identifies the numbers measured on this data (for cache keys)."""
        s = self.spec
        return {"name": s.name, "root": str(resolve_path(s.root)), "train_split": s.train_split,
                "val_split": s.val_split, "train_images": len(self.train), "val_images": len(self.val),
                "train_limit": s.train_limit, "val_limit": s.val_limit, "seed": s.seed,
                "holdout_split": s.holdout_split, "holdout_images": len(self.holdout) if self.holdout else 0,
                "holdout_fraction": s.holdout_fraction, "val_fraction": s.val_fraction, "split_seed": s.split_seed,
                "resolution": self.resolution, "store_size": int(self.train.images.shape[-1]),
                "eval_crop": s.eval_crop, "mean": list(s.mean), "std": list(s.std)}

    # -- training --------------------------------------------------------------------------

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per epoch (the last partial batch is dropped)."""
        return max(1, len(self.train) // batch_size)

    def train_batches(self, batch_size: int, epoch: int, seed: int = 0,
                      start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Augmented, normalized float batches of epoch ``epoch``, from step ``start_step`` on."""
        n = len(self.train)
        batch_size = min(batch_size, n)
        order = torch.randperm(n, generator=seeded_generator(seed, epoch))
        for step in range(start_step, self.steps_per_epoch(batch_size)):
            idx = order[step * batch_size:(step + 1) * batch_size]
            gen = seeded_generator(seed, epoch, step)
            yield self.augment(self.train.images[idx], gen), self.train.labels[idx]

    def augment(self, images: Tensor, gen: torch.Generator) -> Tensor:
        """Training augmentation of a uint8 batch (:func:`~rlnas.data.augment.augment_batch`),
        returning a normalized float batch."""
        return self.normalize(augment_batch(images, self.spec.augment, self.resolution, gen, self.spec.pad,
                                            self.spec.rrc_scale))

    # -- evaluation ------------------------------------------------------------------------

    def normalize(self, x: Tensor) -> Tensor:
        """uint8-range images (any dtype) to normalized float32."""
        return (x.float() - self._mean) / self._std

    def eval_transform(self, images: Tensor) -> Tensor:
        """Centre crop ``eval_crop`` and resize to the resolution; uint8 in, uint8 out."""
        s = images.shape[-1]
        keep = max(1, round(s * self.spec.eval_crop))
        off = (s - keep) // 2
        x = images[..., off:off + keep, off:off + keep]
        if keep == self.resolution:
            return x.contiguous()
        out = F.interpolate(x.float(), size=(self.resolution,) * 2, mode="bilinear",
                            antialias=keep > self.resolution, align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8)

    def eval_images(self, split: str = "val", limit: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Images of ``split`` (``val``/``holdout``), eval-transformed uint8, with labels; cached.
        ``limit`` takes a seeded random subset (splits are ordered by class, so never the first)."""
        subset = self.eval_set(split)
        n = len(subset) if limit is None else min(int(limit), len(subset))
        key = (split, n, seed if n < len(subset) else 0)
        if key not in self._eval_cache:
            idx = self._subset(len(subset), n, seed)
            self._eval_cache[key] = (self._transform_chunks(subset.images[idx]), subset.labels[idx])
        return self._eval_cache[key]

    def val_images(self, limit: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Validation images (see :meth:`eval_images`)."""
        return self.eval_images("val", limit, seed)

    def recal_batches(self, count: int, seed: int, batch_size: int) -> Iterator[Tensor]:
        """``count`` training images chosen by ``seed``, augmented as in training, as normalized
        float batches: BN recalibration sees the statistics the network was trained on (measured
        on the shared ResNet-50 a0, 10k test images: 80.9 % as deployed, 79.3-79.5 % after
        recalibration on 1k-10k eval-preprocessed images, 81.2-81.3 % on 2k-5k augmented ones)."""
        count = min(int(count), len(self.train))
        index = self._subset(len(self.train), count, seed)
        for i in range(0, count, batch_size):
            gen = seeded_generator(seed, 104729, i)
            yield self.augment(self.train.images[index[i:i + batch_size]], gen)

    def train_subset(self, count: int, seed: int) -> Tensor:
        """``count`` training images chosen by ``seed`` in random order, eval-transformed uint8,
        cached (BN recalibration and INT8 calibration sets: deterministic, disjoint only by chance)."""
        count = min(int(count), len(self.train))
        key = ("train", count, seed)
        if key not in self._eval_cache:
            self._eval_cache[key] = self._transform_chunks(self.train.images[self._subset(len(self.train), count, seed)])
        return self._eval_cache[key]

    @staticmethod
    def _subset(total: int, count: int, seed: int) -> Tensor:
        if count >= total:
            return torch.arange(total)
        # random order, not sorted: ImageFolder splits are ordered by class, and BN recalibration
        # batches must mix classes
        return torch.randperm(total, generator=seeded_generator(seed, 7919))[:count]

    def batches(self, images: Tensor, batch_size: int) -> Iterator[Tensor]:
        """Normalized float batches of uint8 ``images`` (the last one may be smaller)."""
        for i in range(0, len(images), batch_size):
            yield self.normalize(images[i:i + batch_size])

    def _transform_chunks(self, images: Tensor, chunk: int = 1024) -> Tensor:
        return torch.cat([self.eval_transform(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def build_classification_data(cfg: Mapping[str, Any] | DatasetSpec, resolution: int) -> ClassificationData:
    """Load train and validation splits of a dataset config at ``resolution``.

    :raises DatasetError: for a missing root or split, naming it and how to get it.
    """
    spec = cfg if isinstance(cfg, DatasetSpec) else DatasetSpec.from_config(cfg)
    store = spec.resolved_store_size(resolution)
    train = load_split(spec, spec.train_split, store, spec.train_limit)
    if spec.val_split == spec.train_split:
        train, val = train.split(spec.val_fraction, spec.split_seed)
    else:
        val = load_split(spec, spec.val_split, store, spec.val_limit, classes=train.classes)
    holdout = None
    if spec.holdout_split == spec.val_split:
        val, holdout = val.split(spec.holdout_fraction, spec.split_seed)
    elif spec.holdout_split is not None:
        holdout = load_split(spec, spec.holdout_split, store, spec.val_limit, classes=train.classes)
    return ClassificationData(spec, resolution, train, val, holdout)
