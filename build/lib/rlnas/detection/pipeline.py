"""The detection task's accuracy pipeline for :class:`~rlnas.oracles.accuracy.AccuracyOracle`."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from rlnas.detection import evaluate
from rlnas.oracles.accuracy import AccuracyOracle, TaskPipeline


class DetectionPipeline(TaskPipeline):
    """COCO mAP with :mod:`rlnas.detection.evaluate` (mAP@.5 is the accuracy): only the network
    (raw ``loc``/``conf``) is converted and quantized, at batch 1 on the first images of each
    split; decoding and NMS run in PyTorch."""

    metrics = {"map50": "mAP@.5", "map": "mAP@[.5:.95]", "map75": "mAP@.75"}
    output_names = ("loc", "conf")

    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        return evaluate.recalibrate(model, oracle.data, oracle.recal_images)

    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        return evaluate.evaluate_detection(model, None, oracle.data, max_images=count)

    def calibration(self, oracle: AccuracyOracle, count: int) -> list[np.ndarray]:
        return evaluate.calibration_arrays(oracle.data, count)

    def convert(self, oracle: AccuracyOracle, model: nn.Module) -> Any:
        return evaluate.convert_detector(model, oracle.data.image_size)

    def compile(self, oracle: AccuracyOracle, ov_model: Any) -> Any:
        return evaluate.compile_detector(ov_model, oracle.data.image_size, oracle.inference_precision, oracle.threads)

    def int8_scores(self, oracle: AccuracyOracle, compiled: Any, count: int) -> dict[str, float]:
        return evaluate.evaluate_compiled(compiled, oracle.data, evaluate.priors_of(oracle.supernet),
                                          max_images=count)
