"""The accuracy oracle: FP32 and OpenVINO INT8 top-1 of a sub-network of a trained supernet.

Pipeline of :meth:`AccuracyOracle.evaluate` on a cache miss (classification):

1. ``extract`` the sub-network (a copy: the supernet is never modified);
2. ``recalibrate`` its BatchNorm statistics on ``recal_images`` training images (cumulative
   average, eval preprocessing, seeded subset);
3. ``eval_fp32``: top-1 in PyTorch on the validation images;
4. ``convert`` (``ov.convert_model``, traced as the latency oracle does), ``quantize``
   (``nncf.quantize`` on the ``ov.Model`` with ``calib_images`` real training images, per-sample
   statistics over calibration batches), ``compile`` for CPU with an explicit
   ``INFERENCE_PRECISION_HINT`` and a static batch;
5. ``eval_int8``: top-1 in OpenVINO over the same validation images (the last partial batch is
   zero-padded and its padding ignored).

Results, failures included, go to the :class:`~rlnas.oracles.store.MeasurementStore` (kind
``accuracy``) under a key holding the supernet's ``checkpoint_id``, the architecture, the data
identity, every size and seed, the host ISA and library versions.

Everything task-specific is a :class:`TaskPipeline` in :data:`TASK_PIPELINES`, picked by
``supernet.task``: calling it measures one architecture, and its steps (recalibrate, FP32 scores,
calibration images, convert, compile, INT8 scores) back the oracle's public methods, which the
export uses to build and check its INT8 IR exactly as the search measured it. Detection
(:class:`DetectionPipeline`) scores COCO mAP, mAP@.5 being the accuracy.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import io
import logging
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rlnas.arch import Arch
from rlnas.oracles.store import MeasurementStore
from rlnas.supernet.bn import preserved_bn_state, recalibrate_bn

log = logging.getLogger(__name__)

KIND = "accuracy"
#: Bump when the pipeline changes what a number means; older cache entries are then ignored.
PROTOCOL = 1
RECAL_SEED = 1
CALIB_SEED = 2
#: CPU flags that change INT8/FP32 kernels (hence possibly the numbers)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


@dataclass
class AccuracyResult:
    """Accuracy of one architecture: top-1 in [0, 1] for classification (mAP@.5 for detection).

    ``status`` is ``"ok"`` or ``"failed"`` (``reason`` says which stage and why); ``acc_fp32`` may
    be None when FP32 evaluation was skipped for candidates (``fp32_images=0``); ``details`` holds
    image counts, the INT8 primitive count and task-specific extras.
    """

    status: str = "ok"
    reason: str = ""
    acc_fp32: float | None = None
    acc_int8: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------------------------------------
# building blocks (public: the training loop, benchmarks and tests use them)


@torch.no_grad()
def torch_top1(model: nn.Module, batches: Iterable[Tensor], labels: Tensor, channels_last: bool = True) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``batches`` whose labels are ``labels``."""
    correct = seen = 0
    for x in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pred = model(x).argmax(1)
        correct += int((pred == labels[seen:seen + len(x)]).sum())
        seen += len(x)
    if seen != len(labels):
        raise ValueError(f"batches held {seen} images for {len(labels)} labels")
    return correct / max(1, seen)


def convert_to_openvino(model: nn.Module, resolution: int) -> Any:
    """``ov.Model`` of ``model`` with a dynamic batch, traced exactly as the latency oracle traces."""
    from rlnas.oracles.latency import convert

    ov_model = convert(model.eval().to(memory_format=torch.contiguous_format), (1, 3, resolution, resolution))
    ov_model.reshape([-1, 3, resolution, resolution])
    return ov_model


