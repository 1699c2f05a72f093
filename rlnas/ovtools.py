"""OpenVINO helpers shared by both oracles, the finalists, the export and detection: conversion
from PyTorch, NNCF INT8 quantization and its calibration samples, CPU compilation with an explicit
precision hint, what ran, versions, IR files (atomic saving, size, content identity, inputs).

Conversion goes through OpenVINO's TorchScript decoder with one trace and no trace check (see
:func:`convert`): ``ov.convert_model(module, example_input=...)`` traces with the check on, which
runs the model twice more per candidate.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import hashlib
import io
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import openvino as ov
import openvino.passes as ov_passes
import torch
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
from torch import Tensor, nn


def library_versions() -> dict[str, str]:
    """Versions that change numbers, read from package metadata (cheap: nothing is imported)."""
    out = {}
    for name in ("openvino", "nncf", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out



@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence tracer warnings, NNCF progress bars and info logs (errors still raise)."""
    if not enabled:
        yield
        return
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)



def convert(model: Any, shape: tuple[int, ...]) -> Any:
    """``ov.convert_model`` with a static shape, tracing once (no trace check: it reruns the model
    twice more)."""
    model.eval()
    example = torch.randn(*shape)
    threads = torch.get_num_threads()
    # One thread: tracing needs no speed, and OpenMP threads on a busy machine made a 32 px
    # ResNet-50 forward take 0.9 s instead of 14 ms (threads wait for descheduled peers).
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            decoder = TorchScriptPythonDecoder(model, example_input=(example,),
                                               trace_kwargs={"check_trace": False})
            return ov.convert_model(decoder, input=[list(shape)])
    finally:
        torch.set_num_threads(threads)


def reshaped(ov_model: Any, shape: list[int]) -> Any:
    """``ov_model`` reshaped to ``shape`` (in place). To a static shape, the shape arithmetic that
    OpenVINO's reshape of a dynamic-batch model leaves in front of a Reshape (a Gather/Concat of
    constants) is folded back into a constant, as the converter writes it: a finalist's, a0's or
    the exported IR at batch 1 is then the graph the search timed for the same network.

    A model already of ``shape`` (an IR read back from its file: the chosen finalist's, which the
    export ships) is left as it is: read from a file, its INT8 weights' decompressing Converts have
    lost the mark that keeps constant folding off them, so folding would store them as FP32 (a 4x
    larger IR, no longer byte for byte the one scored and confirmed)."""
    if all(port.get_partial_shape() == ov.PartialShape(shape) for port in ov_model.inputs):
        return ov_model
    ov_model.reshape(shape)
    if all(int(d) > 0 for d in shape):
        manager = ov_passes.Manager()
        manager.register_pass(ov_passes.ConstantFolding())
        manager.run_passes(ov_model)
    return ov_model


def convert_to_openvino(model: nn.Module, resolution: int) -> Any:
    """``ov.Model`` of ``model`` with a dynamic batch, traced exactly as the latency oracle traces."""
    ov_model = convert(model.eval().to(memory_format=torch.contiguous_format), (1, 3, resolution, resolution))
    return reshaped(ov_model, [-1, 3, resolution, resolution])


def quantize_int8(ov_model: Any, calibration: list[np.ndarray], bias_correction: bool = True,
                  inplace_statistics: bool = True, target_device: str = "CPU",
                  ignored_scope: nncf.IgnoredScope | None = None) -> Any:
    """INT8 ``ov.Model`` by NNCF post-training quantization (default preset) over calibration
    batches; statistics are taken per sample, not per batch. The defaults are NNCF's (bias
    correction on, statistics computed inside the calibration graph); the latency oracle's random
    calibration tensors turn bias correction off (:class:`~rlnas.oracles.irbuild.QuantizationConfig`).
    ``ignored_scope``: operations NNCF leaves in floating point (e.g. a detector's heads)."""
    batched = max(len(a) for a in calibration) > 1
    advanced = AdvancedQuantizationParameters(batchwise_statistics=batched, disable_bias_correction=not bias_correction,
                                              inplace_statistics=inplace_statistics)
    return nncf.quantize(ov_model, nncf.Dataset(calibration), subset_size=len(calibration),
                         target_device=nncf.TargetDevice[target_device], ignored_scope=ignored_scope,
                         advanced_parameters=advanced)


