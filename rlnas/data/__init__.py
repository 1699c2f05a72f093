"""Datasets: classification (ImageFolder / CIFAR-10, in memory) and detection
(:mod:`rlnas.data.detection`). ``rlnas.tasks.build_data(dataset_cfg, resolution)`` picks the loader
from ``dataset_cfg.task``. Every configured path goes through :func:`resolve_path` (working
directory first, then the source checkout).

Classification, lowest first: :mod:`rlnas.data.augment` (batch augmentation),
:mod:`rlnas.data.spec` (the dataset description, :class:`ImageSet`, :class:`DatasetError`,
:func:`resolve_path`), :mod:`rlnas.data.loading` (decoding with bounded inputs, the cache),
:mod:`rlnas.data.classification` (the data object).
"""

from __future__ import annotations

from rlnas.data.classification import ClassificationData, build_classification_data
from rlnas.data.spec import DatasetError, DatasetSpec, ImageSet, resolve_path

__all__ = ["ClassificationData", "DatasetError", "DatasetSpec", "ImageSet", "build_classification_data",
           "resolve_path"]
