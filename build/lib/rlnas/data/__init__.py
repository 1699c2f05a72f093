"""Datasets: classification (ImageFolder / CIFAR-10, in memory, see :mod:`rlnas.data.classification`)
and detection (:mod:`rlnas.data.detection`). ``rlnas.tasks.build_data(dataset_cfg, resolution)``
picks the loader from ``dataset_cfg.task``.
"""

from __future__ import annotations

from rlnas.data.classification import (
    ClassificationData,
    DatasetError,
    DatasetSpec,
    ImageSet,
    build_classification_data,
)

__all__ = ["ClassificationData", "DatasetError", "DatasetSpec", "ImageSet", "build_classification_data"]