def calibration_samples(calibration: Iterable | None, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    """Up to ``count`` single-image float32 arrays of ``shape`` (batch 1): from ``calibration``
    (tensors, arrays, or (input, label) pairs, split into images) or, when None, seeded random
    normal data."""
    if calibration is None:
        rng = np.random.default_rng(0)
        return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]
    arrays: list[np.ndarray] = []
    for item in calibration:
        if isinstance(item, (tuple, list)):
            item = item[0]
        arr = item.detach().cpu().numpy() if hasattr(item, "detach") else np.asarray(item)
        arr = arr.astype(np.float32).reshape(-1, *shape[1:])
        arrays.extend(arr[i:i + 1] for i in range(len(arr)))
        if len(arrays) >= count:
            break
    if not arrays:
        raise ValueError("calibration iterable is empty")
    return arrays[:count]


def quantize_int8_with_accuracy_control(ov_model: Any, calibration: list[np.ndarray],
                                        validation: list[tuple[np.ndarray, Any]],
                                        metric: Callable[[Any, Iterable[tuple[np.ndarray, Any]]], float],
                                        max_drop: float, ignored_scope: nncf.IgnoredScope | None = None) -> Any:
    """INT8 ``ov.Model`` by NNCF's accuracy-controlled quantization: :func:`quantize_int8`'s
    quantization, then the quantizers that cost most are reverted until ``metric`` on the
    ``validation`` (inputs, labels) items drops at most ``max_drop`` (absolute) below the FP32
    model's. ``metric(compiled, items)`` returns the score alone; NNCF then also calls it on single
    items to rank the quantizers. NNCF compiles every variant itself for CPU with an f32
    ``INFERENCE_PRECISION_HINT`` (its ``OVPreparedModel``). ``ignored_scope``: operations left in
    floating point from the start (never quantized, so never reverted)."""
    batched = max(len(a) for a in calibration) > 1
    return nncf.quantize_with_accuracy_control(
        ov_model, nncf.Dataset(calibration), nncf.Dataset(validation, lambda item: item[0]),
        validation_fn=metric, max_drop=float(max_drop), drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calibration), target_device=nncf.TargetDevice.CPU, ignored_scope=ignored_scope,
        advanced_quantization_parameters=AdvancedQuantizationParameters(batchwise_statistics=batched))


def compile_cpu(ov_model: Any, batch_size: int, resolution: int, inference_precision: str = "f32",
                threads: int | None = None) -> Any:
    """Compile for CPU with a static ``[batch_size, 3, R, R]`` input and an explicit precision
    hint (the CPU plugin otherwise runs bf16 where the CPU has it, changing the numbers)."""
    model = ov_model.clone()
    model.reshape([batch_size, 3, resolution, resolution])
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return _core().compile_model(model, "CPU", config)


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    return ov.Core()


@atexit.register
def release_core() -> None:
    """Drop the shared Core (and, with a collection, the compiled models nobody holds) while the
    interpreter is whole: a Core left to the interpreter's teardown is destroyed in no set order
    with OpenVINO's own static objects (openvinotoolkit/openvino#34477)."""
    _core.cache_clear()
    gc.collect()


def primitive_types(compiled: Any) -> list[str]:
    """The ``primitiveType`` of every op of the compiled (runtime) model, e.g. ``jit_avx2_1x1_I8``."""
    return [str(op.get_rt_info()["primitiveType"].astype(str)) for op in compiled.get_runtime_model().get_ops()]


def int8_primitive_count(compiled: Any) -> int:
    """How many executed primitives run in INT8 (``I8`` in their primitive type)."""
    return sum("I8" in t.upper() for t in primitive_types(compiled))


