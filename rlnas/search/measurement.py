"""``Measurement``: everything the Evaluator measured about one architecture (a stored result:
one line of a run's log, see :mod:`rlnas.search.history`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlnas.arch import Arch
from rlnas.oracles.store import StoredResult


@dataclass
class Measurement(StoredResult):
    """Everything measured about one architecture (INT8 numbers from OpenVINO on the profile).

    ``latency_ratio`` is ``Lat(a) / Lat(a0)`` with a0 timed alongside by the latency oracle, in
    ``latency_metric`` (:mod:`rlnas.oracles.profiling`: batch-1 latency, or the time per image in
    OpenVINO's throughput mode, when ``latency_ms`` is that time too);
    ``feasible`` is ``acc_int8 >= tau * acc_fp32(a0)``; ``cached`` says both oracles answered
    from the store; ``stage_seconds`` holds the oracles' timings (``accuracy/...``,
    ``latency/...``) and ``evaluator/profile``.
    """

    arch: Arch
    status: str = "ok"
    reason: str = ""
    latency_ms: float | None = None
    ref_latency_ms: float | None = None
    latency_ratio: float | None = None
    latency_metric: str = "latency"
    acc_fp32: float | None = None
    acc_int8: float | None = None
    feasible: bool = False
    params: int | None = None
    macs: int | None = None
    cached: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    ir_path: str | None = None
    ir_size_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "arch": self.arch.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return super().from_dict({**data, "arch": Arch.from_dict(data["arch"])})
