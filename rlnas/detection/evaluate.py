"""Detection accuracy of one architecture: FP32 mAP in PyTorch and INT8 mAP in OpenVINO.

Only the network (raw ``loc``/``conf`` heads) goes into the OpenVINO model; box decoding and NMS
run afterwards in PyTorch (:func:`rlnas.detection.boxes.postprocess`), so the quantized graph has
no NMS or data-dependent shapes. INT8 path, with the accuracy oracle's own helpers so detection
and classification quantize alike: ``extract(arch)`` -> ``ov.convert_model`` (traced at a static
``(1, 3, S, S)`` shape) -> ``nncf.quantize`` on the ``ov.Model`` with real calibration images ->
``compile_model`` for a static batch of 1 with an explicit ``INFERENCE_PRECISION_HINT`` -> decode +
NMS -> COCO mAP (:class:`~rlnas.detection.metrics.DetectionMAP`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import torch
from torch import nn

from rlnas.arch import Arch
from rlnas.data.detection import DetectionData, Target
from rlnas.detection.boxes import PostProcess, postprocess
from rlnas.detection.metrics import DetectionMAP
from rlnas.ovtools import compile_cpu, convert_to_openvino, quantize_int8, quiet
from rlnas.spaces.base import Supernet
from rlnas.stats import DetectionMatches, match_detections
from rlnas.supernet.bn import recalibrate_bn

Batch = tuple[torch.Tensor, list[Target]]


def as_module(model: nn.Module, arch: Arch | None) -> nn.Module:
    """The network to run: the supernet set to ``arch``, or ``model`` itself if it is plain."""
    if isinstance(model, Supernet):
        if arch is None:
            raise ValueError("a supernet needs the architecture to evaluate")
        model.set_active(arch)
    return model.eval()


def priors_of(model: nn.Module) -> torch.Tensor:
    """The default boxes a detector (supernet or extracted module) was built with."""
    priors = getattr(model, "priors", None)
    if not isinstance(priors, torch.Tensor):
        raise AttributeError(f"{type(model).__name__} has no 'priors' buffer; pass priors= explicitly")
    return priors


def to_pixels(item: dict[str, torch.Tensor], size: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of ``item`` with normalised ``boxes`` scaled to the original ``(h, w)`` image."""
    h, w = float(size[0]), float(size[1])
    return {**item, "boxes": item["boxes"] * torch.tensor([w, h, w, h])}


def score_batches(outputs: Iterable[tuple[torch.Tensor, torch.Tensor, list[Target]]], priors: torch.Tensor,
                  post: PostProcess | None = None) -> dict[str, float]:
    """COCO mAP of ``(loc, conf, targets)`` batches, boxes compared in original-image pixels."""
    metric = DetectionMAP()
    for loc, conf, targets in outputs:
        preds = postprocess(loc, conf, priors.cpu(), post or PostProcess())
        metric.update([to_pixels(p, t["size"]) for p, t in zip(preds, targets, strict=True)],
                      [to_pixels(t, t["size"]) for t in targets])
    return metric.compute()


def score_and_match(outputs: Iterable[tuple[torch.Tensor, torch.Tensor, list[Target]]], priors: torch.Tensor,
                    post: PostProcess | None = None) -> tuple[dict[str, float], DetectionMatches | None]:
    """:func:`score_batches` and the detections matched to the ground truth at IoU 0.5 (the same
    boxes, :func:`rlnas.stats.match_detections`): what mAP@.5's paired bootstrap needs per image.
    None for the matches where some ground truth is a crowd region (COCO's ignore regions, which
    that matching does not model)."""
    metric = DetectionMAP()
    preds: list[dict[str, torch.Tensor]] = []
    truths: list[dict[str, torch.Tensor]] = []
    for loc, conf, targets in outputs:
        batch = [to_pixels(p, t["size"]) for p, t in zip(postprocess(loc, conf, priors.cpu(), post or PostProcess()),
                                                          targets, strict=True)]
        gts = [to_pixels(t, t["size"]) for t in targets]
        metric.update(batch, gts)
        preds += batch
        truths += gts
    crowd = any(bool(torch.as_tensor(t["iscrowd"]).any()) for t in truths if "iscrowd" in t)
    return metric.compute(), None if crowd else match_detections(preds, truths)


@torch.no_grad()
def _torch_outputs(module: nn.Module, batches: Iterable[Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Target]]]:
    device = next(module.parameters()).device
    for images, targets in batches:
        loc, conf = module(images.to(device))
        yield loc.cpu(), conf.cpu(), targets


