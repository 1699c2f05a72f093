"""The detection task's accuracy pipeline for :class:`~rlnas.oracles.accuracy.AccuracyOracle`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from rlnas.detection import evaluate
from rlnas.oracles.accuracy import AccuracyOracle, TaskPipeline
from rlnas.ovtools import quantize_int8_with_accuracy_control


class DetectionPipeline(TaskPipeline):
    """COCO mAP with :mod:`rlnas.detection.evaluate` (mAP@.5 is the accuracy): only the network
    (raw ``loc``/``conf``) is converted and quantized, at batch 1 on the first images of the
    oracle's ``split``; decoding and NMS run in PyTorch. Accuracy-controlled quantization judges
    mAP@.5 on the same images (the search's oracle: validation images only)."""

    metrics = {"map50": "mAP@.5", "map": "mAP@[.5:.95]", "map75": "mAP@.75"}
    output_names = ("loc", "conf")

    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        return evaluate.recalibrate(model, oracle.data, oracle.recal_images)

    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        return evaluate.evaluate_detection(model, None, oracle.data, split=oracle.split, max_images=count)

    def calibration(self, oracle: AccuracyOracle, count: int) -> list[np.ndarray]:
        return evaluate.calibration_arrays(oracle.data, count)

    def convert(self, oracle: AccuracyOracle, model: nn.Module) -> Any:
        return evaluate.convert_detector(model, oracle.data.image_size)

    def compile(self, oracle: AccuracyOracle, ov_model: Any) -> Any:
        return evaluate.compile_detector(ov_model, oracle.data.image_size, oracle.inference_precision, oracle.threads)

    def int8_scores(self, oracle: AccuracyOracle, compiled: Any, count: int) -> dict[str, float]:
        return evaluate.evaluate_compiled(compiled, oracle.data, evaluate.priors_of(oracle.supernet),
                                          split=oracle.split, max_images=count)

    def quantize_with_accuracy_control(self, oracle: AccuracyOracle, ov_model: Any, calibration: list[np.ndarray],
                                       max_drop: float) -> Any:
        validation = evaluate.validation_items(oracle.data, oracle.split, oracle.eval_count)
        priors = evaluate.priors_of(oracle.supernet)

        def metric(compiled: Any, items: Iterable[tuple[np.ndarray, Any]]) -> float:
            return self.validation_metric(compiled, items, priors)

        return quantize_int8_with_accuracy_control(ov_model, calibration, validation, metric, max_drop)

    def validation_metric(self, compiled: Any, items: Iterable[tuple[np.ndarray, Any]], priors: torch.Tensor) -> float:
        """The accuracy (mAP@.5) of a model NNCF compiled over ``(input, [target])`` validation items."""
        return evaluate.compiled_score(compiled, items, priors, self.accuracy_key)
