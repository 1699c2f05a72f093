"""Parallel evaluations in the Evaluator and the agents that use them, on the surrogate oracles
(thread-safe and instant, with a real tiny supernet); the Ray backend itself is in test_ray.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rlnas.arch import Arch
from rlnas.oracles.surrogate import Surrogate, SurrogateAccuracyOracle, SurrogateLatencyOracle
from rlnas.search.agents import PPOAgent, RandomSearch, RegularizedEvolution
from rlnas.search.evaluator import BudgetExhausted, Evaluator, EvaluatorStats

RES = 32


class SlowLatency(SurrogateLatencyOracle):
    """The surrogate with a measurement that takes time, counting how many run at once.

    With ``gate``, measurements after the first (a0, which the Evaluator measures alone) hold, up
    to ``gate_timeout_s``, until ``gate`` of them run at once; then the gate stays open (also after
    a time-out). An agent that keeps ``gate`` networks in flight reaches it however loaded the
    machine is; one that waits for each result times out once and never does."""

    def __init__(self, surrogate: Surrogate, seconds: float = 0.02, gate: int = 0,
                 gate_timeout_s: float = 10.0) -> None:
        super().__init__(surrogate)
        self.seconds, self.running, self.most, self.calls = seconds, 0, 0, 0
        self.gate, self.gate_timeout_s = gate, gate_timeout_s
        self._lock = threading.Condition()

    def measure(self, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
            self._lock.notify_all()
            waits = self.calls > 1 and self.most < self.gate
            if waits and not self._lock.wait_for(lambda: self.most >= self.gate, timeout=self.gate_timeout_s):
                self.gate = 0  # timed out once: the agent does not keep `gate` in flight; stop waiting
        time.sleep(self.seconds)
        try:
            return super().measure(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def surrogate(supernet, make_table):
    return Surrogate(make_table(supernet), supernet, RES)


def evaluator(supernet, surrogate, parallelism: int, budget: int, history=None, gate: int = 0) -> Evaluator:
    accuracy = SurrogateAccuracyOracle(surrogate)
    return Evaluator(supernet, SlowLatency(surrogate, gate=gate), accuracy, (1, 3, RES, RES), budget=budget,
                     reference=accuracy.evaluate_model(None, "a0"), parallelism=parallelism, history_path=history)


def test_random_search_measures_the_same_networks_in_parallel(supernet, surrogate, tmp_path):
    runs = {}
    for parallelism in (1, 4):
        ev = evaluator(supernet, surrogate, parallelism, budget=20, history=tmp_path / f"p{parallelism}.jsonl",
                       gate=2 if parallelism > 1 else 0)
        RandomSearch().run(ev, budget=20, seed=3)
        assert ev.unique_evaluations == 20 and ev.in_flight == 0
        runs[parallelism] = ev
    assert {m.arch for m in runs[1].history} == {m.arch for m in runs[4].history}
    assert runs[4].latency_oracle.most > 1 and runs[1].latency_oracle.most == 1
    assert runs[4].latency_oracle.calls == 20 + 1  # a0, then never beyond the budget, no network twice
    # the run log holds every measurement: a new evaluator resumes the parallel run in full
    resumed = evaluator(supernet, surrogate, 4, budget=20, history=tmp_path / "p4.jsonl")
    assert resumed.unique_evaluations == 20 and resumed.budget_exhausted


def test_evolution_is_sequential_draw_for_draw_and_asynchronous_in_parallel(supernet, surrogate):
    sequential = [evaluator(supernet, surrogate, 1, budget=25) for _ in range(2)]
    for ev in sequential:
        RegularizedEvolution(population_size=6, sample_size=2).run(ev, budget=25, seed=1)
    assert [m.arch for m in sequential[0].history] == [m.arch for m in sequential[1].history]
    parallel = evaluator(supernet, surrogate, 3, budget=25, gate=3)
    result = RegularizedEvolution(population_size=6, sample_size=2).run(parallel, budget=25, seed=1)
    assert parallel.unique_evaluations == 25 and parallel.latency_oracle.most == 3
    assert parallel.latency_oracle.calls == 25 + 1 and result.best is not None  # a0 + the budget


def test_budget_and_networks_in_flight(supernet, surrogate):
    ev = evaluator(supernet, surrogate, 2, budget=2)
    rng = np.random.default_rng(5)
    archs = []
    while len(archs) < 3:
        arch = supernet.space.sample(rng)
        if all(supernet.network_key(arch) != supernet.network_key(a) for a in [ev.a0, *archs]):
            archs.append(arch)
    first = ev.submit(archs[0])
    assert ev.submit(archs[0]) is first  # asked again while in flight: the same measurement
    ev.submit(archs[1])
    with pytest.raises(BudgetExhausted):  # 2 in flight fill the budget: never overshot
        ev.submit(archs[2])
    results = ev.evaluate_many(archs)
    assert results[2] is None and results[0] is first.result() and ev.unique_evaluations == 2
    assert ev.evaluate(archs[0]) is results[0] and ev.stats.repeats >= 1


def test_stats_are_counts_of_the_recorded_measurements(supernet, surrogate, tmp_path):
    space, top = supernet.space, supernet.space.max_arch()
    twins = [Arch(space.family, top.depths, (0.5,) + top.widths[1:], ((e,) * top.depths[0],) + top.expands[1:])
             for e in (0.25, 0.5)]
    assert supernet.network_key(twins[0]) == supernet.network_key(twins[1]) and twins[0] != twins[1]
    rng, taken = np.random.default_rng(1), {supernet.network_key(top), supernet.network_key(twins[0])}
    other = next(a for a in iter(lambda: space.sample(rng), None) if supernet.network_key(a) not in taken)
    history = tmp_path / "evaluations.jsonl"
    ev = evaluator(supernet, surrogate, 2, budget=5, history=history)
    first, twin, _ = ev.evaluate_many([twins[0], twins[1], other])  # the twin waits for its network
    assert twin.cached and twin.latency_ratio == first.latency_ratio
    assert ev.evaluate(twins[0]) is first and ev.evaluate(twins[1]) is twin  # two repeats
    stats = ev.stats
    assert (stats.unique, stats.duplicates, stats.repeats) == (2, 1, 2)
    assert stats == EvaluatorStats.of(ev.history, duplicates=1, repeats=2)
    assert stats.violations == sum(m.ok and not m.feasible for m in ev.history) and stats.failures == 0
    assert stats.oracle_cache_hits == sum(m.cached for m in ev.history)
    resumed = evaluator(supernet, surrogate, 2, budget=5, history=history)  # the log's measurements count
    assert resumed.stats == EvaluatorStats.of(ev.history, duplicates=0, repeats=0)
    ev.close()


def test_ppo_collects_from_several_envs(supernet, surrogate, tmp_path):
    ev = evaluator(supernet, surrogate, 2, budget=12, gate=2)
    agent = PPOAgent(n_envs=2, n_steps=4, batch_size=8, max_edits=3, checkpoint_freq=100)
    agent.run(ev, budget=12, seed=0, run_dir=tmp_path)
    assert ev.unique_evaluations == 12 and ev.in_flight == 0
    assert ev.latency_oracle.most == 2  # the two envs' steps were measured together
