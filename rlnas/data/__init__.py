"""Datasets: classification (ImageFolder / CIFAR-10, in memory, see :mod:`rlnas.data.classification`)
and detection (:mod:`rlnas.data.detection`).

``build_data(dataset_cfg, resolution)`` picks the loader from ``dataset_cfg.task``
(``classification`` when absent).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from rlnas.data.classification import (
    ClassificationData,
    DatasetError,
    DatasetSpec,
    ImageSet,
    build_classification_data,
)

__all__ = ["ClassificationData", "DatasetError", "DatasetSpec", "ImageSet", "build_classification_data",
           "build_data"]


def build_data(cfg: Mapping[str, Any], resolution: int) -> Any:
    """The dataset object of a ``conf/dataset/*.yaml`` config at ``resolution``.

    Classification returns :class:`ClassificationData`; detection is delegated to
    ``rlnas.data.detection.build_detection_data`` (owned by the detection code).
    """
    task = cfg.get("task", "classification") or "classification"
    if task == "classification":
        return build_classification_data(cfg, resolution)
    if task == "detection":
        module = importlib.import_module("rlnas.data.detection")
        builder = getattr(module, "build_detection_data", None)
        if builder is None:
            raise NotImplementedError("rlnas.data.detection has no build_detection_data(cfg, resolution)")
        return builder(cfg, resolution)
    raise ValueError(f"dataset task {task!r} is not 'classification' or 'detection'")