def openvino_correct(compiled: Any, batches: Iterable[Tensor], labels: Tensor) -> np.ndarray:
    """Per image, whether a compiled model with a static batch classifies it right (short
    batches are zero-padded)."""
    batch = int(compiled.input(0).get_shape()[0])
    request = compiled.create_infer_request()
    correct: list[np.ndarray] = []
    seen = 0
    for x in batches:
        n = len(x)
        arr = x.numpy()
        if n < batch:
            arr = np.concatenate([arr, np.zeros((batch - n, *arr.shape[1:]), dtype=arr.dtype)])
        logits = request.infer({0: arr})[compiled.output(0)]
        correct.append(np.asarray(logits)[:n].argmax(1) == labels[seen:seen + n].numpy())
        seen += n
    if seen != len(labels):
        raise ValueError(f"batches held {seen} images for {len(labels)} labels")
    return np.concatenate(correct) if correct else np.zeros(0, dtype=bool)


def openvino_top1(compiled: Any, batches: Iterable[Tensor], labels: Tensor) -> float:
    """Top-1 of a compiled model with a static batch (:func:`openvino_correct`)."""
    correct = openvino_correct(compiled, batches, labels)
    return float(correct.mean()) if len(correct) else 0.0



def save_ir(ov_model: Any, path: Path, compress_to_fp16: bool) -> None:
    """Save atomically: write under a temporary name, then rename .bin before .xml (the .xml's
    presence means the IR is complete), so concurrent writers of the same IR never clash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.xml")
    try:
        ov.save_model(ov_model, str(tmp), compress_to_fp16=compress_to_fp16)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


def ir_size(xml: Path) -> int:
    """Bytes on disk of an IR (.xml + .bin)."""
    return sum(p.stat().st_size for p in (xml, xml.with_suffix(".bin")) if p.is_file())


def check_ir_files(xml_path: str | os.PathLike, what: str = "IR") -> Path:
    """The absolute path of an IR .xml whose .bin exists beside it; ValueError if the path is not
    a .xml, FileNotFoundError naming the missing file."""
    xml = Path(xml_path).expanduser().absolute()
    if xml.suffix != ".xml":
        raise ValueError(f"{what} must be an OpenVINO IR .xml (with its .bin beside it), got {xml}")
    for path in (xml, xml.with_suffix(".bin")):
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {path} does not exist (an IR is a .xml with its .bin beside it)")
    return xml


def ir_content_key(xml: Path) -> str:
    """``"ir:" + sha256`` of the .xml then the .bin contents: the identity of an IR file pair."""
    digest = hashlib.sha256()
    for path in (xml, xml.with_suffix(".bin")):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return "ir:" + digest.hexdigest()


def ir_inputs(xml: Path, what: str = "IR") -> list[Any]:
    """The ``ov.PartialShape`` of each input of an IR, read by OpenVINO in this process (weights
    are memory-mapped, not loaded); ValueError when OpenVINO cannot read it."""
    try:
        model = _core().read_model(str(xml))
    except Exception as err:
        raise ValueError(f"OpenVINO cannot read {what} {xml}: {type(err).__name__}: {err}") from err
    return [port.get_partial_shape() for port in model.inputs]


def name_tensors(ov_model: Any, input_name: str, output_names: Iterable[str]) -> Any:
    """Give the model's input and outputs stable tensor names (``input``; ``logits`` or ``loc``/``conf``)."""
    ov_model.inputs[0].get_tensor().set_names({input_name})
    for port, name in zip(ov_model.outputs, output_names, strict=False):
        port.get_tensor().set_names({name})
    return ov_model


def with_image_preprocessing(ov_model: Any, mean: Iterable[float], std: Iterable[float]) -> Any:
    """A copy of ``ov_model`` that takes images as they come: uint8, NHWC, RGB in [0, 255]; the
    conversion to float and the normalisation ``(x / 255 - mean) / std`` run inside the graph
    (OpenVINO's ``PrePostProcessor``)."""
    ppp = ov.preprocess.PrePostProcessor(ov_model.clone())
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([m * 255 for m in mean]).scale(
        [s * 255 for s in std])
    return ppp.build()
