"""The confirmation's round order: read back from a real OpenVINO confirmation, every model runs
first (and last) equally often, for two models as for three; its bootstrap interval of the ratio."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from torch import nn

from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.ratios import TimingConfig, bootstrap_ratio_ci, round_p10
from rlnas.oracles.worker import round_order

SHAPE = (1, 3, 16, 16)
TWELVE_ROUNDS = TimingConfig(warmup_iters=1, block_iters=2, block_skip=0, min_rounds=12, max_rounds=12,
                            min_iters=1, min_time_s=0.0, max_time_s=600.0, target_rel_error=None)


def conv_net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 4)).eval()


@pytest.fixture(scope="module")
def oracle_and_irs(tmp_path_factory):
    root = tmp_path_factory.mktemp("order")
    with LatencyOracle("host", cache_dir=root, timing=TWELVE_ROUNDS, lock_path=str(root / "lock"),
                       timeout_s=120) as oracle:
        irs = {f"m{w}": oracle.measure(conv_net(w), SHAPE, "int8", model_key=f"order-{w}").ir_path for w in (4, 8, 12)}
        yield oracle, irs


def test_round_order_balances_positions_for_any_n():
    for n in (1, 2, 3, 4, 5):
        names = [str(i) for i in range(n)]
        orders = [round_order(names, r) for r in range(2 * n)]
        assert all(sorted(o) == names for o in orders)
        for position in range(n):
            assert Counter(o[position] for o in orders) == dict.fromkeys(names, 2)


def test_bootstrap_interval_is_seeded_and_holds_the_median():
    rng = np.random.default_rng(3)
    ref = [list(4.0 + rng.exponential(0.2, 10)) for _ in range(25)]
    cand = [list(2.0 + rng.exponential(0.2, 10)) for _ in range(25)]
    median = float(np.median([np.percentile(c, 10) / np.percentile(r, 10) for c, r in zip(cand, ref)]))
    low, high = bootstrap_ratio_ci(cand, ref)
    assert low < median < high and high - low < 0.1
    assert bootstrap_ratio_ci(cand, ref) == [low, high]  # seeded: the same rounds give the same interval
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate cases answer without scipy's warnings
        assert bootstrap_ratio_ci(ref, ref) == [1.0, 1.0]  # the reference against itself
        assert bootstrap_ratio_ci([[1.0, 2.0]], [[2.0, 4.0]]) == [0.5, 0.5]  # one round
    with pytest.raises(ValueError, match="no rounds"):
        bootstrap_ratio_ci([], [])


def test_round_p10_is_each_rounds_10th_percentile():
    rounds = [[5.0, 1.0, 3.0, 2.0, 4.0], [10.0, 20.0], [7.0]]
    assert round_p10(rounds) == pytest.approx([1.4, 11.0, 7.0])  # numpy's linear interpolation


@pytest.mark.parametrize("n", [2, 3])
def test_confirmation_alternates_which_model_runs_first(oracle_and_irs, n):
    oracle, irs = oracle_and_irs
    chosen = dict(list(irs.items())[:n])
    reference = next(iter(chosen))
    c = oracle.confirm(chosen, reference, TWELVE_ROUNDS)
    assert c.rounds == 12 and len(c.orders) == 12
    assert all(sorted(o) == sorted(chosen) for o in c.orders)
    assert Counter(o[0] for o in c.orders) == dict.fromkeys(chosen, 12 // n)
    assert Counter(o[-1] for o in c.orders) == dict.fromkeys(chosen, 12 // n)
    if n == 2:  # never the same model first in four rounds running
        assert all(len({o[0] for o in c.orders[i:i + 4]}) == 2 for i in range(len(c.orders) - 3))
