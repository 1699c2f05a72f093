"""The IRs the latency oracle times: PyTorch module -> OpenVINO IR at a static single-image shape
(INT8 via NNCF on the ``ov.Model``, never on the torch model: slower and far more memory).

The contract of what is timed lives here: the ``(1, C, H, W)`` input (:func:`check_input_shape`,
:func:`ir_measure_shape` for an existing IR), the precisions and the IR each one runs
(:data:`IR_VARIANT`), a module's identity without its weights (:func:`structural_key`), the NNCF
settings (:class:`QuantizationConfig`), what an INT8 IR keeps in floating point (:class:`FP32Scope`)
and the build itself (:func:`build_ir`). The generic OpenVINO steps (conversion, quantization,
saving, IR files) are :mod:`rlnas.ovtools`'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from rlnas.ovtools import calibration_samples, convert, quantize_int8, quiet, save_ir
from rlnas.timing import StageTimer

PRECISIONS = ("int8", "fp32", "fp16", "bf16")
#: The IR each precision runs: bf16 is an f32 IR run with a bf16 hint.
IR_VARIANT = {"int8": "int8", "fp32": "fp32", "fp16": "fp16", "bf16": "fp32"}

ModelLike = Any  # torch.nn.Module, or a zero-argument callable building one (built only on a miss)


def check_input_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``(1, C, H, W)`` from ``(C, H, W)`` or ``(1, C, H, W)`` of positive ints; else ValueError."""
    try:
        dims = tuple(int(d) for d in shape)
        ok = all(int(d) == d for d in shape) and len(dims) in (3, 4) and all(d > 0 for d in dims)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"input_shape must be (1, C, H, W) or (C, H, W) of positive ints, got {shape!r}")
    dims = (1, *dims) if len(dims) == 3 else dims
    if dims[0] != 1:
        raise ValueError(f"input_shape batch must be 1 (single-image latency), got {shape!r}")
    return dims


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    return precision


