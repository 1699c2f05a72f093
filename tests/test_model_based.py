"""Model-based PPO on a real tiny supernet whose ground truth is a known function of the layers
it builds (conftest's synthetic surrogate table): the online surrogate learns it from the run's own
measurements, and the agent spends its budget on networks the model predicts to be good."""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau

from rlnas.oracles.surrogate import Surrogate, SurrogateAccuracyOracle, SurrogateLatencyOracle
from rlnas.search.agents import RandomSearch
from rlnas.search.env import ArchEditEnv
from rlnas.search.evaluator import Evaluator
from rlnas.search.model_based import ModelBasedPPO, ModelWorld, OnlineSurrogate
from rlnas.search.reward import HardReward

RES = 32


def _evaluator(supernet, truth: Surrogate, budget: int) -> Evaluator:
    latency, accuracy = SurrogateLatencyOracle(truth), SurrogateAccuracyOracle(truth)
    return Evaluator(supernet, latency, accuracy, (1, 3, RES, RES), budget=budget,
                     reference=accuracy.evaluate_model(None, "a0"))


def test_online_surrogate_ranks_unseen_networks(supernet, make_table):
    truth = Surrogate(make_table(supernet, n=80), supernet, RES)
    evaluator = _evaluator(supernet, truth, budget=None)
    rng = np.random.default_rng(1)
    archs = list({supernet.network_key(a): a for a in (supernet.space.sample(rng) for _ in range(200))}.values())
    seen, unseen = archs[:30], archs[30:80]
    online = OnlineSurrogate(supernet, RES).fit([evaluator.evaluate(a) for a in seen])
    predicted = [online.predict(a) for a in unseen]
    measured = [evaluator.evaluate(a) for a in unseen]
    assert kendalltau([m.latency_ratio for m in measured], [p[0] for p in predicted])[0] > 0.8
    assert kendalltau([m.acc_int8 for m in measured], [p[1] for p in predicted])[0] > 0.5
    assert all(p[2] >= 0 for p in predicted)


def test_model_world_is_free_and_pessimism_lowers_accuracy(supernet, make_table):
    truth = Surrogate(make_table(supernet), supernet, RES)
    evaluator = _evaluator(supernet, truth, budget=12)
    rng = np.random.default_rng(0)
    evaluator.evaluate_many([supernet.space.sample(rng) for _ in range(12)])
    surrogate = OnlineSurrogate(supernet, RES)
    plain, pessimistic = ModelWorld(evaluator, surrogate), ModelWorld(evaluator, surrogate, kappa=2.0)
    plain.refit(evaluator.history)
    env = ArchEditEnv(plain, HardReward(), max_edits=30, start="best")
    env.reset(seed=0)
    for step in range(30):
        env.step(int(np.flatnonzero(env.action_masks()[:-1])[step % 3]))
    assert plain.unique_evaluations > 1 and evaluator.unique_evaluations == 12  # nothing measured for real
    arch = next(m.arch for m in plain.visited.values())
    assert pessimistic.evaluate(arch).acc_int8 <= plain.evaluate(arch).acc_int8


def test_model_based_ppo_spends_the_budget_on_good_new_networks(supernet, make_table):
    truth = Surrogate(make_table(supernet, n=80), supernet, RES)
    agent = ModelBasedPPO(init_evaluations=8, proposals=4, model_steps=256, n_steps=64, batch_size=32)
    best, rnd = [], []
    for seed in range(2):
        evaluator = _evaluator(supernet, truth, budget=24)
        result = agent.run(evaluator, budget=24, seed=seed, reward=HardReward())
        keys = [supernet.network_key(m.arch) for m in evaluator.history]
        assert evaluator.unique_evaluations == 24 and len(set(keys)) == 24  # each network once
        assert result.best is not None and result.agent_steps >= 256
        best.append(result.best.latency_ratio)
        baseline = _evaluator(supernet, truth, budget=24)
        rnd.append(RandomSearch().run(baseline, budget=24, seed=seed, reward=HardReward()).best.latency_ratio)
    assert np.mean(best) <= np.mean(rnd)