def quantize_int8(ov_model: Any, calibration: list[np.ndarray]) -> Any:
    """INT8 ``ov.Model`` by NNCF post-training quantization (CPU target, default preset, fast bias
    correction) over calibration batches; statistics are taken per sample, not per batch."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    batched = max(len(a) for a in calibration) > 1
    return nncf.quantize(ov_model, nncf.Dataset(calibration), subset_size=len(calibration),
                         target_device=nncf.TargetDevice.CPU,
                         advanced_parameters=AdvancedQuantizationParameters(batchwise_statistics=batched))


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
    import openvino as ov

    return ov.Core()


def primitive_types(compiled: Any) -> list[str]:
    """The ``primitiveType`` of every op of the compiled (runtime) model, e.g. ``jit_avx2_1x1_I8``."""
    return [str(op.get_rt_info()["primitiveType"].astype(str)) for op in compiled.get_runtime_model().get_ops()]


def int8_primitive_count(compiled: Any) -> int:
    """How many executed primitives run in INT8 (``I8`` in their primitive type)."""
    return sum("I8" in t.upper() for t in primitive_types(compiled))


def openvino_top1(compiled: Any, batches: Iterable[Tensor], labels: Tensor) -> float:
    """Top-1 of a compiled model with a static batch; short batches are zero-padded."""
    batch = int(compiled.input(0).get_shape()[0])
    request = compiled.create_infer_request()
    correct = seen = 0
    for x in batches:
        n = len(x)
        arr = x.numpy()
        if n < batch:
            arr = np.concatenate([arr, np.zeros((batch - n, *arr.shape[1:]), dtype=arr.dtype)])
        logits = request.infer({0: arr})[compiled.output(0)]
        pred = torch.from_numpy(np.asarray(logits)[:n].argmax(1))
        correct += int((pred == labels[seen:seen + n]).sum())
        seen += n
    if seen != len(labels):
        raise ValueError(f"batches held {seen} images for {len(labels)} labels")
    return correct / max(1, seen)


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "openvino", "nncf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def host_isa() -> list[str]:
    """The ISA flags of this host that select different kernels."""
    from rlnas.oracles.device import host_cpu_flags

    flags = host_cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence tracer warnings, NNCF progress bars and info logs (errors still raise)."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Stage:
    """Times named stages into a dict and names the stage that failed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = ""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# the oracle


