"""What the latency oracle answers: :class:`LatencyResult` (one model timed against the
reference) and :class:`Confirmation` (N models timed in the same interleaved rounds); both are
stored results (:class:`~rlnas.oracles.store.StoredResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlnas.oracles.store import StoredResult


@dataclass
class LatencyResult(StoredResult):
    """One latency measurement (or a failure and its reason) of a model on a device profile.

    ``metric`` says what was timed (:mod:`rlnas.oracles.profiling`): ``latency``, where
    ``latency_ms`` is the median single-image latency, or ``throughput``, where it is the median
    time per image in OpenVINO's throughput mode (1000 / images per second), with ``streams``
    and ``infer_requests`` the plugin's choice (1 and 1 for latency); ``p10_ms``/``p90_ms`` are
    its percentiles.
    ``ratio`` is a robust estimate of candidate/reference latency from interleaved rounds
    (``ratio_estimates`` holds every estimator; ``ratio_method`` says which one ``ratio`` is) and
    ``ref_latency_ms`` the reference's median in those same rounds; ``ratio_rel_error`` is the
    estimated relative standard error of the per-round ratio median. ``inference_precision`` is
    what the compiled model reports, ``kernels`` counts executed primitive types (e.g.
    ``jit_avx2_I8``), ``layer_kernels`` the same per layer type (``Convolution:jit_avx2_I8``) and
    ``above_cap`` those above a capped profile's ISA (OpenVINO's own JIT kernels follow the host's
    ISA, not ``ONEDNN_MAX_CPU_ISA``; a lower bound: ISA-neutral names are never counted).
    ``stage_seconds`` has build, convert, quantize, save (0 when the IR was reused), reference
    (preparing its IR), compile, lock_wait, measure and total. ``timed_from``/``timed_to``: the
    wall clock (``time.time()``, comparable across processes) at the start and end of the timed
    section, both taken by the worker while it held the machine lock alone (None when nothing was
    timed); a cached result keeps those of the measurement that made it.
    """

    status: str
    reason: str = ""
    latency_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    ref_latency_ms: float | None = None
    ref_p10_ms: float | None = None
    ratio: float | None = None
    ratio_method: str | None = None
    ratio_estimates: dict[str, float] = field(default_factory=dict)
    ratio_rel_error: float | None = None
    ir_path: str | None = None
    ir_size_bytes: int | None = None
    precision: str = "int8"
    metric: str = "latency"
    streams: int | None = None
    infer_requests: int | None = None
    inference_precision: str | None = None
    isa: str | None = None
    kernels: dict[str, int] = field(default_factory=dict)
    layer_kernels: dict[str, int] = field(default_factory=dict)
    above_cap: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    ir_reused: bool = False
    model_key: str = ""
    input_shape: tuple[int, ...] = ()
    profile: str = ""
    iterations: int = 0
    rounds: int = 0
    measured_at: float = 0.0
    timed_from: float | None = None
    timed_to: float | None = None
    host: dict[str, Any] = field(default_factory=dict)
    transient: bool = False

    def __post_init__(self) -> None:
        self.input_shape = tuple(self.input_shape)  # JSON round trips give lists

    def int8_kernels(self) -> list[str]:
        """Executed primitive types that run in int8 (``..._I8``/``..._i8``/``..._u8``)."""
        return [k for k in self.kernels if k.lower().endswith(("_i8", "_u8"))]


@dataclass
class Confirmation(StoredResult):
    """N models (e.g. a0 and the finalists) timed in the same interleaved rounds on one profile.

    ``ratio[name]`` is the median over rounds of the per-round ratio of the model's 10th-percentile
    time to the reference's (the search's estimator), ``ratio_ci[name]`` its 95 % bootstrap
    confidence interval over rounds (paired: both times of a ratio come from the same round),
    ``latency_ms`` each model's median time per image in ``metric`` (as :class:`LatencyResult`'s;
    ``streams`` and ``infer_requests`` per model). ``above_cap[name]`` lists the ``<layer type>:<kernel>``
    that ran above a capped profile's ISA (OpenVINO's own JIT kernels follow the host's ISA).
    ``orders`` is the order the models ran in, round by round (:func:`~rlnas.oracles.worker.round_order`);
    ``round_p10[name]`` the model's 10th-percentile time (ms) in each round, from which any two of
    the models compare round by round (:func:`~rlnas.oracles.ratios.median_ci`).
    ``timed_from``/``timed_to``: the wall clock at the start and end of the timed section, under
    the machine lock held alone (as :class:`LatencyResult`'s).
    """

    reference: str
    latency_ms: dict[str, float]
    ratio: dict[str, float]
    ratio_ci: dict[str, list[float]]
    rounds: int
    profile: str
    kernels: dict[str, dict[str, int]] = field(default_factory=dict)
    above_cap: dict[str, list[str]] = field(default_factory=dict)
    inference_precision: dict[str, str] = field(default_factory=dict)
    metric: str = "latency"
    streams: dict[str, int] = field(default_factory=dict)
    infer_requests: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)
    round_p10: dict[str, list[float]] = field(default_factory=dict)
    timed_from: float | None = None
    timed_to: float | None = None
    cached: bool = False
    status: str = "ok"
