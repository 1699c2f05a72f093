"""``Evaluator.close(cancel=True)`` (the run's end on Ctrl-C or an error) with measurements in
flight: the queued ones are cancelled, the running ones end without being recorded, and the
measuring threads stop. Real surrogate oracles on the tiny supernet; the latency oracle holds
each candidate's measurement until the test releases it, so the work in flight is known."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rlnas.oracles.surrogate import Surrogate, SurrogateAccuracyOracle, SurrogateLatencyOracle
from rlnas.search.evaluator import Evaluator
from rlnas.search.history import read_history

pytestmark = pytest.mark.timeout(120)  # a measurement that is never released hangs: fail instead
RES = 32


class GatedLatency(SurrogateLatencyOracle):
    """The surrogate, with every measurement after the first (a0's) held until ``release`` is set;
    ``started`` lists the model keys of the measurements that began."""

    def __init__(self, surrogate: Surrogate) -> None:
        super().__init__(surrogate)
        self.release = threading.Event()
        self.started: list[str] = []
        self.calls = 0
        self._changed = threading.Condition()

    def measure(self, model, input_shape, precision="int8", model_key=None):
        with self._changed:
            self.calls += 1
            gated = self.calls > 1
            if gated:
                self.started.append(model_key)
                self._changed.notify_all()
        if gated:
            self.release.wait()
        return super().measure(model, input_shape, precision=precision, model_key=model_key)

    def wait_until_started(self, n: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: len(self.started) >= n)


class Recorder:
    def __init__(self) -> None:
        self.seen: list = []

    def on_measurement(self, evaluator, m) -> None:
        self.seen.append(m.arch)


def distinct_archs(supernet, n: int, seed: int = 7) -> list:
    """``n`` architectures building ``n`` different networks, none of them a0's."""
    rng, archs = np.random.default_rng(seed), []
    keys = {supernet.network_key(supernet.space.max_arch())}
    while len(archs) < n:
        arch = supernet.space.sample(rng)
        if supernet.network_key(arch) not in keys:
            keys.add(supernet.network_key(arch))
            archs.append(arch)
    return archs


def measuring_threads(besides: frozenset = frozenset()) -> set[threading.Thread]:
    """The evaluators' measuring threads alive now, other than ``besides`` (other tests' evaluators)."""
    return {t for t in threading.enumerate() if t.name.startswith("rlnas-evaluate")} - besides


@pytest.fixture(scope="module")
def surrogate(supernet, make_table):
    return Surrogate(make_table(supernet), supernet, RES)


def test_close_with_cancel_drops_queued_work_and_records_nothing_cut_short(supernet, surrogate, tmp_path):
    others = frozenset(measuring_threads())
    accuracy, latency, recorder = SurrogateAccuracyOracle(surrogate), GatedLatency(surrogate), Recorder()
    log = tmp_path / "evaluations.jsonl"
    ev = Evaluator(supernet, latency, accuracy, (1, 3, RES, RES), budget=10, logger=recorder, history_path=log,
                   reference=accuracy.evaluate_model(None, "a0"), parallelism=2)
    baseline = ev.baseline  # measured at once (not held): the gate holds the candidates only
    archs = distinct_archs(supernet, 5)
    futures = [ev.submit(arch) for arch in archs]
    latency.wait_until_started(2)  # two measure (parallelism 2), three wait in the queue
    assert ev.in_flight == 5 and len(latency.started) == 2 and not any(f.done() for f in futures)
    ours = measuring_threads(others)
    assert len(ours) == 2

    ev.close(cancel=True)  # returns at once: it does not wait for the measurements held in flight
    assert [f.cancelled() for f in futures] == [False, False, True, True, True]
    assert not any(f.done() for f in futures[:2])
    latency.release.set()
    cut_short = [f.result() for f in futures[:2]]  # they end, with their numbers ...
    assert [m.arch for m in cut_short] == archs[:2] and all(m.ok and m.latency_ratio > 0 for m in cut_short)
    for thread in ours:
        thread.join()  # the measuring threads stop
    assert not measuring_threads(others)
    assert len(latency.started) == 2 and latency.calls == 1 + 2  # a0, then the two running ones only

    # ... but none is a result of the run: not in its history, its log or its loggers
    assert ev.unique_evaluations == 0 and ev.history == [] and ev.best_feasible() is None
    assert recorder.seen == [baseline.arch]
    assert [kind for kind, _, _ in read_history(log)] == ["baseline"]
    ev.close(cancel=True)  # closing again is a no-op
    # the next run on the same log resumes from the baseline alone: the cut-short networks are measured again
    resumed = Evaluator(supernet, SurrogateLatencyOracle(surrogate), accuracy, (1, 3, RES, RES), budget=10,
                        history_path=log, reference=accuracy.evaluate_model(None, "a0"))
    assert resumed.unique_evaluations == 0 and resumed.baseline.arch == baseline.arch
    again = resumed.evaluate(archs[0])
    assert not again.cached and again.latency_ratio == cut_short[0].latency_ratio
    assert resumed.unique_evaluations == 1


def test_close_without_cancel_waits_for_the_measurements_in_flight(supernet, surrogate, tmp_path):
    """The contrast: a plain close lets every submitted measurement finish and records them all."""
    others = frozenset(measuring_threads())
    accuracy, latency = SurrogateAccuracyOracle(surrogate), GatedLatency(surrogate)
    ev = Evaluator(supernet, latency, accuracy, (1, 3, RES, RES), budget=10, history_path=tmp_path / "e.jsonl",
                   reference=accuracy.evaluate_model(None, "a0"), parallelism=2)
    ev.baseline  # noqa: B018
    archs = distinct_archs(supernet, 4)
    futures = [ev.submit(arch) for arch in archs]
    latency.wait_until_started(2)
    latency.release.set()
    ev.close()
    assert all(f.done() and not f.cancelled() for f in futures) and ev.in_flight == 0
    # all four recorded, in the order they finished (two ran at once)
    assert {m.arch for m in ev.history} == {f.result().arch for f in futures} and ev.unique_evaluations == 4
    assert not measuring_threads(others)  # close() waited for the threads too


def test_cancelled_work_is_no_longer_in_flight(supernet, surrogate):
    accuracy, latency = SurrogateAccuracyOracle(surrogate), GatedLatency(surrogate)
    ev = Evaluator(supernet, latency, accuracy, (1, 3, RES, RES), budget=10,
                   reference=accuracy.evaluate_model(None, "a0"), parallelism=2)
    ev.baseline  # noqa: B018
    archs = distinct_archs(supernet, 3)
    futures = [ev.submit(arch) for arch in archs]
    latency.wait_until_started(2)
    ev.close(cancel=True)
    latency.release.set()
    for future in futures[:2]:
        future.result()
    assert futures[2].cancelled()
    assert ev.in_flight == 0  # measurements started by submit and not finished: none any more
    assert ev.submit(archs[2]) is not futures[2]
