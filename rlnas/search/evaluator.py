"""The one seam between the search and the oracles: ``Evaluator.evaluate(arch) -> Measurement``.

Every agent sees candidates only through an :class:`Evaluator`, so the budget (unique measured
architectures), deduplication, failure handling, logging and resume live in one place and all
agents are compared on equal terms. Every number comes from the oracles (which cache in the
measurement store); nothing is predicted.

Budget accounting: the baseline a0 is measured once per run and never counts; each distinct
*network* asked for counts once, whether the oracles measured it now or returned a cached
record, and whether it succeeded or failed. Two architectures that build the same layers (the
family's ``network_key``, e.g. two expand ratios rounding to the same channel count) are one
network: the second is answered from the first's measurement and costs nothing, and every
architecture stays reachable. Asking again for an architecture of this run costs nothing.

Parallel evaluations: with ``parallelism > 1`` (the Ray backend), :meth:`Evaluator.submit` starts
a measurement without waiting and :meth:`Evaluator.evaluate_many` measures a batch concurrently;
networks in flight count against the budget, so it is never overshot (a proposal beyond it is
not measured), and asking for a network in flight waits for it instead of measuring it twice.
The run log records measurements as they complete.

Resume: with ``history_path`` every measurement is appended to a run-local JSONL file as soon as
it is made; a new Evaluator on the same file starts with that history (and its budget use), so a
run killed at any moment loses at most the measurement in flight -- which the oracles' store
still has if it completed, so asking again is a cache hit, not a new measurement. Measuring
never changes the global RNG states, so a seeded agent proposes the same architectures whether
its measurements are fresh, cached or replayed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from rlnas.arch import Arch
from rlnas.search.history import append_record, load_history
from rlnas.search.measurement import Measurement

log = logging.getLogger(__name__)


def accuracy_target(tau: float, a0_fp32: float | None, baseline_fp32: float) -> float:
    """``tau * Acc_FP32(a0)``: the user's a0 as deployed when given, else the maximal subnet's."""
    return float(tau) * float(a0_fp32 if a0_fp32 is not None else baseline_fp32)


class BudgetExhausted(RuntimeError):
    """Raised by :meth:`Evaluator.evaluate` for a new architecture once the budget is used up."""


@dataclass(frozen=True)
class NetworkBuilder:
    """What the evaluator hands the latency oracle: the candidate's network, built (extracted
    from the supernet) only when called -- the measured oracle calls it on a cache miss, a
    surrogate reads ``arch`` instead."""

    supernet: nn.Module
    arch: Arch

    def __call__(self) -> nn.Module:
        return self.supernet.extract(self.arch).eval()


class EvaluationLogger(Protocol):
    """Called by the evaluator after each new unique measurement (and once for the baseline)."""

    def on_measurement(self, evaluator: Evaluator, m: Measurement) -> None: ...


@dataclass(frozen=True)
class EvaluatorStats:
    """What an evaluator has answered so far (:attr:`Evaluator.stats`, a snapshot computed from its
    recorded measurements on every read: nothing here is counted apart from them but ``repeats``)."""

    unique: int = 0  # networks measured this run (the history; a resumed log included)
    repeats: int = 0  # asks for an architecture this run had already answered (free)
    duplicates: int = 0  # new architectures building a network this run had measured (free)
    oracle_cache_hits: int = 0  # new to this run, but both oracles answered from the store
    failures: int = 0
    violations: int = 0  # measured fine but infeasible

    @classmethod
    def of(cls, history: Sequence[Measurement], duplicates: int, repeats: int) -> EvaluatorStats:
        """The counts of ``history`` (the unique measurements), with the free answers given."""
        return cls(unique=len(history), repeats=repeats, duplicates=duplicates,
                   oracle_cache_hits=sum(m.cached for m in history), failures=sum(not m.ok for m in history),
                   violations=sum(m.ok and not m.feasible for m in history))


class Evaluator:
    """Measure architectures of one supernet with a latency and an accuracy oracle.

    :param supernet: a :class:`~rlnas.spaces.base.Supernet`; its ``space`` bounds the search and
        ``extract(arch)`` gives the plain module the latency oracle converts.
    :param latency_oracle: ``measure(model, input_shape, precision="int8", model_key=...)``;
        its reference must be a0 so that ``ratio`` is ``Lat(a) / Lat(a0)``.
    :param accuracy_oracle: ``evaluate(arch) -> AccuracyResult``.
    :param input_shape: static input shape ``(1, C, H, W)`` for latency and MAC counting.
    :param tau: accuracy constraint: feasible iff ``acc_int8 >= tau * acc_fp32(a0)``.
    :param budget: number of unique architectures this run may measure (None: unlimited).
    :param logger: one or more :class:`EvaluationLogger` (TensorBoard, progress bar...).
    :param history_path: run-local JSONL log; existing records are loaded (resume).
    :param context: identifies the setup (model, dataset, device...); a history written with a
        different context is refused instead of silently mixed in.
    :param model_id: identifies the network beyond its architecture (family kwargs such as the
        stem, number of classes) in latency cache keys; None: the architecture JSON alone.
    :param reference: a0's accuracy as deployed (the user's model, FP32 and INT8 on the same
        images as the candidates); the constraint is ``tau * reference.acc_fp32``. None: the
        supernet's maximal subnet (:attr:`baseline`) is the reference.
    :param parallelism: measurements in flight at once (:meth:`submit`); 1 measures in the
        calling thread. Above 1 the oracles are called from several threads, which the Ray
        backend's support (the measured local oracles do not: they share one supernet and one
        timing worker); the global RNGs are then not restored around measurements.
    """

    def __init__(
        self,
        supernet: nn.Module,
        latency_oracle: Any,
        accuracy_oracle: Any,
        input_shape: tuple[int, ...],
        tau: float = 0.99,
        budget: int | None = None,
        logger: EvaluationLogger | Iterable[EvaluationLogger] | None = None,
        history_path: str | os.PathLike | None = None,
        context: dict[str, Any] | None = None,
        model_id: str | None = None,
        reference: Any = None,
        parallelism: int = 1,
    ) -> None:
        self.supernet = supernet
        self.space = supernet.space
        self.latency_oracle = latency_oracle
        self.accuracy_oracle = accuracy_oracle
        self.input_shape = tuple(int(s) for s in input_shape)
        self.tau = float(tau)
        self.budget = None if budget is None else int(budget)
        self.loggers: list[EvaluationLogger] = _as_list(logger)
        self.history_path = Path(history_path) if history_path else None
        self.model_id = model_id
        self.reference = reference
        if reference is not None and _num(getattr(reference, "acc_fp32", None)) is None:
            raise ValueError("reference (a0's accuracy) has no FP32 accuracy")
        self.context = {"family": self.space.family, "input_shape": list(self.input_shape),
                        "tau": self.tau, **(context or {})}
        self._repeats = 0  # answers from _seen: an ask, not a measurement, so the one count kept
        self._baseline: Measurement | None = None
        self._seen: dict[Arch, Measurement] = {}
        self._networks: dict[str, Measurement] = {}
        self.history: list[Measurement] = []
        self.parallelism = max(1, int(parallelism))
        self._pending: dict[str, Future[Measurement]] = {}  # network key -> measurement in flight
        self._lock = threading.RLock()
        self._generation = 0  # bumped by close(cancel=True): measurements of an older one are not results
        self._pool: ThreadPoolExecutor | None = None
        if self.history_path and self.history_path.exists():
            self._load_history(self.history_path)

    # -- public API -----------------------------------------------------------------------

    @property
    def a0(self) -> Arch:
        return self.space.max_arch()

    @property
    def baseline(self) -> Measurement:
        """Measurement of a0 (the original model); measured on first use, never budgeted."""
        if self._baseline is None:
            with preserved_rng():
                m = self._measure(self.a0, target=None)
            if not m.ok:
                raise RuntimeError(f"cannot measure the baseline a0 {self.a0.short()}: {m.reason}")
            self._baseline = m
            self._networks.setdefault(self.network_key(m.arch), m)
            self._append_log("baseline", m)
            self._notify(m)
        return self._baseline

    @property
    def target_accuracy(self) -> float:
        """The INT8 accuracy a candidate must reach (:func:`accuracy_target`)."""
        if self.reference is not None:
            return accuracy_target(self.tau, self.reference.acc_fp32, float("nan"))
        return accuracy_target(self.tau, None, self.baseline.acc_fp32)

    @property
    def latency_metric(self) -> str:
        """What the latency ratios time: the latency oracle's metric (batch-1 latency for an
        oracle that names none, e.g. the surrogate)."""
        return getattr(self.latency_oracle, "metric", "latency")

    @property
    def unique_evaluations(self) -> int:
        return len(self.history)

    @property
    def stats(self) -> EvaluatorStats:
        """Counts of this run's answers, from the recorded measurements: ``_seen`` holds every
        architecture answered, i.e. the history's plus the duplicates answered from them."""
        with self._lock:
            return EvaluatorStats.of(self.history, duplicates=len(self._seen) - len(self.history),
                                     repeats=self._repeats)

    @property
    def budget_exhausted(self) -> bool:
        return self.budget is not None and self.unique_evaluations >= self.budget

    @property
    def in_flight(self) -> int:
        """Measurements started by :meth:`submit` and not finished."""
        return len(self._pending)

    @property
    def can_submit(self) -> bool:
        """Whether a new network may still be measured: the budget minus the networks measured
        and in flight is positive."""
        return self.budget is None or self.unique_evaluations + self.in_flight < self.budget

    def evaluate(self, arch: Arch) -> Measurement:
        """Measure ``arch`` (or return this run's earlier measurement of it).

        Raises :class:`~rlnas.arch.InvalidArchError` for an architecture outside the space and
        :class:`BudgetExhausted` for a new architecture once the budget is used up. An oracle
        failure is not raised: it comes back as a failed, infeasible Measurement.
        """
        self.space.validate(arch)
        baseline = self.baseline
        with self._lock:
            known = self._known(arch, baseline)
            if known is not None:
                return known
            future = self._submit_new(arch) if self.parallelism > 1 or self._pending else None
        if future is not None:
            return future.result()
        if self.budget_exhausted:
            raise BudgetExhausted(f"budget of {self.budget} unique evaluations is used up")
        target = self.target_accuracy
        with preserved_rng():
            m = self._measure(arch, target=target)
        self._finish(m)
        return m

    def submit(self, arch: Arch) -> Future[Measurement]:
        """Start measuring ``arch`` and return at once; the future gives what :meth:`evaluate`
        would (already done for a known architecture or network). At most ``parallelism``
        measurements run at once, the rest queue. Raises :class:`BudgetExhausted` for a new
        network when the networks measured and in flight fill the budget."""
        self.space.validate(arch)
        baseline = self.baseline
        with self._lock:
            known = self._known(arch, baseline)
            if known is not None:
                return _done(known)
            if self.parallelism > 1 or self._pending:
                return self._submit_new(arch)
        return _done(self.evaluate(arch))  # one at a time: measured here, as evaluate does

    def evaluate_many(self, archs: Sequence[Arch]) -> list[Measurement | None]:
        """Measure ``archs`` concurrently (``parallelism`` at once); results in their order,
        None for the new networks beyond the budget (not measured)."""
        futures: list[Future[Measurement] | None] = []
        for arch in archs:
            try:
                futures.append(self.submit(arch))
            except BudgetExhausted:
                futures.append(None)
        return [f.result() if f is not None else None for f in futures]

    def close(self, cancel: bool = False) -> None:
        """Stop the threads that measure: after the measurements in flight, or (``cancel``, e.g.
        on Ctrl-C) dropping the queued ones and recording none that ends from now on."""
        if self._pool is not None:
            with self._lock:
                self._generation += cancel
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None
            with self._lock:  # cancelled before they started: no longer in flight
                self._pending = {key: f for key, f in self._pending.items() if not f.cancelled()}

    def _known(self, arch: Arch, baseline: Measurement) -> Measurement | None:
        """The answer without a new measurement: a0, this run's measurement of ``arch`` or of the
        same network (free); None when it needs measuring (or is in flight)."""
        if arch == baseline.arch:
            return baseline
        if arch in self._seen:
            self._repeats += 1
            return self._seen[arch]
        key = self.network_key(arch)
        same = self._networks.get(key)
        if same is not None:
            self._seen[arch] = dataclasses.replace(same, arch=arch, cached=True)
            return self._seen[arch]
        return None

    def _submit_new(self, arch: Arch) -> Future[Measurement]:
        key = self.network_key(arch)
        pending = self._pending.get(key)
        if pending is not None and pending.generation == self._generation:  # type: ignore[attr-defined]
            return pending if self._pending_arch(pending) == arch else self._alias(pending, arch)
        if self.budget_exhausted or not self.can_submit:
            raise BudgetExhausted(f"budget of {self.budget} unique evaluations is used up or in flight")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallelism, thread_name_prefix="rlnas-evaluate")
        future = self._pool.submit(self._measure_in_flight, arch, key, self.target_accuracy, self._generation)
        future.arch = arch  # type: ignore[attr-defined]
        future.generation = self._generation  # type: ignore[attr-defined]
        self._pending[key] = future
        return future

    @staticmethod
    def _pending_arch(future: Future[Measurement]) -> Arch:
        return future.arch  # type: ignore[attr-defined]

    def _alias(self, pending: Future[Measurement], arch: Arch) -> Future[Measurement]:
        """A future for ``arch`` answered by the in-flight measurement of the same network."""
        alias: Future[Measurement] = Future()
        alias.arch = arch  # type: ignore[attr-defined]

        def answer(done: Future[Measurement]) -> None:
            try:
                result = dataclasses.replace(done.result(), arch=arch, cached=True)
                with self._lock:  # a measurement a cancel cut short is no result: not kept
                    if pending.generation == self._generation:  # type: ignore[attr-defined]
                        self._seen[arch] = result
                alias.set_result(result)
            except BaseException as exc:  # the waiter must never hang on a failed measurement
                alias.set_exception(exc)

        pending.add_done_callback(answer)
        return alias

    def _measure_in_flight(self, arch: Arch, key: str, target: float, generation: int) -> Measurement:
        try:
            try:
                m = self._measure(arch, target=target)
            except Exception as exc:  # an unexpected error is this candidate's failure
                m = self._fail(Measurement(arch=arch), "evaluator", exc)
            with self._lock:
                if generation == self._generation:  # one cut short by a cancel is not a result
                    self._finish(m)
            return m
        finally:
            with self._lock:
                if getattr(self._pending.get(key), "generation", None) == generation:
                    del self._pending[key]

    def _finish(self, m: Measurement) -> None:
        self._record(m)
        self._append_log("candidate", m)
        self._notify(m)

    def best_feasible(self) -> Measurement | None:
        """The fastest feasible candidate of this run (a0 excluded), or None."""
        feasible = [m for m in self.history if m.feasible]
        return min(feasible, key=lambda m: m.latency_ratio) if feasible else None

    def add_logger(self, logger: EvaluationLogger) -> None:
        self.loggers.append(logger)

    # -- measuring ---------------------------------------------------------------------------

    def network_key(self, arch: Arch) -> str:
        """What identifies the network ``arch`` builds: the family's ``network_key`` (its channel
        plan) where the supernet has one, else the architecture's JSON."""
        key = getattr(self.supernet, "network_key", None)
        return key(arch) if callable(key) else arch.to_json()

    def model_key(self, arch: Arch) -> str:
        """The latency oracle's identity of ``arch``: a hash of the network it builds (so two
        architectures of one network share a record), prefixed by ``model_id`` when set (stem and
        class count change the network but not the architecture JSON)."""
        key = "net:" + hashlib.sha256(self.network_key(arch).encode()).hexdigest()[:24]
        return f"{self.model_id}:{key}" if self.model_id else key

    def _measure(self, arch: Arch, target: float | None) -> Measurement:
        m = Measurement(arch=arch)
        t0 = time.perf_counter()
        try:
            m.params, m.macs = self._profile(arch)
        except Exception as exc:  # an extraction bug is this candidate's failure, not the run's
            return self._fail(m, "extract", exc)
        m.stage_seconds["evaluator/profile"] = time.perf_counter() - t0
        acc = self._call("accuracy", m, lambda: self.accuracy_oracle.evaluate(arch))
        if acc is None:
            return m
        m.acc_fp32, m.acc_int8 = _num(acc.acc_fp32), _num(acc.acc_int8)
        lat = self._call("latency", m, lambda: self.latency_oracle.measure(
            NetworkBuilder(self.supernet, arch), self.input_shape, precision="int8", model_key=self.model_key(arch)))
        if lat is None:
            return m
        m.latency_ms, m.ref_latency_ms = _num(lat.latency_ms), _num(lat.ref_latency_ms)
        m.latency_metric = getattr(lat, "metric", "latency")
        m.latency_ratio = _num(getattr(lat, "ratio", None))
        if m.latency_ratio is None and self._baseline is not None and m.latency_ms:
            m.latency_ratio = m.latency_ms / self._baseline.latency_ms
        if m.latency_ratio is None and target is None and self.reference is None:
            m.latency_ratio = 1.0  # a0 against itself without a reference
        m.ir_path = str(lat.ir_path) if getattr(lat, "ir_path", None) else None
        m.ir_size_bytes = getattr(lat, "ir_size_bytes", None)
        m.cached = bool(getattr(acc, "cached", False) and getattr(lat, "cached", False))
        # the maximal subnet is judged like any candidate when a0 is given, else against itself
        threshold = target if target is not None else (
            self.target_accuracy if self.reference is not None else self.tau * m.acc_fp32)
        m.feasible = m.acc_int8 is not None and m.acc_int8 >= threshold
        return m

    def _profile(self, arch: Arch) -> tuple[int, int]:
        """Parameters and MACs of the built network (the supernet's meta-device counters)."""
        return int(self.supernet.count_params(arch)), int(self.supernet.count_macs(arch, self.input_shape[-1]))

    def _call(self, stage: str, m: Measurement, fn) -> Any | None:
        """Run one oracle; on failure mark ``m`` failed and return None."""
        try:
            result = fn()
        except Exception as exc:
            self._fail(m, stage, exc)
            return None
        for k, v in (getattr(result, "stage_seconds", None) or {}).items():
            m.stage_seconds[f"{stage}/{k}"] = float(v)
        if getattr(result, "status", "ok") != "ok":
            m.status, m.reason = "failed", f"{stage}: {getattr(result, 'reason', '') or 'failed'}"
            m.feasible = False
            log.warning("candidate %s failed in the %s oracle: %s", m.arch.short(), stage, m.reason)
            return None
        return result

    @staticmethod
    def _fail(m: Measurement, stage: str, exc: BaseException) -> Measurement:
        m.status, m.reason, m.feasible = "failed", f"{stage}: {type(exc).__name__}: {exc}", False
        log.warning("candidate %s failed in %s", m.arch.short(), stage, exc_info=exc)
        return m

    # -- bookkeeping -------------------------------------------------------------------------

    def _record(self, m: Measurement) -> None:
        self._seen[m.arch] = m
        self._networks.setdefault(self.network_key(m.arch), m)
        self.history.append(m)

    def _notify(self, m: Measurement) -> None:
        for logger in self.loggers:
            logger.on_measurement(self, m)

    def _append_log(self, kind: str, m: Measurement) -> None:
        if self.history_path is not None:
            append_record(self.history_path, kind, self.context, m)

    def _load_history(self, path: Path) -> None:
        for kind, m in load_history(path, self.context):
            if kind == "baseline":
                self._baseline = m
                self._networks.setdefault(self.network_key(m.arch), m)
            elif m.arch not in self._seen:
                self._record(m)
        log.info("resumed %d measurements from %s", len(self.history), path)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global torch, NumPy and Python RNG states afterwards: oracles draw random
    numbers (tracing inputs...) only on cache misses, and an agent's sampling must not depend on
    whether a measurement was fresh, cached or replayed from the run's log (exact resume)."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _done(m: Measurement) -> Future[Measurement]:
    future: Future[Measurement] = Future()
    future.set_result(m)
    return future


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _as_list(logger: Any) -> list:
    if logger is None:
        return []
    if isinstance(logger, list | tuple):
        return list(logger)
    return [logger]
