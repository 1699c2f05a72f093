"""ArchEditEnv: Gymnasium and SB3 env checks, edits, masking vs penalised no-ops, reward shaping,
Evaluator budget/dedup/failure/resume. The oracles here are deterministic stand-ins driven by the
real supernet's MACs (the real oracles run in test_search_e2e.py); everything else is real."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rlnas.arch import Arch, InvalidArchError
from rlnas.search.agents import PPOAgent, RandomSearch, RegularizedEvolution
from rlnas.search.env import ArchEditEnv, Edit, apply_edit, edit_table, valid_actions
from rlnas.search.evaluator import BudgetExhausted, Evaluator
from rlnas.search.reward import HardReward, SoftReward
from rlnas.spaces import create_supernet
from rlnas.spaces.elastic import count_macs

SHAPE = (1, 3, 32, 32)


@dataclass
class FakeLatency:
    status: str = "ok"
    reason: str = ""
    latency_ms: float = 0.0
    ref_latency_ms: float = 0.0
    ratio: float = 1.0
    cached: bool = False
    stage_seconds: dict = field(default_factory=dict)


@dataclass
class FakeAccuracy:
    status: str = "ok"
    reason: str = ""
    acc_fp32: float = 0.0
    acc_int8: float = 0.0
    cached: bool = False
    stage_seconds: dict = field(default_factory=dict)


class FakeOracles:
    """Latency ~ MACs, accuracy drops with MACs; ``fail`` archs fail in the latency oracle."""

    def __init__(self, supernet, fail=()):
        self.supernet, self.fail, self.calls = supernet, set(fail), 0
        self.macs0 = supernet.count_macs(supernet.space.max_arch(), 32)
        probe = Evaluator(supernet, None, None, SHAPE)
        self.fail_keys = {probe.model_key(a) for a in fail}

    def frac(self, arch):
        return self.supernet.count_macs(arch, 32) / self.macs0

    def evaluate(self, arch):
        f = self.frac(arch)
        return FakeAccuracy(acc_fp32=0.80 - 0.1 * (1 - f), acc_int8=0.795 - 0.1 * (1 - f),
                            stage_seconds={"eval": 0.01})

    def measure(self, model, input_shape, precision="int8", model_key=None):
        self.calls += 1
        torch.rand(3), np.random.rand(3)  # like real oracles: global RNG use on cache misses only
        if model_key in self.fail_keys:
            return FakeLatency(status="failed", reason="compile error (fake)")
        f = count_macs(model(), SHAPE) / self.macs0
        return FakeLatency(latency_ms=10 * (0.2 + 0.8 * f), ref_latency_ms=10.0, ratio=0.2 + 0.8 * f)


@pytest.fixture(scope="module")
def supernet():
    return create_supernet("resnet_tiny", num_classes=10, stem="cifar").eval()


def make_evaluator(supernet, budget=None, fail=(), tau=0.99, **kw):
    oracles = FakeOracles(supernet, fail)
    return Evaluator(supernet, oracles, oracles, SHAPE, tau=tau, budget=budget, **kw), oracles


def test_edits_and_masks(supernet):
    space = supernet.space
    table = edit_table(space)
    assert table[-1] is None and len(table) == 6 * space.num_stages + 1
    a0 = space.max_arch()
    mask = valid_actions(space, a0)
    for edit, ok in zip(table[:-1], mask[:-1], strict=True):
        assert ok == (edit.delta < 0), edit  # at a0 only "down" edits exist
    assert mask[-1]
    smaller = apply_edit(space, a0, Edit(0, "depth", -1))
    assert smaller.depths[0] == a0.depths[0] - 1 and len(smaller.expands[0]) == smaller.depths[0]
    assert apply_edit(space, smaller, Edit(0, "depth", 1)) == a0
    narrow = apply_edit(space, a0, Edit(1, "expand", -1))
    assert all(e == space.expand_choices[-2] for e in narrow.expands[1])
    assert apply_edit(space, space.min_arch(), Edit(2, "width", -1)) is None
    for _ in range(20):
        arch = space.sample(np.random.default_rng(_))
        for edit, ok in zip(table[:-1], valid_actions(space, arch)[:-1], strict=True):
            new = apply_edit(space, arch, edit)
            assert ok == (new is not None) and (new is None or space.contains(new))


def test_env_checkers_pass(supernet):
    for start in ("a0", "random"):
        ev, _ = make_evaluator(supernet)
        gym_check_env(ArchEditEnv(ev, SoftReward(), max_edits=4, start=start), skip_render_check=True)
        sb3_check_env(ArchEditEnv(ev, HardReward(), max_edits=4, start=start))


def test_shaped_return_equals_final_objective(supernet):
    ev, _ = make_evaluator(supernet)
    env = ArchEditEnv(ev, SoftReward(), max_edits=6)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    rng, ret, done = np.random.default_rng(0), 0.0, False
    while not done:
        valid = np.flatnonzero(env.action_masks()[:-1])
        obs, r, term, trunc, info = env.step(int(rng.choice(valid)))
        ret, done = ret + r, term or trunc
    j0 = env.objective(ev.baseline)
    assert ret == pytest.approx(info["objective"] - j0)
    assert trunc and env.steps == 6


def test_invalid_action_is_penalised_noop(supernet):
    ev, _ = make_evaluator(supernet)
    env = ArchEditEnv(ev, SoftReward(), max_edits=3, invalid_action_penalty=0.05)
    obs, _ = env.reset(seed=0)
    up = env.edits.index(Edit(0, "depth", 1))
    assert not env.action_masks()[up]
    n = ev.unique_evaluations
    obs2, r, term, trunc, info = env.step(up)
    assert r == -0.05 and info["invalid"] and not term and not trunc
    assert env.arch == supernet.space.max_arch() and ev.unique_evaluations == n
    np.testing.assert_array_equal(obs[:-1], obs2[:-1])  # only "edits left" moved
    assert obs2[-1] < obs[-1]
    _, r, term, _, info = env.step(len(env.edits) - 1)
    assert term and r == 0.0 and info["action"] == "stop"


def test_evaluator_budget_dedup_failures_and_resume(supernet, tmp_path):
    space = supernet.space
    rng = np.random.default_rng(0)
    archs = []
    while len(archs) < 5:
        a = space.sample(rng)
        if a not in archs and a != space.max_arch():
            archs.append(a)
    log = tmp_path / "evaluations.jsonl"
    ev, oracles = make_evaluator(supernet, budget=3, fail=[archs[1]], history_path=log)
    assert ev.baseline.feasible and ev.baseline.latency_ratio == 1.0
    assert ev.evaluate(space.max_arch()) is ev.baseline and ev.unique_evaluations == 0
    m0 = ev.evaluate(archs[0])
    assert m0.ok and m0.macs > 0 and m0.params > 0
    failed = ev.evaluate(archs[1])
    assert failed.status == "failed" and not failed.feasible and "compile error" in failed.reason
    assert SoftReward()(failed, ev.target_accuracy) == SoftReward().failure_reward
    assert ev.evaluate(archs[0]) is m0 and ev.stats.repeats == 1
    ev.evaluate(archs[2])
    assert ev.budget_exhausted and oracles.calls == 4
    with pytest.raises(BudgetExhausted):
        ev.evaluate(archs[3])
    with pytest.raises(InvalidArchError):
        ev.evaluate(Arch(space.family, (9, 9, 9), (1.0, 1.0, 1.0), ()))
    with open(log, "a") as f:
        f.write('{"kind": "candidate", "trunc')  # a write cut by kill -9
    resumed, oracles2 = make_evaluator(supernet, budget=5, history_path=log)
    assert resumed.unique_evaluations == 3 and resumed.baseline.latency_ms == ev.baseline.latency_ms
    assert resumed.evaluate(archs[2]).latency_ms == ev.evaluate(archs[2]).latency_ms
    assert oracles2.calls == 0  # nothing re-measured, baseline included
    resumed.evaluate(archs[3])
    assert oracles2.calls == 1 and resumed.unique_evaluations == 4
    with pytest.raises(ValueError, match="different setup"):
        Evaluator(supernet, oracles2, oracles2, SHAPE, tau=0.5, history_path=log)


@pytest.mark.parametrize("agent", [RandomSearch(), RegularizedEvolution(population_size=4, sample_size=2),
                                   RegularizedEvolution(population_size=4, sample_size=2, init="a0")])
def test_agents_respect_budget_and_replay(supernet, agent, tmp_path):
    ev, _ = make_evaluator(supernet, history_path=tmp_path / "h.jsonl")
    res = agent.run(ev, budget=8, seed=3, reward=SoftReward())
    assert res.unique_evaluations == 8 and ev.budget_exhausted
    first = [m.arch for m in ev.history]
    # resume: the same agent on the restored history replays for free and continues
    ev2, oracles = make_evaluator(supernet, history_path=tmp_path / "h.jsonl")
    agent.run(ev2, budget=12, seed=3, reward=SoftReward())
    assert [m.arch for m in ev2.history][:8] == first and oracles.calls == 4


@pytest.mark.parametrize("masked", [True, False])
def test_ppo_agent_budget_checkpoint_and_seed(supernet, tmp_path, masked):
    def run(run_dir, budget):
        # tau 0.95: networks of at least ~65 % of a0's MACs are feasible (at 0.99 none but a0 is)
        ev, oracles = make_evaluator(supernet, history_path=run_dir / "evaluations.jsonl", tau=0.95)
        agent = PPOAgent(masked=masked, max_edits=4, n_steps=16, batch_size=8, n_epochs=2, checkpoint_freq=8)
        res = agent.run(ev, budget=budget, seed=0, reward=SoftReward(), run_dir=run_dir)
        return ev, oracles, res

    ev, _, res = run(tmp_path / "a", 10)
    assert res.unique_evaluations == 10 and res.agent_steps >= 10
    assert (tmp_path / "a" / "agent" / "ppo.zip").exists()
    ev_same, _, _ = run(tmp_path / "b", 10)
    assert [m.arch for m in ev_same.history] == [m.arch for m in ev.history]  # seeded
    ev2, oracles, res2 = run(tmp_path / "a", 14)  # resume with a larger budget
    assert ev2.unique_evaluations == 14 and oracles.calls == 4
    assert [m.arch for m in ev2.history][:10] == [m.arch for m in ev.history]
    # the result is the fastest feasible network of the run, and the constraint decided it: the
    # seeded run also measured faster networks that miss the target accuracy
    best = res.best
    assert best is not None and best.feasible and best.acc_int8 >= ev.target_accuracy
    assert best.arch in {m.arch for m in ev.history} and best.latency_ratio < 1
    assert best.latency_ratio == min(m.latency_ratio for m in ev.history if m.feasible)
    faster = [m for m in ev.history if m.latency_ratio < best.latency_ratio]
    assert faster and not any(m.feasible for m in faster)


def test_measuring_does_not_perturb_agent_rng(supernet, tmp_path):
    """A seeded agent proposes the same architectures whether measurements are fresh or replayed
    from the run's log: resuming without a checkpoint reproduces the uninterrupted run."""
    def ppo(history, budget):
        ev, oracles = make_evaluator(supernet, history_path=history)
        PPOAgent(max_edits=4, n_steps=8, batch_size=8, n_epochs=2).run(ev, budget=budget, seed=1)
        return [m.arch for m in ev.history], oracles.calls

    full, _ = ppo(tmp_path / "full.jsonl", 10)
    ppo(tmp_path / "part.jsonl", 6)
    resumed, calls = ppo(tmp_path / "part.jsonl", 10)
    assert resumed == full and calls == 4
