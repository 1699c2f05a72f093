"""Datasets: classification (ImageFolder / CIFAR-10, in memory, see :mod:`rlnas.data.classification`)
and detection (:mod:`rlnas.data.detection`). ``rlnas.tasks.build_data(dataset_cfg, resolution)``
picks the loader from ``dataset_cfg.task``. Every configured path goes through :func:`resolve_path`
(working directory first, then the source checkout).
"""

from __future__ import annotations

from rlnas.data.classification import (
    ClassificationData,
    DatasetError,
    DatasetSpec,
    ImageSet,
    build_classification_data,
    resolve_path,
)

__all__ = ["ClassificationData", "DatasetError", "DatasetSpec", "ImageSet", "build_classification_data",
           "resolve_path"]
