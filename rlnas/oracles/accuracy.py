"""The accuracy oracle: FP32 and OpenVINO INT8 top-1 of a sub-network of a trained supernet.

Pipeline of :meth:`AccuracyOracle.evaluate` on a cache miss (classification):

1. ``extract`` the sub-network (a copy: the supernet is never modified);
2. ``recalibrate`` its BatchNorm statistics on ``recal_images`` training images (cumulative
   average, training augmentation, seeded subset);
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

Everything task-specific is a :class:`TaskPipeline` given to the oracle (the task registry
:mod:`rlnas.tasks` holds one per task; classification's, :class:`ClassificationPipeline`, is the
default): calling it measures one architecture, and its steps (recalibrate, FP32 scores,
calibration images, convert, compile, INT8 scores) back the oracle's public methods, which the
finalists and the export use to build and check INT8 IRs exactly as the search measured.
Detection's (:class:`rlnas.detection.pipeline.DetectionPipeline`) scores COCO mAP, mAP@.5 being
the accuracy.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlnas import machinelock
from rlnas.arch import Arch, InvalidArchError
from rlnas.oracles.device import RELEVANT_FLAGS, host_cpu_flags
from rlnas.oracles.irbuild import FP32Scope
from rlnas.oracles.store import MeasurementStore, StoredResult
from rlnas.ovtools import (
    compile_cpu,
    convert_to_openvino,
    int8_primitive_count,
    library_versions,
    openvino_correct,
    quantize_int8,
    quantize_int8_with_accuracy_control,
    quiet,
)
from rlnas.stats import BoundTest, accuracy_interval, bound_test, pack_bits, unpack_bits
from rlnas.supernet.bn import recalibrate_bn
from rlnas.supernet.scoring import torch_correct
from rlnas.timing import StageTimer

log = logging.getLogger(__name__)

KIND = "accuracy"
#: Bump when the pipeline changes what a number means; older cache entries are then ignored.
PROTOCOL = 3  # 2: BN recalibration on training-augmented images, validation/held-out splits; 3: per-image bits
RECAL_SEED = 1
CALIB_SEED = 2


@dataclass
class AccuracyResult(StoredResult):
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
    transient: bool = False  # a failure not of the network itself (see failure_of): never cached

    def correct(self, precision: str) -> np.ndarray | None:
        """Per evaluation image, whether the network classified it right in ``precision``
        (``fp32`` or ``int8``), in the split's order; None where not recorded (detection)."""
        packed = self.details.get(f"{precision}_correct")
        count = self.details.get("fp32_images" if precision == "fp32" else "eval_images")
        return None if packed is None or count is None else unpack_bits(packed, int(count))


def failure_of(arch: Arch, stage: str, err: Exception) -> AccuracyResult:
    """The failed result of ``arch`` in ``stage``. Only an architecture the space refuses is the
    network's own failure, kept in the store; anything else (a lost node, memory, a bug) is
    reported, with its traceback, and measured again on the next run."""
    own = isinstance(err, InvalidArchError)
    if not own:
        log.warning("accuracy of %s failed in %s (not cached: retried on the next run)", arch.short(), stage,
                    exc_info=err)
    return AccuracyResult("failed", f"{stage}: {type(err).__name__}: {err}", transient=not own)


# ---------------------------------------------------------------------------------------------
# building blocks (public: the training loop, benchmarks and tests use them)