def evaluate_detection(model: nn.Module, arch: Arch | None, data: DetectionData, *, split: str = "val",
                       max_images: int | None = None, batch_size: int = 16,
                       post: PostProcess | None = None, priors: torch.Tensor | None = None) -> dict[str, float]:
    """FP32 COCO mAP of ``model`` (a detection supernet set to ``arch``, or an extracted module).

    BN statistics are used as they are: recalibrate them first for a supernet subnet.
    :returns: ``{"map": mAP@[.5:.95], "map50": mAP@.5, "map75": mAP@.75}``.
    """
    module = as_module(model, arch)
    priors = priors_of(model) if priors is None else priors
    loader = data.loader(split, batch_size, max_images=max_images)
    return score_batches(_torch_outputs(module, loader), priors, post)


def evaluate_detection_matched(model: nn.Module, data: DetectionData, *, split: str = "val",
                               max_images: int | None = None, batch_size: int = 16
                               ) -> tuple[dict[str, float], DetectionMatches | None]:
    """:func:`evaluate_detection` of a plain detector and its matches (:func:`score_and_match`)."""
    module = as_module(model, None)
    return score_and_match(_torch_outputs(module, data.loader(split, batch_size, max_images=max_images)),
                           priors_of(model))


def recalibrate(model: nn.Module, data: DetectionData, num_images: int, batch_size: int = 16) -> nn.Module:
    """Re-estimate the BN statistics of an extracted detector on the first ``num_images``
    un-augmented training images (0: keep them); returns it in eval mode."""
    if num_images > 0:
        batches = (images for images, _ in data.loader("calib", batch_size, max_images=num_images))
        recalibrate_bn(model, batches)
    return model.eval()


# ----------------------------------------------------------------------------- OpenVINO INT8


def convert_detector(module: nn.Module, image_size: int) -> Any:
    """``ov.Model`` of a plain detector, converted as the accuracy and latency oracles convert
    classifiers, with its two outputs named ``loc`` and ``conf``."""
    with quiet():
        ov_model = convert_to_openvino(module, image_size)
    for out, name in zip(ov_model.outputs, ("loc", "conf"), strict=True):
        out.get_tensor().set_names({name})
    return ov_model


#: the SSD's head groups (module lists ``loc_heads`` and ``conf_heads``)
HEADS = ("loc", "conf")


def head_scope(ov_model: Any, heads: Iterable[str] = HEADS) -> nncf.IgnoredScope:
    """An ``nncf.IgnoredScope`` of the head convolutions of a detector converted by
    :func:`convert_detector` (friendly names ``__module.loc_heads.<i>/aten::_convolution/...``),
    for the groups in ``heads`` (of :data:`HEADS`): quantization leaves them in floating point
    (see :class:`~rlnas.detection.pipeline.DetectionPipeline` for why and what it costs)."""
    heads = tuple(heads)
    unknown = sorted(set(heads) - set(HEADS))
    if unknown or not heads:
        raise ValueError(f"heads {heads!r}: give some of {HEADS}")
    pattern = re.compile(rf"^__module\.({'|'.join(heads)})_heads\.\d+/")
    names = sorted(op.get_friendly_name() for op in ov_model.get_ops()
                   if op.get_type_name() == "Convolution" and pattern.match(op.get_friendly_name()))
    if not names:
        raise ValueError(f"no {'/'.join(heads)} head convolution in this model (convert it by convert_detector)")
    return nncf.IgnoredScope(names=names)


def calibration_arrays(data: DetectionData, num_images: int) -> list[np.ndarray]:
    """The first ``num_images`` un-augmented training images as batch-1 arrays: the INT8
    calibration set of every detector quantization (oracle and export alike)."""
    n = min(num_images, len(data.calib))
    return [images.numpy() for images, _ in data.loader("calib", 1, max_images=n)]


def compile_detector(ov_model: Any, image_size: int, inference_precision: str = "f32",
                     threads: int | None = None) -> Any:
    """Compile for CPU with a static ``(1, 3, S, S)`` input and an explicit
    ``INFERENCE_PRECISION_HINT`` (the CPU plugin otherwise picks bf16 on CPUs that have it)."""
    return compile_cpu(ov_model, 1, image_size, inference_precision, threads)


