"""The search objective as a scalar: INT8 latency to minimise, INT8 accuracy as a constraint.

The problem is ``a* = argmin_a Lat_INT8(a) s.t. Acc_INT8(a) >= tau * Acc_FP32(a0)``. Every reward
here scores one :class:`~rlnas.search.measurement.Measurement`::

    J(m) = -log(Lat(a) / Lat(a0)) + penalty(Acc_INT8(a), target)

``-log(ratio)`` is 0 at a0, ``log 2 = 0.69`` for a 2x speed-up, and symmetric for slow-downs, so
speed-ups compose additively and the scale does not depend on the model or device. The penalty is
zero when the constraint holds and grows with the violation:

- :class:`SoftReward` (MnasNet-style): ``beta * log(acc / target)`` below the target, i.e. the
  MnasNet product ``(acc/target)^beta * (Lat(a0)/Lat(a))`` in log form. Infeasible architectures
  that are much faster can still score well, which lets an agent walk through them.
- :class:`HardReward`: every infeasible architecture scores below ``-penalty`` and therefore
  below every feasible architecture that is not slower than ``e`` times a0; within each region
  the reward still decreases with the latency ratio and with the violation.

A measurement that failed in an oracle scores ``failure_reward``. Rewards are instantiated from
``conf/reward/*.yaml`` with Hydra's ``_target_``.
"""

from __future__ import annotations

import math
from typing import Protocol


class Scored(Protocol):
    """What a reward reads from a measurement (a :class:`Measurement` satisfies it)."""

    status: str
    latency_ratio: float | None
    acc_int8: float | None


class Reward:
    """Base class: ``reward(measurement, target) -> float``.

    :param failure_reward: reward of a measurement whose oracle failed (or has no numbers).
    :param min_ratio: latency ratios are clipped below at this value so a bogus near-zero
        latency cannot dominate the search.
    """

    def __init__(self, failure_reward: float = -3.0, min_ratio: float = 0.02) -> None:
        self.failure_reward = float(failure_reward)
        self.min_ratio = float(min_ratio)

    def latency_term(self, ratio: float) -> float:
        return -math.log(max(float(ratio), self.min_ratio))

    def penalty(self, acc: float, target: float) -> float:
        raise NotImplementedError

    def __call__(self, m: Scored, target: float) -> float:
        if m.status != "ok" or m.latency_ratio is None or m.acc_int8 is None:
            return self.failure_reward
        return self.score(m.latency_ratio, m.acc_int8, target)

    def score(self, ratio: float, acc: float, target: float) -> float:
        """The objective for raw numbers (used by the tests and the report)."""
        return self.latency_term(ratio) + self.penalty(acc, target)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def violation(acc: float, target: float) -> float:
    """Relative shortfall below the target accuracy, 0 when the constraint holds."""
    return max(0.0, (target - acc) / target) if target > 0 else 0.0


class SoftReward(Reward):
    """MnasNet-style soft constraint: ``-log(ratio) + w * log(acc / target)``.

    :param beta: weight below the target (the MnasNet exponent); with ``beta = 20`` every 1 %
        (relative) of accuracy below the target costs as much as a 20 % slower network.
    :param alpha: weight above the target (0: no bonus for exceeding it, as in the hard problem).
    :param max_penalty: the penalty is floored at ``-max_penalty`` so ``acc = 0`` stays finite.
    """

    def __init__(self, beta: float = 20.0, alpha: float = 0.0, max_penalty: float = 10.0,
                 failure_reward: float = -3.0, min_ratio: float = 0.02) -> None:
        super().__init__(failure_reward, min_ratio)
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.max_penalty = float(max_penalty)

    def penalty(self, acc: float, target: float) -> float:
        log_rel = math.log(max(acc, 1e-9) / target)
        weight = self.alpha if acc >= target else self.beta
        return max(weight * log_rel, -self.max_penalty)


class HardReward(Reward):
    """Hard constraint: infeasible architectures always score below feasible ones.

    Infeasible: ``-log(ratio) - log(1/min_ratio) - penalty - slope * violation``. The offset
    ``log(1/min_ratio)`` is the largest latency term possible, so an infeasible architecture scores
    below ``-penalty`` however fast it is, yet faster infeasible ones still score higher than
    slower ones with the same violation (a gradient towards the feasible region).

    :param penalty: margin between the infeasible and the feasible region.
    :param slope: extra penalty per unit of relative violation (0.01 = 1 % below target).
    """

    def __init__(self, penalty: float = 1.0, slope: float = 100.0,
                 failure_reward: float = -10.0, min_ratio: float = 0.02) -> None:
        super().__init__(failure_reward, min_ratio)
        self.penalty_offset = float(penalty)
        self.slope = float(slope)

    def penalty(self, acc: float, target: float) -> float:
        v = violation(acc, target)
        if v <= 0.0:
            return 0.0
        return -(-math.log(self.min_ratio) + self.penalty_offset + self.slope * v)