def host_isa() -> list[str]:
    """The CPU flags of this host that select different kernels (those of
    :data:`~rlnas.oracles.device.RELEVANT_FLAGS` it has, in that order)."""
    flags = host_cpu_flags()
    return [f for f in RELEVANT_FLAGS if f in flags]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    :param split: the images scored: ``val`` (validation: what the search selects on) or
        ``holdout`` (held-out images for reports; the search never sees them).
    :param pipeline: how the supernet's task is measured (``rlnas.tasks.get_task(task).pipeline``);
        None: :class:`ClassificationPipeline`, for classification supernets only.
    :param lock_path: the machine lock, held shared while scoring (a timing run on this machine
        waits for it and it for the timing run; None: no lock).
    """

    def __init__(self, supernet: nn.Module, data: Any, store: MeasurementStore | str | Path | None,
                 checkpoint_id: str, recal_images: int = 2000, calib_images: int = 300,
                 eval_images: int | None = None, batch_size: int = 250, threads: int | None = 2,
                 fp32_images: int | None = None, calib_batch_size: int = 50, inference_precision: str = "f32",
                 retry_failed: bool = False, channels_last: bool = True, split: str = "val",
                 pipeline: TaskPipeline | None = None, lock_path: str | None = machinelock.DEFAULT_PATH) -> None:
        self.task = getattr(supernet, "task", "classification")
        if pipeline is None and self.task != "classification":
            raise ValueError(f"a {self.task} supernet needs its task's pipeline: "
                             f"AccuracyOracle(..., pipeline=rlnas.tasks.get_task({self.task!r}).pipeline)")
        self._pipeline = pipeline or ClassificationPipeline()
        self.split = split
        if split != "val" and not hasattr(data, "eval_set"):
            raise ValueError(f"split={split!r}: {type(data).__name__} has validation images only")
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
        self.lock_path = lock_path
        self.versions = library_versions()
        self._isa = host_isa()

    # -- public --------------------------------------------------------------------------------

    def evaluate(self, arch: Arch) -> AccuracyResult:
        """Accuracy of ``arch`` (from the store when measured before); never raises for a failing
        architecture: the result then has ``status="failed"`` and the reason."""
        try:
            key = self.cache_key(arch)
        except Exception as err:  # an invalid arch or unusable data is this candidate's failure
            return failure_of(arch, "key", err)
        return self._once(key, lambda: self._measure(arch), keep=lambda result: not result.transient)

    def baseline(self) -> AccuracyResult:
        """The maximal architecture of the supernet, evaluated the same way."""
        return self.evaluate(self.supernet.space.max_arch())

    def evaluate_model(self, model: nn.Module, model_key: str) -> AccuracyResult:
        """Accuracy of a plain trained model *as deployed* (its own BN statistics, never
        recalibrated; FP32 on the whole evaluation set, then INT8 as for candidates), e.g. the
        user's a0. ``model_key`` identifies its weights in the cache (e.g. a checkpoint hash)."""
        key = {**self.cache_key(self.supernet.space.max_arch()), "network": None, "model": str(model_key),
               "recal_images": 0, "fp32_images": self.eval_count}
        return self._once(key, lambda: self._score_model(model), keep=lambda result: result.ok)

    def _score_model(self, model: nn.Module) -> AccuracyResult:
        stage = StageTimer()
        try:
            prepared = model.eval().to(memory_format=torch.channels_last) if self.channels_last else model.eval()
            with machinelock.shared(self.lock_path) as waited, torch_threads(self.threads):
                stage.seconds["lock_wait"] = waited.seconds
                result = self.pipeline.score(self, prepared, stage, self.eval_count)
        except Exception as err:  # reported to the caller, which cannot go on without it
            result = failure_of(self.supernet.space.max_arch(), stage.current, err)
        result.stage_seconds = {**stage.seconds, "total": stage.total()}
        return result

    def cache_key(self, arch: Arch) -> dict[str, Any]:
        """Everything that changes the numbers of ``arch``."""
        self.supernet.space.validate(arch)
        network = getattr(self.supernet, "network_key", None)
        ident = hashlib.sha256(network(arch).encode()).hexdigest()[:24] if callable(network) else arch.to_json()
        return {"protocol": PROTOCOL, "task": self.task, "checkpoint_id": self.checkpoint_id,
                "network": ident, "data": self._data_identity(), "split": self.split,
                "eval_images": self.eval_count,
                "fp32_images": self._fp32_count(arch), "recal_images": self.recal_images,
                "recal_seed": RECAL_SEED, "calib_images": self.calib_images, "calib_seed": CALIB_SEED,
                "calib_batch_size": self.calib_batch_size, "batch_size": self.batch_size,
                "threads": self.threads, "inference_precision": self.inference_precision,
                "isa": self._isa, "versions": self.versions, **self.pipeline.key()}

    @property
    def pipeline(self) -> TaskPipeline:
        """The :class:`TaskPipeline` of this oracle's task."""
        return self._pipeline

    @property
    def metric(self) -> str:
        """Label of the accuracy this oracle reports, e.g. ``top-1`` or ``mAP@.5``."""
        return self.pipeline.metric

    @property
    def eval_count(self) -> int:
        """Validation images scored: ``eval_images`` capped at the split's size (None: all)."""
        total = len(self.data.eval_set(self.split) if hasattr(self.data, "eval_set") else self.data.val)
        return total if self.eval_images is None else min(int(self.eval_images), total)

    def prepare(self, arch: Arch) -> nn.Module:
        """``arch`` extracted from the supernet with recalibrated BN statistics, in eval mode."""
        with machinelock.shared(self.lock_path):
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
        with quiet(), machinelock.shared(self.lock_path):
            return self.pipeline.quantize(self, self.pipeline.convert(self, model), self.calibration(calib_images))

    def quantize_with_accuracy_control(self, model: nn.Module, max_drop: float,
                                       calib_images: int | None = None) -> Any:
        """As :meth:`quantize`, then NNCF's accuracy control: quantizers are reverted until the
        INT8 accuracy on this oracle's evaluation images (its ``split``: give it the validation
        oracle, never the held-out one) is at most ``max_drop`` below the FP32 model's."""
        with quiet(), machinelock.shared(self.lock_path):
            return self.pipeline.quantize_with_accuracy_control(
                self, self.pipeline.convert(self, model), self.calibration(calib_images), max_drop)

    def compile(self, ov_model: Any) -> Any:
        """Compile an ``ov.Model`` for CPU as evaluation runs it (static batch, explicit precision)."""
        return self.pipeline.compile(self, ov_model)

    def int8_scores(self, compiled: Any, count: int | None = None) -> dict[str, float]:
        """OpenVINO scores of a compiled model on ``count`` validation images (None: the evaluation set)."""
        return self.pipeline.int8_scores(self, compiled, self.eval_count if count is None else count)

    def int8_accuracy(self, compiled: Any, count: int | None = None) -> float:
        """The accuracy among :meth:`int8_scores`."""
        return self.int8_scores(compiled, count)[self.pipeline.accuracy_key]

    # -- internals -----------------------------------------------------------------------------

    def _once(self, key: dict[str, Any], measure: Callable[[], AccuracyResult],
              keep: Callable[[AccuracyResult], bool]) -> AccuracyResult:
        """The stored result of ``key``, else ``measure()``, stored where ``keep`` says; another
        process measuring the same key meanwhile is waited for (the store's claim), not repeated."""
        with self.store.claim(KIND, key) if self.store is not None else contextlib.nullcontext():
            cached = self._lookup(key)
            if cached is not None:
                return cached
            result = measure()
            if self.store is not None and keep(result):
                self.store.put(KIND, key, result.to_dict())
            return result

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
        pipeline = self.pipeline
        stage = StageTimer()
        try:
            with machinelock.shared(self.lock_path) as waited, torch_threads(self.threads):
                stage.seconds["lock_wait"] = waited.seconds
                result = pipeline(self, arch, stage)
        except Exception as err:  # a failing candidate is reported, never fatal to the search
            result = failure_of(arch, stage.current, err)
        result.stage_seconds = {**stage.seconds, "total": stage.total()}
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

    Per image: :meth:`fp32_eval` / :meth:`int8_eval` also give what the network did on each image,
    its *per-image record*, which :meth:`score` packs into the result's ``details`` as
    ``fp32_<per_image>`` / ``int8_<per_image>`` (:meth:`pack_per_image`), and on which
    :meth:`bound_test` tests the bound ``INT8(a) >= tau * FP32(a0)`` and :meth:`interval` gives an
    accuracy's interval. This base class's are those of an accuracy that is a mean over images:
    which images the network gets right (``correct``, packed bits; the finalists' rows keep them
    under ``bits``), :func:`rlnas.stats.bound_test`, the Wilson interval. Detection's are the
    matched detections, mAP@.5's paired bootstrap and its percentile interval.
    """

    metrics: dict[str, str]
    output_names: tuple[str, ...]
    #: the per-image record's name in ``details`` (``fp32_<per_image>``, ``int8_<per_image>``)
    per_image: str = "correct"
    #: the key under which a finalist's accuracy row (:func:`rlnas.finalists.accuracy_row`) keeps them
    row_field: str = "bits"
    #: how :meth:`bound_test` and :meth:`interval` decide, for the report
    bound_method: str = ("per-image paired differences INT8(finalist) - tau x FP32(a0) on the same images, normal "
                         "approximation; held-out interval: Wilson")

    @property
    def accuracy_key(self) -> str:
        """The score key of the accuracy, e.g. ``top1`` or ``map50``."""
        return next(iter(self.metrics))

    @property
    def metric(self) -> str:
        """The accuracy's label, e.g. ``top-1`` or ``mAP@.5``."""
        return self.metrics[self.accuracy_key]

    def __call__(self, oracle: AccuracyOracle, arch: Arch, stage: StageTimer) -> AccuracyResult:
        """Extract, recalibrate, then :meth:`score`."""
        with stage("extract"):
            model = oracle.supernet.extract(arch)
        with stage("recalibrate"):
            model = oracle.recalibrate(model)
        return self.score(oracle, model, stage, oracle._fp32_count(arch))

    def score(self, oracle: AccuracyOracle, model: nn.Module, stage: StageTimer, fp32_count: int) -> AccuracyResult:
        """FP32 in PyTorch (on ``fp32_count`` images; 0 skips it), convert, quantize with real
        calibration images, compile, INT8 in OpenVINO, of a prepared model."""
        key = self.accuracy_key
        fp32: dict[str, float] = {}
        bits: dict[str, str] = {}
        if fp32_count > 0:
            with stage("eval_fp32"):
                fp32, correct = self.fp32_eval(oracle, model, fp32_count)
            bits.update({} if correct is None else {f"fp32_{self.per_image}": self.pack_per_image(correct)})
        with stage("convert"), quiet():
            ov_model = self.convert(oracle, model)
        with stage("quantize"), quiet():
            quantized = self.quantize(oracle, ov_model, oracle.calibration())
        with stage("compile"):
            compiled = oracle.compile(quantized)
        with stage("eval_int8"):
            int8, correct = self.int8_eval(oracle, compiled, oracle.eval_count)
        bits.update({} if correct is None else {f"int8_{self.per_image}": self.pack_per_image(correct)})
        details = {"eval_images": oracle.eval_count, "fp32_images": fp32_count, "split": oracle.split,
                   "int8_primitives": int8_primitive_count(compiled), "fp32_scores": fp32, "int8_scores": int8,
                   **bits}
        acc_fp32, acc_int8 = fp32.get(key), int8[key]
        return AccuracyResult("ok", "", acc_fp32, acc_int8, details=details)

    def fp32_eval(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> tuple[dict[str, float], Any]:
        """:meth:`fp32_scores` and the per-image record (see the class docstring; None: none recorded)."""
        return self.fp32_scores(oracle, model, count), None

    def int8_eval(self, oracle: AccuracyOracle, compiled: Any, count: int) -> tuple[dict[str, float], Any]:
        """:meth:`int8_scores` and the per-image record (see :meth:`fp32_eval`)."""
        return self.int8_scores(oracle, compiled, count), None

    def pack_per_image(self, record: Any) -> Any:
        """A per-image record as JSON-serialisable data (here: per-image correctness as packed bits)."""
        return pack_bits(record)

    def unpack_per_image(self, packed: Any, images: int) -> Any:
        """The record :meth:`pack_per_image` packed, of ``images`` images."""
        return unpack_bits(packed, images)

    def bound_test(self, int8: Any, a0_fp32: Any, tau: float, confidence: float = 0.9,
                   comparisons: int = 1) -> BoundTest:
        """Does the network whose INT8 per-image record is ``int8`` meet ``tau`` times a0's FP32
        accuracy (record ``a0_fp32``, the same images) with ``confidence``, alpha split over
        ``comparisons``? Here :func:`rlnas.stats.bound_test` (paired per-image differences)."""
        return bound_test(int8, a0_fp32, tau, confidence, comparisons)

    def interval(self, record: Any, confidence: float = 0.95) -> tuple[float, float]:
        """The accuracy's ``confidence`` interval from a per-image record (here: Wilson's)."""
        return accuracy_interval(record, confidence)

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

    def fp32_scope(self) -> FP32Scope | None:
        """What this pipeline's quantizations leave in floating point, by name (None: nothing): what
        :meth:`ignored_scope` resolves, and what the run setup gives the latency oracle, so that the
        IRs it times are quantized as the ones scored, fine-tuned and exported."""
        return None

    def ignored_scope(self, ov_model: Any) -> Any:
        """The ``nncf.IgnoredScope`` of ``ov_model`` that this pipeline's quantizations leave in
        floating point: :meth:`fp32_scope` resolved (None: NNCF quantizes all it can)."""
        scope = self.fp32_scope()
        return None if scope is None else scope.ignored_scope(ov_model)

    def key(self) -> dict[str, Any]:
        """This pipeline's own settings that change its numbers, added to the oracle's cache key
        (none by default, so the keys of a default pipeline stay as they were)."""
        return {}

    def quantize(self, oracle: AccuracyOracle, ov_model: Any, calibration: list[np.ndarray]) -> Any:
        """NNCF post-training quantization of ``ov_model`` on ``calibration`` (:func:`quantize_int8`),
        :meth:`ignored_scope` left in floating point: what the search scores and the finalists export."""
        return quantize_int8(ov_model, calibration, ignored_scope=self.ignored_scope(ov_model))

    def quantize_with_accuracy_control(self, oracle: AccuracyOracle, ov_model: Any, calibration: list[np.ndarray],
                                       max_drop: float) -> Any:
        """The INT8 ``ov.Model`` of NNCF's accuracy-controlled quantization, judged on the
        oracle's evaluation images."""
        raise NotImplementedError(f"accuracy-controlled quantization is not implemented for {oracle.task!r} "
                                  f"(finalists.quantization=ptq)")


class ClassificationPipeline(TaskPipeline):
    """Top-1 (see the module docstring): seeded training subsets for BN recalibration and INT8
    calibration, batched evaluation."""

    metrics = {"top1": "top-1"}
    output_names = ("logits",)

    def recalibrate(self, oracle: AccuracyOracle, model: nn.Module) -> nn.Module:
        if oracle.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if oracle.recal_images > 0:
            batches = oracle.data.recal_batches(oracle.recal_images, RECAL_SEED, oracle.batch_size)
            recalibrate_bn(model, batches, oracle.channels_last)
        return model.eval()

    def fp32_scores(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> dict[str, float]:
        return self.fp32_eval(oracle, model, count)[0]

    def fp32_eval(self, oracle: AccuracyOracle, model: nn.Module, count: int) -> tuple[dict[str, float], np.ndarray]:
        images, labels = oracle.data.eval_images(oracle.split, count)
        correct = torch_correct(model, oracle.data.batches(images, oracle.batch_size), labels, oracle.channels_last)
        return {"top1": float(correct.mean())}, correct

    def calibration(self, oracle: AccuracyOracle, count: int) -> list[np.ndarray]:
        images = oracle.data.train_subset(count, CALIB_SEED)
        return [x.numpy() for x in oracle.data.batches(images, oracle.calib_batch_size)]

    def convert(self, oracle: AccuracyOracle, model: nn.Module) -> Any:
        return convert_to_openvino(model, oracle.data.resolution)

    def compile(self, oracle: AccuracyOracle, ov_model: Any) -> Any:
        return compile_cpu(ov_model, oracle.batch_size, oracle.data.resolution, oracle.inference_precision,
                           oracle.threads)

    def int8_scores(self, oracle: AccuracyOracle, compiled: Any, count: int) -> dict[str, float]:
        return self.int8_eval(oracle, compiled, count)[0]

    def int8_eval(self, oracle: AccuracyOracle, compiled: Any, count: int) -> tuple[dict[str, float], np.ndarray]:
        images, labels = oracle.data.eval_images(oracle.split, count)
        correct = openvino_correct(compiled, oracle.data.batches(images, oracle.batch_size), labels)
        return {"top1": float(correct.mean())}, correct

    def quantize_with_accuracy_control(self, oracle: AccuracyOracle, ov_model: Any, calibration: list[np.ndarray],
                                       max_drop: float) -> Any:
        images, labels = oracle.data.eval_images(oracle.split, oracle.eval_count)
        validation = [(x.numpy(), labels[i:i + len(x)].numpy())
                      for i, x in zip(range(0, len(images), oracle.batch_size),
                                      oracle.data.batches(images, oracle.batch_size), strict=True)]
        return quantize_int8_with_accuracy_control(ov_model, calibration, validation, dynamic_batch_top1, max_drop)


def dynamic_batch_top1(compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Top-1 of a compiled model with a dynamic batch over (inputs, labels) batches: NNCF's
    validation function for accuracy control (it compiles each variant itself)."""
    correct = seen = 0
    for x, y in items:
        logits = np.asarray(compiled(x)[compiled.output(0)])
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return correct / max(seen, 1)