def _openvino_outputs(compiled: Any, batches: Iterable[Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Target]]]:
    request = compiled.create_infer_request()
    loc_port, conf_port = compiled.output("loc"), compiled.output("conf")
    for images, targets in batches:
        result = request.infer({0: images.numpy()})
        yield (torch.from_numpy(np.array(result[loc_port])), torch.from_numpy(np.array(result[conf_port])),
               targets)


def export_int8(model: nn.Module, arch: Arch | None, data: DetectionData, *, calib_images: int = 300,
                ir_path: str | Path | None = None) -> Any:
    """Extract ``arch`` (if ``model`` is a supernet), convert and quantize it: the INT8 ``ov.Model``.

    Calibration uses the first ``calib_images`` un-augmented training images. With ``ir_path``
    the IR is also saved there (``.xml`` + ``.bin``).
    """
    import openvino as ov

    plain = model.extract(arch) if isinstance(model, Supernet) else model
    ov_model = convert_detector(plain, data.image_size)
    with quiet():
        quantized = quantize_int8(ov_model, calibration_arrays(data, calib_images))
    if ir_path is not None:
        ov.save_model(quantized, str(ir_path))
    return quantized


def evaluate_detection_int8(model: nn.Module, arch: Arch | None, data: DetectionData, *, split: str = "val",
                            max_images: int | None = None, calib_images: int = 300,
                            inference_precision: str = "f32", threads: int | None = None,
                            post: PostProcess | None = None, ir_path: str | Path | None = None,
                            priors: torch.Tensor | None = None) -> dict[str, float]:
    """INT8 COCO mAP of ``arch`` in OpenVINO (see the module docstring for the pipeline).

    ``model`` is a detection supernet (the subnet is extracted with its current BN statistics)
    or an already extracted module (``arch`` may then be None).
    :returns: ``{"map", "map50", "map75"}`` as :func:`evaluate_detection`.
    """
    priors = priors_of(model) if priors is None else priors
    quantized = export_int8(model, arch, data, calib_images=calib_images, ir_path=ir_path)
    compiled = compile_detector(quantized, data.image_size, inference_precision, threads)
    return evaluate_compiled(compiled, data, priors, split=split, max_images=max_images, post=post)


def validation_items(data: DetectionData, split: str, count: int) -> list[tuple[np.ndarray, list[Target]]]:
    """The first ``count`` images of ``split`` as batch-1 ``(input array, [target])`` items: the
    validation set NNCF's accuracy control scores with :func:`compiled_score`."""
    return [(images.numpy(), targets) for images, targets in data.loader(split, 1, max_images=count)]


def compiled_score(compiled: Any, items: Iterable[tuple[np.ndarray, list[Target]]], priors: torch.Tensor,
                   key: str = "map50", post: PostProcess | None = None) -> float:
    """Score ``key`` (of :func:`evaluate_detection`'s) of a compiled detector with outputs ``loc``
    and ``conf`` (any static or dynamic batch, e.g. as NNCF compiles it) over ``(inputs, targets)``
    items: NNCF's validation function for accuracy-controlled quantization."""
    loc_port, conf_port = compiled.output("loc"), compiled.output("conf")

    def outputs() -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Target]]]:
        for x, targets in items:
            result = compiled(x)
            yield (torch.from_numpy(np.array(result[loc_port])), torch.from_numpy(np.array(result[conf_port])),
                   targets)

    return score_batches(outputs(), priors, post)[key]


def evaluate_compiled(compiled: Any, data: DetectionData, priors: torch.Tensor, *, split: str = "val",
                      max_images: int | None = None, post: PostProcess | None = None) -> dict[str, float]:
    """COCO mAP of a compiled OpenVINO detector (static batch 1, outputs ``loc`` and ``conf``) on
    the first ``max_images`` images of ``split``; decoding and NMS run in PyTorch.

    :returns: ``{"map", "map50", "map75"}`` as :func:`evaluate_detection`.
    """
    loader = data.loader(split, 1, max_images=max_images)
    return score_batches(_openvino_outputs(compiled, loader), priors, post)


def evaluate_compiled_matched(compiled: Any, data: DetectionData, priors: torch.Tensor, *, split: str = "val",
                              max_images: int | None = None) -> tuple[dict[str, float], DetectionMatches | None]:
    """:func:`evaluate_compiled` and the matches (:func:`score_and_match`)."""
    loader = data.loader(split, 1, max_images=max_images)
    return score_and_match(_openvino_outputs(compiled, loader), priors)