class AccuracyOracle:
    """FP32 and INT8 accuracy of architectures of one trained supernet on one dataset, cached.

    :param supernet: trained :class:`~rlnas.spaces.base.Supernet` (never modified).
    :param data: the dataset object (:class:`~rlnas.data.classification.ClassificationData` for
        classification, :class:`~rlnas.data.detection.DetectionData` for detection) at the
        resolution the supernet was trained for.
    :param store: a :class:`MeasurementStore`, a path to one, or None (no caching).
    :param checkpoint_id: the supernet checkpoint's content hash (``meta["checkpoint_id"]``).
    :param recal_images: training images for BN recalibration (0: keep the supernet's statistics).
    :param calib_images: training images for INT8 calibration.
    :param eval_images: validation images to score (None: the whole split; else a seeded subset).
    :param fp32_images: validation images for the FP32 score of candidates (None: the same as
        INT8; 0: skip, ``acc_fp32`` None). The maximal architecture (a0) always gets the full
        ``eval_images`` FP32 evaluation, which is all the constraint needs.
    :param batch_size: evaluation batch (static OpenVINO batch).
    :param calib_batch_size: calibration batch (statistics stay per sample).
    :param threads: torch and OpenVINO threads while evaluating.
    :param inference_precision: OpenVINO ``INFERENCE_PRECISION_HINT`` (f32: INT8 layers run INT8,
        the rest FP32).
    :param retry_failed: re-measure architectures whose cached record is a failure.
    """

    def __init__(self, supernet: nn.Module, data: Any, store: MeasurementStore | str | Path | None,
                 checkpoint_id: str, recal_images: int = 2000, calib_images: int = 300,
                 eval_images: int | None = None, batch_size: int = 250, threads: int | None = 2,
                 fp32_images: int | None = None, calib_batch_size: int = 50, inference_precision: str = "f32",
                 retry_failed: bool = False, channels_last: bool = True) -> None:
        self.supernet = supernet
        self.data = data
        self.store = MeasurementStore(store) if isinstance(store, (str, Path)) else store
        self.checkpoint_id = str(checkpoint_id)
        self.recal_images, self.calib_images = int(recal_images), int(calib_images)
        self.eval_images = eval_images
        self.fp32_images = fp32_images
        self.batch_size, self.calib_batch_size = int(batch_size), int(calib_batch_size)
        self.threads = threads
        self.inference_precision = inference_precision
        self.retry_failed = retry_failed
        self.channels_last = channels_last
        self.task = getattr(supernet, "task", "classification")
        self.versions = library_versions()
        self._isa = host_isa()

    # -- public --------------------------------------------------------------------------------

    def evaluate(self, arch: Arch) -> AccuracyResult:
        """Accuracy of ``arch`` (from the store when measured before); never raises for a failing
        architecture: the result then has ``status="failed"`` and the reason."""
        try:
            key = self.cache_key(arch)
        except Exception as err:  # an invalid arch or unusable data is this candidate's failure
            return AccuracyResult("failed", f"key: {type(err).__name__}: {err}")
        cached = self._lookup(key)
        if cached is not None:
            return cached
        result = self._measure(arch)
        if self.store is not None:
            self.store.put(KIND, key, result.to_dict())
        return result

    def baseline(self) -> AccuracyResult:
        """The maximal architecture a0, evaluated the same way."""
        return self.evaluate(self.supernet.space.max_arch())

    def cache_key(self, arch: Arch) -> dict[str, Any]:
        """Everything that changes the numbers of ``arch``."""
        self.supernet.space.validate(arch)
        return {"protocol": PROTOCOL, "task": self.task, "checkpoint_id": self.checkpoint_id,
                "arch": arch.to_json(), "data": self._data_identity(), "eval_images": self.eval_count,
                "fp32_images": self._fp32_count(arch), "recal_images": self.recal_images,
                "recal_seed": RECAL_SEED, "calib_images": self.calib_images, "calib_seed": CALIB_SEED,
                "calib_batch_size": self.calib_batch_size, "batch_size": self.batch_size,
                "threads": self.threads, "inference_precision": self.inference_precision,
                "isa": self._isa, "versions": self.versions}

    @property
    def pipeline(self) -> TaskPipeline:
        """The :class:`TaskPipeline` of this oracle's task (ValueError naming the known tasks)."""
        pipeline = TASK_PIPELINES.get(self.task)
        if pipeline is None:
            raise ValueError(f"no accuracy pipeline for task {self.task!r}; known: {sorted(TASK_PIPELINES)}")
        return pipeline

    @property
    def metric(self) -> str:
        """Label of the accuracy this oracle reports, e.g. ``top-1`` or ``mAP@.5``."""
        return self.pipeline.metric

    @property
    def eval_count(self) -> int:
        """Validation images scored: ``eval_images`` capped at the split's size (None: all)."""
        total = len(self.data.val)
        return total if self.eval_images is None else min(int(self.eval_images), total)

    def prepare(self, arch: Arch) -> nn.Module:
        """``arch`` extracted from the supernet with recalibrated BN statistics, in eval mode."""
        return self.recalibrate(self.supernet.extract(arch))

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate the BN statistics of an extracted model on ``recal_images`` training images."""
        return self.pipeline.recalibrate(self, model)

    def fp32_scores(self, model: nn.Module, count: int | None = None) -> dict[str, float]:
        """PyTorch scores (keys of ``pipeline.metrics``) of a prepared model on ``count``
        validation images (None: the evaluation set)."""
        return self.pipeline.fp32_scores(self, model, self.eval_count if count is None else count)

    def fp32_accuracy(self, model: nn.Module, count: int | None = None) -> float:
        """The accuracy (top-1, mAP@.5...) among :meth:`fp32_scores`."""
        return self.fp32_scores(model, count)[self.pipeline.accuracy_key]

    def calibration(self, count: int | None = None) -> list[np.ndarray]:
        """INT8 calibration inputs: ``count`` real training images (None: ``calib_images``)."""
        return self.pipeline.calibration(self, self.calib_images if count is None else count)

    def quantize(self, model: nn.Module, calib_images: int | None = None) -> Any:
        """Convert a prepared model and quantize it by NNCF on real calibration images
        (:meth:`calibration`): the INT8 ``ov.Model``, dynamic batch."""
        with quiet():
            return quantize_int8(self.pipeline.convert(self, model), self.calibration(calib_images))

    def compile(self, ov_model: Any) -> Any:
        """Compile an ``ov.Model`` for CPU as evaluation runs it (static batch, explicit precision)."""
        return self.pipeline.compile(self, ov_model)

    def build_int8(self, model: nn.Module) -> Any:
        """Convert, quantize with real calibration images and compile a prepared model."""
        return self.compile(self.quantize(model))

    def int8_scores(self, compiled: Any, count: int | None = None) -> dict[str, float]:
        """OpenVINO scores of a compiled model on ``count`` validation images (None: the evaluation set)."""
        return self.pipeline.int8_scores(self, compiled, self.eval_count if count is None else count)

    def int8_accuracy(self, compiled: Any, count: int | None = None) -> float:
        """The accuracy among :meth:`int8_scores`."""
        return self.int8_scores(compiled, count)[self.pipeline.accuracy_key]

    # -- internals -----------------------------------------------------------------------------

    def _lookup(self, key: dict[str, Any]) -> AccuracyResult | None:
        if self.store is None:
            return None
        record = self.store.get(KIND, key)
        if record is None:
            return None
        result = AccuracyResult.from_dict(record)
        if not result.ok and self.retry_failed:
            return None
        result.cached = True
        return result

    def _measure(self, arch: Arch) -> AccuracyResult:
        try:
            pipeline = self.pipeline
        except ValueError as err:
            return AccuracyResult("failed", str(err))
        stage = _Stage()
        start = time.perf_counter()
        try:
            with torch_threads(self.threads):
                result = pipeline(self, arch, stage)
        except Exception as err:  # a failing candidate is reported, never fatal to the search
            log.warning("accuracy of %s failed in %s: %s", arch.short(), stage.current, err)
            result = AccuracyResult("failed", f"{stage.current}: {type(err).__name__}: {err}")
        result.stage_seconds = {**stage.seconds, "total": time.perf_counter() - start}
        return result

    def _fp32_count(self, arch: Arch) -> int:
        if self.fp32_images is None or arch == self.supernet.space.max_arch():
            return self.eval_count
        return min(int(self.fp32_images), self.eval_count)

    def _data_identity(self) -> dict[str, Any]:
        identity = getattr(self.data, "identity", None)
        if callable(identity):
            return identity()
        return {"type": type(self.data).__name__, "repr": repr(self.data)}


class TaskPipeline(abc.ABC):
    """How accuracy is measured for one ``supernet.task`` (one instance per task in
    :data:`TASK_PIPELINES`). Calling it measures one architecture for the oracle (timing its
    stages); the other methods are the steps, reached through the oracle's public methods.

    ``metrics`` maps score keys to labels, the accuracy (the search's constraint) first;
    ``output_names`` names the network's outputs in ONNX and the IR.
    """

    metrics: dict[str, str]
    output_names: tuple[str, ...]

    @property
    def accuracy_key(self) -> str:
        """The score key of the accuracy, e.g. ``top1`` or ``map50``."""
        return next(iter(self.metrics))

    @property
    def metric(self) -> str:
        """The accuracy's label, e.g. ``top-1`` or ``mAP@.5``."""
        return self.metrics[self.accuracy_key]

    def __call__(self, oracle: AccuracyOracle, arch: Arch, stage: _Stage) -> AccuracyResult:
        """Extract, recalibrate, FP32 in PyTorch, convert, quantize, compile, INT8 in OpenVINO."""
        with stage("extract"):
            model = oracle.supernet.extract(arch)
        with stage("recalibrate"):
            model = oracle.recalibrate(model)
        acc_fp32 = None
        fp32_count = oracle._fp32_count(arch)
        if fp32_count > 0:
            with stage("eval_fp32"):
                acc_fp32 = oracle.fp32_accuracy(model, fp32_count)
        with stage("convert"), quiet():
            ov_model = self.convert(oracle, model)
        with stage("quantize"), quiet():
            quantized = quantize_int8(ov_model, oracle.calibration())
        with stage("compile"):
            compiled = oracle.compile(quantized)
        with stage("eval_int8"):
            acc_int8 = oracle.int8_accuracy(compiled)
        details = {"eval_images": oracle.eval_count, "fp32_images": fp32_count,
                   "int8_primitives": int8_primitive_count(compiled)}
        return AccuracyResult("ok", "", acc_fp32, acc_int8, details=details)

    @abc.abstractmethod
    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        """BN statistics of an extracted model re-estimated on training images; eval mode."""

    @abc.abstractmethod
    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        """Scores (keys of ``metrics``) of a PyTorch model on ``count`` validation images."""

    @abc.abstractmethod
    def calibration(self, oracle: AccuracyOracle, count: int) -> list[np.ndarray]:
        """``count`` real training images as NNCF calibration batches."""

    @abc.abstractmethod
    def convert(self, oracle: AccuracyOracle, model: nn.Module) -> Any:
        """The FP32 ``ov.Model`` of a prepared model (dynamic batch)."""

    @abc.abstractmethod
    def compile(self, oracle: AccuracyOracle, ov_model: Any) -> Any:
        """``ov_model`` compiled for CPU with the static batch :meth:`int8_scores` feeds."""

    @abc.abstractmethod
    def int8_scores(self, oracle: AccuracyOracle, compiled: Any, count: int) -> dict[str, float]:
        """Scores of a compiled OpenVINO model on ``count`` validation images."""


class ClassificationPipeline(TaskPipeline):
    """Top-1 (see the module docstring): seeded training subsets for BN recalibration and INT8
    calibration, batched evaluation."""

    metrics = {"top1": "top-1"}
    output_names = ("logits",)

    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        if oracle.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if oracle.recal_images > 0:
            images = oracle.data.train_subset(oracle.recal_images, RECAL_SEED)
            recalibrate_bn(model, oracle.data.batches(images, oracle.batch_size), oracle.channels_last)
        return model.eval()

    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        images, labels = oracle.data.val_images(count)
        return {"top1": torch_top1(model, oracle.data.batches(images, oracle.batch_size), labels,
                                   oracle.channels_last)}

    def calibration(self, oracle: AccuracyOracle, count: int) -> list[np.ndarray]:
        images = oracle.data.train_subset(count, CALIB_SEED)
        return [x.numpy() for x in oracle.data.batches(images, oracle.calib_batch_size)]

    def convert(self, oracle: AccuracyOracle, model: nn.Module) -> Any:
        return convert_to_openvino(model, oracle.data.resolution)

    def compile(self, oracle: AccuracyOracle, ov_model: Any) -> Any:
        return compile_cpu(ov_model, oracle.batch_size, oracle.data.resolution, oracle.inference_precision,
                           oracle.threads)

    def int8_scores(self, oracle: AccuracyOracle, compiled: Any, count: int) -> dict[str, float]:
        images, labels = oracle.data.val_images(count)
        return {"top1": openvino_top1(compiled, oracle.data.batches(images, oracle.batch_size), labels)}


def _det() -> Any:
    """:mod:`rlnas.detection.evaluate`, imported on first use (it imports this module)."""
    from rlnas.detection import evaluate

    return evaluate


class DetectionPipeline(TaskPipeline):
    """COCO mAP with :mod:`rlnas.detection.evaluate` (mAP@.5 is the accuracy): only the network
    (raw ``loc``/``conf``) is converted and quantized, at batch 1 on the first images of each
    split; decoding and NMS run in PyTorch."""

    metrics = {"map50": "mAP@.5", "map": "mAP@[.5:.95]", "map75": "mAP@.75"}
    output_names = ("loc", "conf")

    def __call__(self, oracle: AccuracyOracle, arch: Arch, stage: _Stage) -> AccuracyResult:
        """Delegated to :func:`rlnas.detection.evaluate.detection_accuracy` (the same steps as
        below; mAP@[.5:.95] in ``details``); the supernet's BN buffers are restored after."""
        with stage("detection"), preserved_bn_state(oracle.supernet):
            out = _det().detection_accuracy(
                oracle.supernet, arch, oracle.data, recal_images=oracle.recal_images,
                calib_images=oracle.calib_images, eval_images=oracle.eval_images,
                inference_precision=oracle.inference_precision, threads=oracle.threads)
        stage.seconds.update(out.get("stage_seconds", {}))
        details = {k: v for k, v in out.items() if k not in ("stage_seconds", "map50", "map50_int8")}
        return AccuracyResult("ok", "", out["map50"], out["map50_int8"], details=details)

    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        return _det().recalibrate(model, oracle.data, oracle.recal_images)

    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        return _det().evaluate_detection(model, None, oracle.data, max_images=count)

    def calibration(self, oracle: AccuracyOracle, count: int) -> list[np.ndarray]:
        return _det().calibration_arrays(oracle.data, count)

    def convert(self, oracle: AccuracyOracle, model: nn.Module) -> Any:
        return _det().convert_detector(model, oracle.data.image_size)

    def compile(self, oracle: AccuracyOracle, ov_model: Any) -> Any:
        return _det().compile_detector(ov_model, oracle.data.image_size, oracle.inference_precision, oracle.threads)

    def int8_scores(self, oracle: AccuracyOracle, compiled: Any, count: int) -> dict[str, float]:
        det = _det()
        return det.evaluate_compiled(compiled, oracle.data, det.priors_of(oracle.supernet), max_images=count)


#: ``supernet.task`` -> its :class:`TaskPipeline`
TASK_PIPELINES: dict[str, TaskPipeline] = {
    "classification": ClassificationPipeline(),
    "detection": DetectionPipeline(),
}
