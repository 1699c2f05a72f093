"""The detection task's accuracy pipeline for :class:`~rlnas.oracles.accuracy.AccuracyOracle`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlnas.detection import evaluate
from rlnas.errors import ConfigError
from rlnas.oracles.accuracy import AccuracyOracle, TaskPipeline
from rlnas.oracles.irbuild import FP32Scope
from rlnas.ovtools import quantize_int8_with_accuracy_control
from rlnas.rules import check_fields, each_of, ruled
from rlnas.stats import (
    BootstrapBoundTest,
    DetectionMatches,
    map_bound_test,
    map_interval,
    pack_matches,
    unpack_matches,
)


@dataclass(frozen=True)
class DetectionOptions:
    """``cfg.detection`` of ``rlnas-search`` (its node: :mod:`rlnas.schema`): how a detection
    run quantizes its networks, the same way wherever one is quantized (the accuracy oracle, the
    latency oracle's timed IRs, the finalists, accuracy control, the export).

    :param fp32_heads: head groups (of :data:`~rlnas.detection.evaluate.HEADS`: ``loc``, ``conf``)
        left in floating point (see :class:`DetectionPipeline` for why and what it costs); empty
        (default): NNCF quantizes them like the rest, and every cache key stays as it was.
    """

    fp32_heads: tuple[str, ...] = ruled((), each_of(*evaluate.HEADS))

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "fp32_heads", tuple(self.fp32_heads))


class DetectionPipeline(TaskPipeline):
    """COCO mAP with :mod:`rlnas.detection.evaluate` (mAP@.5 is the accuracy): only the network
    (raw ``loc``/``conf``) is converted and quantized, at batch 1 on the first images of the
    oracle's ``split``; decoding and NMS run in PyTorch. Accuracy-controlled quantization judges
    mAP@.5 on the same images (the search's oracle: validation images only), decoded as the INT8
    scoring decodes them.

    :param fp32_heads: head groups (``loc``, ``conf``; :data:`~rlnas.detection.evaluate.HEADS`)
        every quantization of this pipeline (search scoring, finalists, accuracy control, export) leaves
        in floating point by an ``nncf.IgnoredScope`` over their convolutions; empty (default):
        NNCF quantizes them like the rest. Why one would: the heads are the detector's raw
        outputs, read by the post-processing with nothing after them to absorb a quantization
        error. A ``loc`` offset is scaled by its default box and, for width and height,
        exponentiated (``exp(0.2 t)``), so one quantization step moves box edges by pixels and
        can push an IoU across 0.5; a ``conf`` logit goes through the softmax and re-ranks
        detections across all images, which is what AP integrates. Its cost: the heads'
        convolutions then run in FP32 and they are not small in SSD300-MobileNetV1 (3x3 heads on
        six maps): ~18 % of the MACs with 10 classes, ~55 % with COCO's 80 (``conf`` grows with
        the classes, ``loc`` does not: keeping only ``loc`` costs ~5 % with 10 classes). The
        activations the heads share with the backbone stay quantized for the backbone. Accuracy
        control never reverts what is ignored from the start. A run sets them by
        ``detection.fp32_heads`` (:class:`DetectionOptions`); its setup hands :meth:`fp32_scope` to
        the latency oracle too, so the IRs the search times leave the same heads in FP32 (and
        their cache keys say so); the finalists' confirmation times the IRs actually exported.
    :raises ConfigError: a head group not among :data:`~rlnas.detection.evaluate.HEADS`.

    Per image (the finalists' bound test): the detections matched to the ground truth at IoU 0.5
    (:class:`~rlnas.stats.DetectionMatches`), packed by :func:`~rlnas.stats.pack_matches` into the
    result's ``details`` (``fp32_matches``, ``int8_matches``; the finalists' rows keep them under
    ``matches``); the bound is :func:`~rlnas.stats.map_bound_test` (a paired bootstrap of mAP@.5
    over images) and an mAP's interval the bootstrap percentile one (:func:`~rlnas.stats.map_interval`).
    A dataset with crowd ground truth records no matches (scores only).
    """

    metrics = {"map50": "mAP@.5", "map": "mAP@[.5:.95]", "map75": "mAP@.75"}
    output_names = ("loc", "conf")
    per_image = "matches"
    row_field = "matches"
    bound_method = ("a paired bootstrap over images of mAP@.5 INT8(finalist) - tau x mAP@.5 FP32(a0) (the same "
                    "1000 resamples for both), percentile lower bound; held-out interval: bootstrap percentile")
    fp32_heads: tuple[str, ...] = ()

    def __init__(self, fp32_heads: Iterable[str] = ()) -> None:
        given = set(fp32_heads)
        heads = tuple(h for h in evaluate.HEADS if h in given)
        unknown = sorted(given - set(evaluate.HEADS))
        if unknown:
            raise ConfigError(f"fp32_heads: unknown head groups {unknown}; give some of {', '.join(evaluate.HEADS)}")
        self.fp32_heads = heads

    def fp32_scope(self) -> FP32Scope | None:
        """The head convolutions of :attr:`fp32_heads`, resolved per model by
        :func:`~rlnas.detection.evaluate.head_scope` (None: no head kept in FP32)."""
        return FP32Scope("fp32_heads", self.fp32_heads, evaluate.head_scope) if self.fp32_heads else None

    def key(self) -> dict[str, Any]:
        # records made before they held the matches are not this pipeline's
        scope = self.fp32_scope()
        return {"per_image": "matches", **(scope.identity() if scope is not None else {})}

    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        return evaluate.recalibrate(model, oracle.data, oracle.recal_images)

    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        return evaluate.evaluate_detection(model, None, oracle.data, split=oracle.split, max_images=count)

    def fp32_eval(self, oracle: AccuracyOracle, model: nn.Module, count: int
                  ) -> tuple[dict[str, float], DetectionMatches | None]:
        return evaluate.evaluate_detection_matched(model, oracle.data, split=oracle.split, max_images=count)

    def int8_eval(self, oracle: AccuracyOracle, compiled: Any, count: int
                  ) -> tuple[dict[str, float], DetectionMatches | None]:
        return evaluate.evaluate_compiled_matched(compiled, oracle.data, evaluate.priors_of(oracle.supernet),
                                                  split=oracle.split, max_images=count)

    def pack_per_image(self, record: DetectionMatches) -> dict[str, Any]:
        return pack_matches(record)

    def unpack_per_image(self, packed: dict[str, Any], images: int) -> DetectionMatches:
        matches = unpack_matches(packed)
        if matches.images != images:
            raise ValueError(f"matches of {matches.images} images where {images} were scored")
        return matches

    def bound_test(self, int8: DetectionMatches, a0_fp32: DetectionMatches, tau: float, confidence: float = 0.9,
                   comparisons: int = 1) -> BootstrapBoundTest:
        return map_bound_test(int8, a0_fp32, tau, confidence, comparisons)

    def interval(self, record: DetectionMatches, confidence: float = 0.95) -> tuple[float, float]:
        return map_interval(record, confidence)

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

        return quantize_int8_with_accuracy_control(ov_model, calibration, validation, metric, max_drop,
                                                   self.ignored_scope(ov_model))

    def validation_metric(self, compiled: Any, items: Iterable[tuple[np.ndarray, Any]], priors: torch.Tensor) -> float:
        """The accuracy (mAP@.5) of a model NNCF compiled over ``(input, [target])`` validation items."""
        return evaluate.compiled_score(compiled, items, priors, self.accuracy_key)
