"""The measured latency oracle: PyTorch module -> OpenVINO IR (INT8 via NNCF) -> timed in a worker.

Pipeline of :meth:`LatencyOracle.measure` on a cache miss: the IR is built
(:mod:`rlnas.oracles.irbuild`) and saved under ``cache_dir/ir/<key>.xml``, then compiled and timed
by the profile's worker process, interleaved with a reference model so that the result carries a
ratio taken under the same machine conditions. :meth:`LatencyOracle.measure_ir` times an existing
IR as is by the same path (store, lock, worker, reference). Results, failures included, go to the
measurement store. What is timed is the oracle's ``metric`` (:mod:`rlnas.oracles.profiling`):
batch-1 latency, or OpenVINO's throughput mode as time per image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rlnas import machinelock
from rlnas.oracles.device import (
    RELEVANT_FLAGS,
    DeviceProfile,
    host_cpu_flags,
    host_cpu_model,
    kernels_above,
    load_profile,
)
from rlnas.oracles.irbuild import (
    IR_VARIANT,
    PRECISIONS,
    FP32Scope,
    IRBuildError,
    ModelLike,
    QuantizationConfig,
    build_ir,
    build_model,
    check_input_shape,
    check_precision,
    ir_measure_shape,
    scope_identity,
    structural_key,
)
from rlnas.oracles.latency_results import Confirmation, LatencyResult
from rlnas.oracles.profiling import check_metric, classify_layer_times, kernel_totals, metric_config
from rlnas.oracles.ratios import (
    RATIO_METHODS,
    TimingConfig,
    bootstrap_ratio_ci,
    percentile,
    ratio_estimates,
    ratio_rel_error,
    round_p10,
    round_ratios,
)
from rlnas.oracles.store import MeasurementStore, canonical_json
from rlnas.oracles.worker_client import (
    DEFAULT_LOCK_PATH,
    WorkerClient,
    WorkerCrashed,
    WorkerError,
    WorkerTimeout,
)
from rlnas.ovtools import check_ir_files, ir_content_key, ir_inputs, ir_size, library_versions
from rlnas.timing import StageTimer

#: Bump when the timing protocol changes what a number means; old cache entries are then ignored.
PROTOCOL_VERSION = 2  # 2: the confirmation's order alternates for two models too
#: Store kind of latency records.
KIND = "latency"
#: Store kind of N-way confirmation measurements.
CONFIRM_KIND = "confirmation"
#: The build stages' seconds when an IR is reused or measured as is.
_REUSED = {"build": 0.0, "convert": 0.0, "quantize": 0.0, "save": 0.0}


class LatencyOracle:
    """Measured OpenVINO latency (or throughput-mode time per image) of PyTorch models on one
    device profile, cached.

    :param profile: a DeviceProfile or a profile name from conf/device/.
    :param store: a MeasurementStore or its path (default ``cache_dir/measurements.sqlite``).
    :param cache_dir: holds ``ir/`` (IRs, shared by profiles) and the worker log.
    :param reference: the model interleaved with every candidate (a0 by default in the search):
        an nn.Module or a zero-argument callable building one (converted at each candidate's
        shape and precision), or an IR .xml path (used as is, identified by its content; a
        dynamic-shape IR is reshaped to each candidate's shape). None = no reference, no ratio.
    :param reference_key: identity of the reference in cache keys (default: the structural key of a
        Module, ``"ir:" + sha256`` of an IR's files).
    :param timing: rounds, iterations and minimum times of the timing protocol.
    :param ratio_method: which of :data:`RATIO_METHODS` ``LatencyResult.ratio`` reports.
    :param timeout_s: per worker request (compile + timing); the worker is killed past it.
    :param lock_path: machine-wide lock held while timing (None = no lock).
    :param retry_failed: re-measure models whose stored result is a failure.
    :param check_host: refuse a profile this host cannot run (off where another machine times).
    :param metric: what is timed (:data:`~rlnas.oracles.profiling.METRICS`): ``latency`` (single
        images, one stream) or ``throughput`` (OpenVINO's throughput mode on the profile's
        threads, as time per image); either way a ratio is candidate / reference time, lower is
        faster. Part of the cache keys except for ``latency`` (whose keys predate the choice).
    :param fp32_scope: what every INT8 IR it builds (candidates and the reference) leaves in floating
        point (:class:`~rlnas.oracles.irbuild.FP32Scope`: the accuracy pipeline's, e.g. a detector's heads
        kept in FP32, so that the IR timed is quantized as the one scored); None: NNCF quantizes all
        it can. Part of the INT8 cache keys and IR paths only when given (the others predate it).
    """

    def __init__(self, profile: DeviceProfile | str, store: MeasurementStore | str | Path | None = None,
                 cache_dir: str | Path = "cache", reference: Any = None, reference_key: str | None = None,
                 timing: TimingConfig | None = None, quantization: QuantizationConfig | None = None,
                 ratio_method: str = "median_round_p10", timeout_s: float = 600.0,
                 lock_path: str | None = DEFAULT_LOCK_PATH, retry_failed: bool = False,
                 check_host: bool = True, metric: str = "latency",
                 fp32_scope: FP32Scope | None = None) -> None:
        self.metric = check_metric(metric)
        if isinstance(profile, str):
            profile = load_profile(profile, check_host=check_host)
        self.profile = profile.validate() if check_host else profile
        self.cache_dir = Path(cache_dir)
        if store is None:
            store = self.cache_dir / "measurements.sqlite"
        self.store = store if isinstance(store, MeasurementStore) else MeasurementStore(store)
        if ratio_method not in RATIO_METHODS:
            raise ValueError(f"ratio_method {ratio_method!r} not in {RATIO_METHODS}")
        self.timing = timing or TimingConfig()
        self.quantization = quantization or QuantizationConfig()
        self.fp32_scope = fp32_scope
        self.ratio_method = ratio_method
        self.timeout_s = timeout_s
        self.lock_path = lock_path
        self.retry_failed = retry_failed
        self.versions = library_versions()
        self._reference = reference
        self._reference_id = self._identify_reference(reference, reference_key)
        self.worker = WorkerClient(self.profile.env(), log_path=self.cache_dir / f"worker-{self.profile.name}.log")

    # ------------------------------------------------------------------ public API

    def measure(self, model: ModelLike, input_shape: Sequence[int], precision: str = "int8",
                model_key: str | None = None, calibration: Iterable | None = None,
                force: bool = False, retry_failed: bool | None = None) -> LatencyResult:
        """Latency (the oracle's metric) of ``model`` at ``input_shape``; a stored result is
        returned unless ``force``.

        ``model`` may be a zero-argument callable returning the module: it is only called when
        the IR must be built. A model that fails to convert, quantize, compile or run gives a
        failed result (stored, so it is not retried unless ``retry_failed``); bad arguments
        (shape, precision) raise ValueError.
        """
        shape = check_input_shape(input_shape)
        check_precision(precision)
        hint = self._hint(precision)
        if model_key is None:
            model = build_model(model)
            model_key = structural_key(model)
        return self._measure_cached(model_key, shape, precision, hint, force, retry_failed,
                                    lambda: self.prepare_ir(model, model_key, shape, precision, calibration))

    def measure_ir(self, xml_path: str | os.PathLike, input_shape: Sequence[int] | None = None,
                   precision: str = "int8", model_key: str | None = None, force: bool = False,
                   retry_failed: bool | None = None) -> LatencyResult:
        """Latency of an existing OpenVINO IR, timed as is with the protocol of :meth:`measure`.

        ``input_shape`` defaults to the IR's static input shape; an IR with a dynamic input needs
        it (the worker reshapes the IR to it), and a given shape must be compatible with the IR's.
        ``precision`` is not applied to the IR: it labels the record and picks the inference
        precision hint (``fp32`` -> f32, ``bf16`` -> bf16, else the profile's). ``model_key``
        defaults to ``"ir:" + sha256`` of the .xml and .bin contents, so an edited IR is measured
        anew; it shares the store with :meth:`measure`'s keys. The IR must have one input.

        Raised before anything is stored or timed: FileNotFoundError when the .xml or the .bin
        beside it is missing, OSError when they cannot be read, ValueError when the path is not a
        .xml, OpenVINO cannot read the IR, its input does not fit the (1, C, H, W) single-image
        contract or ``input_shape``, or the precision is invalid. An IR that reads but fails to
        compile or run gives a failed result, stored like :meth:`measure`'s.
        """
        check_precision(precision)
        hint = self._hint(precision)
        xml = check_ir_files(xml_path)
        shape = ir_measure_shape(xml, ir_inputs(xml), input_shape)
        if model_key is None:
            model_key = ir_content_key(xml)
        return self._measure_cached(model_key, shape, precision, hint, force, retry_failed,
                                    lambda: (xml, dict(_REUSED), True))

    def confirm(self, irs: dict[str, str | os.PathLike], reference: str, timing: TimingConfig | None = None,
                precision: str = "int8", force: bool = False, repeat: int = 0,
                metric: str | None = None) -> Confirmation:
        """Time every IR of ``irs`` (name -> .xml, static single-input IRs) in the same
        interleaved rounds, with ratios to ``irs[reference]``: the confirmation measurement of
        finalists (more rounds than the search: pass a longer ``timing``), in ``metric`` (default:
        the oracle's, so finalists are confirmed in the search's metric). Cached by
        :meth:`confirm_key`: the IRs' contents, the profile, the timing, the metric and ``repeat``
        (the pass number: passes 1, 2, ... are new measurements of the same IRs); raises
        WorkerError & co. when timing fails."""
        if reference not in irs:
            raise ValueError(f"reference {reference!r} is not among the IRs {sorted(irs)}")
        timing = timing or self.timing
        metric = check_metric(metric or self.metric)
        xmls = {name: check_ir_files(path) for name, path in irs.items()}
        shapes = {name: list(ir_measure_shape(xml, ir_inputs(xml), None)) for name, xml in xmls.items()}
        key = self.confirm_key(xmls, shapes, reference, timing, precision, repeat, metric)
        with self.store.claim(CONFIRM_KIND, key):  # another process confirming the same IRs: wait, then read
            record = None if force else self.store.get(CONFIRM_KIND, key)
            if record is not None:
                return dataclasses.replace(Confirmation.from_dict(record), cached=True)
            result = self._confirm_new(xmls, shapes, reference, timing, precision, metric)
            self.store.put(CONFIRM_KIND, key, result.to_dict())
            return result

    def confirm_key(self, xmls: dict[str, Path], shapes: dict[str, list[int]], reference: str, timing: TimingConfig,
                    precision: str, repeat: int = 0, metric: str = "latency") -> dict[str, Any]:
        """Everything that changes the numbers of one confirmation (a latency one's key carries no
        metric: it predates the choice)."""
        return {"models": {name: ir_content_key(xml) for name, xml in xmls.items()}, "reference": reference,
                "shapes": shapes, "precision": check_precision(precision), "profile": self.profile.key(),
                "cpu": self.timing_cpu(), "openvino": self.versions["openvino"], "protocol": PROTOCOL_VERSION,
                "timing": asdict(timing), **({"repeat": repeat} if repeat else {}), **_metric_entry(metric)}

    def _confirm_new(self, xmls: dict[str, Path], shapes: dict[str, list[int]], reference: str,
                     timing: TimingConfig, precision: str, metric: str) -> Confirmation:
        config = metric_config(self.profile.compile_config(self._hint(precision)), metric)
        order = [reference] + [name for name in xmls if name != reference]
        msg = {"op": "confirm", "timing": asdict(timing), "lock_path": self.lock_path, "mode": metric,
               "models": {name: {"path": str(xmls[name]), "config": config, "shape": shapes[name]} for name in order}}
        timer = StageTimer()
        reply = self.worker.request(msg, max(self.timeout_s, 2 * timing.max_time_s + 60 * len(order)))
        rounds = reply["rounds"]
        return Confirmation(
            reference=reference, rounds=len(rounds[reference]), profile=self.profile.name, metric=metric,
            latency_ms={n: statistics.median(t for r in rounds[n] for t in r) for n in order},
            ratio={n: float(np.median(round_ratios(rounds[n], rounds[reference]))) for n in order},
            ratio_ci={n: bootstrap_ratio_ci(rounds[n], rounds[reference]) for n in order},
            kernels=reply["kernels"], inference_precision=reply["inference_precision"],
            above_cap={n: self._above_cap(k) for n, k in reply.get("layer_kernels", {}).items()},
            streams=reply.get("streams", {}), infer_requests=reply.get("infer_requests", {}),
            orders=reply["orders"], round_p10={n: round_p10(rounds[n]) for n in order},
            timed_from=reply.get("timed_from"), timed_to=reply.get("timed_to"),
            stage_seconds={"compile": reply["compile_s"], "measure": reply["measure_s"],
                           "lock_wait": reply["lock_wait_s"], "total": timer.total()})

    def layer_times(self, xml_path: str | os.PathLike, iters: int = 200, precision: str = "int8") -> dict[str, float]:
        """Mean per-inference time (ms) of an IR's layers on this profile by layer class, from
        OpenVINO's per-layer performance counters: ``stem`` (the first convolution), ``conv1x1``,
        ``conv3x3`` (and other k x k), ``grouped`` (grouped / depthwise), ``fc``, ``other`` (pooling,
        eltwise, reorders, quantize/dequantize...). Timed under the machine-wide lock."""
        reply = self._perf_counters(xml_path, iters, precision)
        return classify_layer_times(reply["nodes"], reply["layers"])

    def kernel_times(self, xml_path: str | os.PathLike, iters: int = 200, precision: str = "int8") -> dict[str, float]:
        """Mean per-inference time (ms) of an IR on this profile by ``<node type>:<kernel>``
        (e.g. ``Convolution:jit_avx2_I8``), from OpenVINO's per-layer performance counters: how
        long ran at which ISA. The node types are the counters' (``ReduceMean``), which may be
        finer than ``layer_kernels``' runtime layer types (``Reduce``). Timed under the
        machine-wide lock."""
        return kernel_totals(self._perf_counters(xml_path, iters, precision)["nodes"])

    def _above_cap(self, layer_kernels: dict[str, int]) -> list[str]:
        """What ran above the profile's cap; nothing for an uncapped profile (the ISA of whichever
        machine timed it, which on Ray is not this one)."""
        return kernels_above(layer_kernels, self.profile.isa) if self.profile.isa else []

    def _perf_counters(self, xml_path: str | os.PathLike, iters: int, precision: str) -> dict[str, Any]:
        xml = check_ir_files(xml_path)
        msg = {"op": "perf", "path": str(xml), "config": self.profile.compile_config(self._hint(precision)),
               "iters": iters}
        with machinelock.exclusive(self.lock_path):
            return self.worker.request(msg, self.timeout_s)

    def cache_key(self, model_key: str, input_shape: Sequence[int], precision: str) -> dict[str, Any]:
        """Everything that changes the number of one measurement (the metric only when it is not
        ``latency``, and the INT8 IRs' ``fp32_scope`` only when there is one: the other keys predate
        them)."""
        return {
            "model": model_key, "input_shape": list(check_input_shape(input_shape)),
            "precision": check_precision(precision), "profile": self.profile.key(), "cpu": self.timing_cpu(),
            "openvino": self.versions["openvino"], "nncf": self.versions["nncf"],
            "protocol": PROTOCOL_VERSION, "reference": self._reference_id, **_metric_entry(self.metric),
            **scope_identity(self.fp32_scope, IR_VARIANT[check_precision(precision)]),
        }

    def ir_path(self, model_key: str, input_shape: Sequence[int], precision: str) -> Path:
        """Where the IR of (model, shape, precision) is cached; it does not depend on the profile."""
        variant = IR_VARIANT[check_precision(precision)]
        ident = {"model": model_key, "input_shape": list(check_input_shape(input_shape)), "variant": variant,
                 "openvino": self.versions["openvino"], "ir_format": 1}
        if variant == "int8":
            ident["nncf"] = self.versions["nncf"]
            ident["target_device"] = self.quantization.target_device
            ident.update(scope_identity(self.fp32_scope, variant))
        digest = hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:24]
        return self.cache_dir / "ir" / f"{variant}-{digest}.xml"

    def prepare_ir(self, model: ModelLike, model_key: str, input_shape: Sequence[int], precision: str,
                   calibration: Iterable | None = None) -> tuple[Path, dict[str, float], bool]:
        """Build (or reuse) the IR: returns its path, stage seconds and whether it was reused."""
        path = self.ir_path(model_key, input_shape, precision)
        if path.is_file() and path.with_suffix(".bin").is_file():
            return path, dict(_REUSED), True
        with machinelock.shared(self.lock_path):  # conversion and NNCF: never beside a timing run
            stages = build_ir(model, check_input_shape(input_shape), IR_VARIANT[precision], path, calibration,
                              self.quantization, self.fp32_scope)
        return path, stages, False

    def timing_cpu(self) -> str:
        """The CPU model of the machine that times (part of every cache key): this one."""
        return host_cpu_model()

    def stored_key(self, key: dict[str, Any], result: LatencyResult) -> dict[str, Any]:
        """The key a new result is stored under: the one it was looked up by."""
        return key

    def host(self, reply: dict[str, Any] | None = None) -> dict[str, Any]:
        """The machine that times: this one (CPU model, kernel-selecting flags, host name)."""
        flags = host_cpu_flags()
        return {"cpu": host_cpu_model(), "flags": sorted(f for f in RELEVANT_FLAGS if f in flags),
                "hostname": socket.gethostname()}

    def close(self) -> None:
        """Stop the worker process."""
        self.worker.close()

    def __enter__(self) -> LatencyOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _hint(self, precision: str) -> str:
        if precision == "fp32":
            return "f32"
        if precision == "bf16":
            if not self.profile.supports("bf16"):
                raise ValueError(f"profile {self.profile.name!r} (ISA {self.profile.effective_isa()}) cannot run "
                                 f"bf16; precisions it can run: {[p for p in PRECISIONS if p != 'bf16']}")
            return "bf16"
        return self.profile.inference_precision

    def _identify_reference(self, reference: Any, reference_key: str | None) -> dict[str, Any] | None:
        if reference is None:
            return None
        if isinstance(reference, (str, os.PathLike)):
            xml = check_ir_files(reference, what="reference IR")
            ir_inputs(xml, what="reference IR")  # fail now, not at every measurement, if unreadable
            self._reference = xml
            return {"ir": reference_key or ir_content_key(xml)}
        return {"model": reference_key or structural_key(build_model(reference))}

    def _reference_ir(self, shape: tuple[int, ...], precision: str) -> Path | None:
        if self._reference_id is None:
            return None
        if "ir" in self._reference_id:
            return Path(self._reference)
        path, _, _ = self.prepare_ir(self._reference, self._reference_id["model"], shape, precision)
        return path

    def _lookup(self, key: dict[str, Any], retry_failed: bool) -> LatencyResult | None:
        record = self.store.get(KIND, key)
        if record is None:
            return None
        result = LatencyResult.from_dict(record)
        if not result.ok and retry_failed:
            return None
        result.cached = True
        if result.ok and result.ratio_estimates:
            result.ratio = result.ratio_estimates.get(self.ratio_method, result.ratio)
            result.ratio_method = self.ratio_method
        return result

    def _measure_cached(self, model_key: str, shape: tuple[int, ...], precision: str, hint: str, force: bool,
                        retry_failed: bool | None, prepare: Callable[[], tuple[Path, dict[str, float], bool]],
                        ) -> LatencyResult:
        """The stored result for (model_key, shape, precision) unless ``force`` (or a failure to
        retry); else ``prepare()`` gives the IR, which is timed, and the result is stored."""
        key = self.cache_key(model_key, shape, precision)
        retry = self.retry_failed if retry_failed is None else retry_failed
        with self.store.claim(KIND, key):  # another process measuring this key: wait, then read its record
            if not force:
                hit = self._lookup(key, retry)
                if hit is not None:
                    return hit
            result = self._measure_new(prepare, model_key, shape, precision, hint)
            if not result.transient:
                self.store.put(KIND, self.stored_key(key, result), result.to_dict())
            return result

    def _measure_new(self, prepare: Callable[[], tuple[Path, dict[str, float], bool]], model_key: str,
                     shape: tuple[int, ...], precision: str, hint: str) -> LatencyResult:
        base = LatencyResult(status="failed", precision=precision, metric=self.metric, isa=self.profile.effective_isa(),
                             versions=dict(self.versions, protocol=str(PROTOCOL_VERSION)), model_key=model_key,
                             input_shape=shape, profile=self.profile.name, measured_at=time.time())
        timer = StageTimer()
        try:
            ir, stages, reused = prepare()
        except IRBuildError as err:
            base.reason, base.stage_seconds = str(err), err.stage_seconds
            return base
        base.ir_path, base.ir_size_bytes, base.ir_reused = str(ir), ir_size(ir), reused
        with timer("reference"):
            ref_ir = self._reference_ir(shape, precision)
        base.stage_seconds = {**stages, "reference": timer.seconds["reference"]}
        config, dims = metric_config(self.profile.compile_config(hint), self.metric), list(shape)
        # "shape": the worker reshapes an IR with a dynamic input to it (static IRs are run as is)
        msg = {"op": "measure", "cand": {"path": str(ir), "config": config, "shape": dims},
               "ref": {"path": str(ref_ir), "config": config, "shape": dims} if ref_ir else None,
               "timing": asdict(self.timing), "lock_path": self.lock_path, "mode": self.metric}
        try:
            reply = self.worker.request(msg, self.timeout_s)
        except (WorkerError, WorkerCrashed, WorkerTimeout) as err:
            base.reason = f"{type(err).__name__}: {err}"
            base.transient = bool(getattr(err, "transient", False))
            base.stage_seconds["total"] = timer.total()
            return base
        self._fill(base, reply)
        base.stage_seconds["total"] = timer.total()
        return base

    def _fill(self, result: LatencyResult, reply: dict[str, Any]) -> None:
        cand = [t for r in reply["cand_rounds"] for t in r]
        result.status = "ok"
        result.latency_ms = statistics.median(cand)
        result.p10_ms, result.p90_ms = percentile(cand, 10), percentile(cand, 90)
        result.iterations, result.rounds = len(cand), len(reply["cand_rounds"])
        result.inference_precision = reply["inference_precision"]
        result.streams, result.infer_requests = reply.get("streams"), reply.get("infer_requests")
        result.kernels = reply["kernels"]
        result.layer_kernels = reply.get("layer_kernels", {})
        result.above_cap = self._above_cap(result.layer_kernels)
        result.stage_seconds.update(compile=reply["compile_s"], measure=reply["measure_s"],
                                    lock_wait=reply["lock_wait_s"])
        result.timed_from, result.timed_to = reply.get("timed_from"), reply.get("timed_to")
        result.versions["openvino_runtime"] = self.worker.hello.get("openvino", "")
        result.host = self.host(reply)
        if reply["ref_rounds"]:
            ref = [t for r in reply["ref_rounds"] for t in r]
            result.ref_latency_ms, result.ref_p10_ms = statistics.median(ref), percentile(ref, 10)
            result.ratio_estimates = ratio_estimates(reply["cand_rounds"], reply["ref_rounds"])
            rel_error = ratio_rel_error(reply["cand_rounds"], reply["ref_rounds"])
            result.ratio_rel_error = rel_error if math.isfinite(rel_error) else None
            result.ratio, result.ratio_method = result.ratio_estimates[self.ratio_method], self.ratio_method


def _metric_entry(metric: str) -> dict[str, str]:
    """The metric's part of a cache key: nothing for ``latency`` (its keys predate the choice)."""
    return {} if metric == "latency" else {"metric": metric}
