"""Reward math: feasible vs infeasible, soft vs hard, monotonic in the latency ratio."""

import math
from itertools import pairwise

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rlnas
from rlnas.arch import Arch
from rlnas.search.measurement import Measurement
from rlnas.search.reward import HardReward, SoftReward, violation

TARGET = 0.9
RATIOS = np.linspace(0.1, 1.5, 30)


def test_feasible_reward_is_minus_log_ratio():
    for reward in (SoftReward(), HardReward()):
        assert reward.score(1.0, 0.95, TARGET) == pytest.approx(0.0)
        assert reward.score(0.5, 0.95, TARGET) == pytest.approx(math.log(2))
        assert reward.score(0.5, TARGET, TARGET) == pytest.approx(math.log(2))  # boundary is feasible


def test_soft_penalty_is_mnasnet_exponent():
    r = SoftReward(beta=20.0)
    assert r.score(0.5, 0.891, TARGET) == pytest.approx(math.log(2) + 20 * math.log(0.891 / 0.9))
    assert r.score(0.5, 0.0, TARGET) == pytest.approx(math.log(2) - r.max_penalty)  # finite at acc = 0
    assert SoftReward(alpha=1.0).score(1.0, 0.99, TARGET) == pytest.approx(math.log(0.99 / 0.9))


def test_hard_infeasible_always_below_feasible():
    r = HardReward(penalty=1.0)
    worst_feasible = min(r.score(x, TARGET, TARGET) for x in RATIOS)
    best_infeasible = max(r.score(x, TARGET - 1e-4, TARGET) for x in RATIOS)
    assert best_infeasible < -1.0 < worst_feasible
    # the soft reward lets a much faster, slightly infeasible network win
    s = SoftReward()
    assert s.score(0.3, TARGET * 0.995, TARGET) > s.score(1.0, TARGET, TARGET)


@pytest.mark.parametrize("reward", [SoftReward(), HardReward()])
@pytest.mark.parametrize("acc", [0.95, 0.89, 0.5])
def test_monotonic_in_ratio_and_violation(reward, acc):
    scores = [reward.score(x, acc, TARGET) for x in RATIOS]
    assert all(a > b for a, b in pairwise(scores))
    accs = np.linspace(0.7, TARGET, 20)  # above the soft floor
    by_acc = [reward.score(0.5, a, TARGET) for a in accs]
    assert all(a < b for a, b in pairwise(by_acc))


def test_failed_measurement_scores_failure_reward():
    m = Measurement(Arch("x", (1,), (1.0,)), status="failed", reason="boom")
    assert SoftReward(failure_reward=-3).__call__(m, TARGET) == -3
    ok = Measurement(Arch("x", (1,), (1.0,)), latency_ratio=0.5, acc_int8=0.95)
    assert SoftReward()(ok, TARGET) == pytest.approx(math.log(2))
    assert violation(0.85, 0.9) == pytest.approx(0.05 / 0.9)
    assert violation(0.95, 0.9) == 0.0


@pytest.mark.parametrize("name,cls", [("soft", SoftReward), ("hard", HardReward)])
def test_reward_configs_instantiate(name, cls):
    cfg = OmegaConf.load(rlnas.CONF_DIR / "reward" / f"{name}.yaml")
    assert isinstance(instantiate(cfg), cls)