def ir_measure_shape(xml: Path, inputs: list[Any], input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The (1, C, H, W) shape to time a one-input IR at, given its inputs
    (:func:`~rlnas.ovtools.ir_inputs`): its static shape, or ``input_shape`` if it fits; else ValueError."""
    if len(inputs) != 1:
        raise ValueError(f"IR {xml} has {len(inputs)} inputs; measure_ir times one-input IRs")
    partial = inputs[0]
    if input_shape is None:
        if partial.is_dynamic:
            raise ValueError(f"IR {xml} has a dynamic input {partial}: pass input_shape")
        dims = [d.get_length() for d in partial]
        try:
            return check_input_shape(dims)
        except ValueError as err:
            raise ValueError(f"IR {xml} input {partial}: {err}") from None
    shape = check_input_shape(input_shape)
    if not partial.compatible(ov.PartialShape(list(shape))):
        raise ValueError(f"input_shape {tuple(input_shape)} does not fit the input {partial} of IR {xml}")
    return shape


def structural_key(model: Any) -> str:
    """A model identity from its module tree (repr) and parameter/buffer shapes, not weights."""
    parts = [repr(model)]
    parts += [f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters()]
    parts += [f"{n}:{tuple(b.shape)}" for n, b in model.named_buffers()]
    return "struct:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def build_model(model: ModelLike) -> Any:
    """The module itself, or what a zero-argument builder returns."""
    if isinstance(model, torch.nn.Module):
        return model
    if callable(model):
        return model()
    raise TypeError(f"model must be a torch.nn.Module or a callable returning one, got {type(model).__name__}")


@dataclass(frozen=True)
class QuantizationConfig:
    """NNCF settings.

    With real calibration data ``subset_size`` samples are used and bias correction is on (unless
    ``bias_correction`` says otherwise). With random tensors (latency only) ``random_subset_size``
    samples and no bias correction: the data only sets quantizer ranges, never the timed graph.
    ``inplace_statistics=None`` picks by resolution: NNCF's in-graph statistics make its
    calibration model compile for ~3 s (ResNet-50), which only pays off on large activations
    (measured: 32 px 4.9 s in-place vs ~2 s not; 224 px 9.3 s vs 15.3 s, 32 samples, loaded VM).
    """

    subset_size: int = 32
    random_subset_size: int = 8
    bias_correction: bool | None = None
    inplace_statistics: bool | None = None
    inplace_min_pixels: int = 96 * 96
    target_device: str = "CPU"
    quiet: bool = True

    def samples(self, calibrated: bool) -> int:
        return self.subset_size if calibrated else self.random_subset_size

    def inplace(self, shape: Sequence[int]) -> bool:
        if self.inplace_statistics is not None:
            return self.inplace_statistics
        return int(np.prod(shape[2:])) >= self.inplace_min_pixels


@dataclass(frozen=True)
class FP32Scope:
    """Operations every INT8 build leaves in floating point, given by name so that it is plain
    data (picklable; part of cache keys and IR paths) and resolved against each converted model:
    ``resolve(ov_model, names) -> nncf.IgnoredScope``, a module-level function (e.g.
    :func:`rlnas.detection.evaluate.head_scope` with ``names`` the head groups ``("loc",)``).
    ``key`` names the entry in cache keys (e.g. ``fp32_heads``). A task pipeline gives one
    (:meth:`~rlnas.oracles.accuracy.TaskPipeline.fp32_scope`), so that the latency oracle's IRs
    keep in floating point what the accuracy oracle's keep."""

    key: str
    names: tuple[str, ...]
    resolve: Callable[[Any, tuple[str, ...]], Any]

    def ignored_scope(self, ov_model: Any) -> Any:
        """The ``nncf.IgnoredScope`` of ``ov_model``'s operations that :attr:`names` name."""
        return self.resolve(ov_model, self.names)

    def identity(self) -> dict[str, list[str]]:
        """Its entry in cache keys and IR paths: ``{key: names}``."""
        return {self.key: list(self.names)}


def scope_identity(scope: FP32Scope | None, variant: str) -> dict[str, list[str]]:
    """What ``scope`` adds to the cache key and the IR path of an IR ``variant``: its identity for
    an INT8 IR, else nothing (so the keys of IRs without one stay as they were)."""
    return scope.identity() if scope is not None and variant == "int8" else {}


class IRBuildError(RuntimeError):
    """Conversion, quantization or saving failed; ``stage_seconds`` says how far it got."""

    def __init__(self, message: str, stage_seconds: dict[str, float]) -> None:
        super().__init__(message)
        self.stage_seconds = stage_seconds


def build_ir(model: ModelLike, shape: tuple[int, ...], variant: str, path: Path, calibration: Iterable | None,
             quant: QuantizationConfig, fp32_scope: FP32Scope | None = None) -> dict[str, float]:
    """Build ``model`` (if a builder), convert it to an IR at ``path`` (variant int8, fp32 or
    fp16; an INT8 one leaves ``fp32_scope`` in floating point); return stage seconds. Raises
    IRBuildError naming the failed stage."""
    stages = StageTimer()
    try:
        with quiet(quant.quiet):
            with stages("build"):
                module = build_model(model)
            with stages("convert"):
                ov_model = convert(module, shape)
            if variant == "int8":
                with stages("quantize"):
                    ov_model = quantize(ov_model, shape, calibration, quant, fp32_scope)
            else:
                stages.seconds["quantize"] = 0.0
            with stages("save"):
                save_ir(ov_model, path, compress_to_fp16=variant == "fp16")
    except Exception as err:
        raise IRBuildError(f"{stages.current} failed: {type(err).__name__}: {err}", stages.seconds) from err
    return stages.seconds


def quantize(ov_model: Any, shape: tuple[int, ...], calibration: Iterable | None, quant: QuantizationConfig,
             fp32_scope: FP32Scope | None = None) -> Any:
    """``nncf.quantize`` on the ov.Model with ``quant``'s settings: real calibration data (bias
    correction on unless ``quant`` says otherwise) or random tensors (ranges only, no bias
    correction); ``fp32_scope`` (None: nothing) is left in floating point."""
    calibrated = calibration is not None
    data = calibration_samples(calibration, shape, quant.samples(calibrated))
    bias_correction = quant.bias_correction if quant.bias_correction is not None else calibrated
    ignored = fp32_scope.ignored_scope(ov_model) if fp32_scope is not None else None
    return quantize_int8(ov_model, data, bias_correction=bias_correction, inplace_statistics=quant.inplace(shape),
                         target_device=quant.target_device, ignored_scope=ignored)
