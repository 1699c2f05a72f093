"""``ArchEditEnv``: architecture search as a sequence of edits of a backbone.

State: the current architecture. Actions (``Discrete``): for each stage depth +1/-1, width
+1/-1 choice and (families with an expand ratio) expand +1/-1 choice applied to every active
block of the stage, plus ``stop``. An episode starts at a0 (or a random architecture) and ends on
``stop`` (terminated) or after ``max_edits`` edits (truncated).

Invalid edits (depth already at its maximum, width at its smallest choice...): **masked**. The
env exposes ``action_masks()``, which sb3-contrib's MaskablePPO reads, so the policy never samples
an edit that cannot happen; this keeps every environment step meaningful and the policy's
probability mass on real edits, which matters when the whole run is a few hundred steps. An
invalid action that still arrives (plain PPO with ``agent.masked=false``, gymnasium's checker,
a user) is a **no-op with a small penalty** (``invalid_action_penalty``) that still uses one of
the episode's edits, so the env stays a correct Gymnasium env without masks.

Reward timing: **every step, difference-based**. The step reward is ``J(a_{t+1}) - J(a_t)``
where ``J`` is the objective of :mod:`rlnas.search.reward` (``-log(Lat/Lat(a0))`` plus the
constraint penalty). It telescopes: the undiscounted return of an episode is exactly
``J(final) - J(start)`` -- the objective of the architecture the agent stops at (``J(a0) = 0`` by
construction, up to a0's measurement noise) -- so with ``gamma = 1`` dense and end-of-episode
rewards have the same optimal policy (potential-based shaping, Ng et al. 1999). Dense rewards
are free here -- the observation already needs each visited architecture's measurement -- and
give per-edit credit assignment, which a few hundred steps of PPO needs. Invalid-action
penalties are the only non-telescoping terms.

Observation (``Box``, float32): ``space.to_vector(arch)`` (in [0, 1]), then the latency feature
``clip(-log(ratio) / log(ratio_scale), -1, 1)``, the accuracy margin
``clip((acc_int8 - target) / target / margin_scale, -1, 1)`` (both -1 for a failed measurement)
and the fraction of edits left.

Budget: every new architecture visited costs one unique evaluation of the
:class:`~rlnas.search.evaluator.Evaluator`. Once the budget is used up, an edit to an unseen
architecture truncates the episode (reward 0, ``info["budget_exhausted"] = True``); the PPO agent's
callback then stops training.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from rlnas.arch import Arch, SearchSpace
from rlnas.errors import ConfigError
from rlnas.search.evaluator import BudgetExhausted, Evaluator
from rlnas.search.measurement import Measurement
from rlnas.search.reward import Reward, SoftReward

START_STATES = ("a0", "random", "best")


@dataclass(frozen=True)
class Edit:
    """One edit of one stage: ``kind`` in depth/width/expand, ``delta`` +1 or -1."""

    stage: int
    kind: str
    delta: int

    def __str__(self) -> str:
        return f"{self.kind}{'+' if self.delta > 0 else '-'}@{self.stage}"


def edit_table(space: SearchSpace) -> list[Edit | None]:
    """All actions of a space in order; ``None`` is ``stop`` (always the last action)."""
    kinds = ("depth", "width", "expand") if space.has_expand else ("depth", "width")
    edits: list[Edit | None] = [Edit(i, k, d) for i in range(space.num_stages) for k in kinds for d in (1, -1)]
    return edits + [None]


def apply_edit(space: SearchSpace, arch: Arch, edit: Edit) -> Arch | None:
    """The architecture after ``edit``, or None if the edit is invalid (changes nothing)."""
    i, depths, widths = edit.stage, list(arch.depths), list(arch.widths)
    expands = [list(s) for s in arch.expands]
    if edit.kind == "depth":
        d = depths[i] + edit.delta
        if not space.min_depths[i] <= d <= space.max_depths[i]:
            return None
        depths[i] = d
        if space.has_expand:
            # a new block copies the stage's last expand ratio: edits keep stages uniform
            expands[i] = expands[i] + expands[i][-1:] if edit.delta > 0 else expands[i][:-1]
    elif edit.kind == "width":
        w = _step_choice(widths[i], space.width_choices, edit.delta)
        if w is None:
            return None
        widths[i] = w
    elif edit.kind == "expand":
        moved = [_step_choice(e, space.expand_choices, edit.delta) for e in expands[i]]
        if all(m is None for m in moved):
            return None
        expands[i] = [e if m is None else m for e, m in zip(expands[i], moved, strict=True)]
    else:
        raise ValueError(f"unknown edit kind {edit.kind!r}")
    return Arch(arch.family, tuple(depths), tuple(widths), tuple(tuple(s) for s in expands))


def valid_actions(space: SearchSpace, arch: Arch, table: list[Edit | None] | None = None) -> np.ndarray:
    """Boolean mask over :func:`edit_table`: True where the action changes ``arch`` (stop: True)."""
    table = table or edit_table(space)
    return np.array([e is None or apply_edit(space, arch, e) is not None for e in table], dtype=bool)


def random_edit(space: SearchSpace, arch: Arch, rng: np.random.Generator) -> Arch:
    """``arch`` after one uniformly chosen valid edit (the mutation of evolution)."""
    table = edit_table(space)[:-1]
    valid = [e for e in table if apply_edit(space, arch, e) is not None]
    if not valid:
        return arch
    return apply_edit(space, arch, valid[int(rng.integers(len(valid)))])


def _step_choice(value: float, choices: tuple[float, ...], delta: int) -> float | None:
    j = choices.index(value) + delta
    return choices[j] if 0 <= j < len(choices) else None


class ArchEditEnv(gym.Env):
    """Edit an architecture of ``evaluator``'s space towards a fast, feasible one.

    :param evaluator: measures architectures (owns the budget, cache and logs).
    :param reward: the objective ``J(measurement, target)``; default :class:`SoftReward`.
    :param max_edits: edits per episode (then truncated).
    :param start: ``"a0"`` (the original model), ``"random"`` (uniform from the space; costs a
        unique evaluation when new) or ``"best"`` (the fastest feasible network measured so far,
        a0 before there is one).
    :param invalid_action_penalty: reward of an invalid edit, which is a no-op (see module doc).
    :param ratio_scale: latency ratio mapped to the end of the observation range (e.g. 20x).
    :param margin_scale: relative accuracy margin mapped to the end of its range (0.05 = 5 %).
    :param render_mode: ``None`` or ``"ansi"``.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        evaluator: Evaluator,
        reward: Reward | None = None,
        max_edits: int = 8,
        start: str = "a0",
        invalid_action_penalty: float = 0.05,
        ratio_scale: float = 20.0,
        margin_scale: float = 0.05,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if start not in START_STATES:
            raise ConfigError(f"start must be one of {', '.join(START_STATES)}, got {start!r}")
        if render_mode not in (None, "ansi"):
            raise ConfigError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.evaluator = evaluator
        self.space = evaluator.space
        self.reward_fn = reward or SoftReward()
        self.max_edits = int(max_edits)
        self.start = start
        self.invalid_action_penalty = float(invalid_action_penalty)
        self.ratio_scale = float(ratio_scale)
        self.margin_scale = float(margin_scale)
        self.render_mode = render_mode
        self.edits = edit_table(self.space)
        self.action_space = spaces.Discrete(len(self.edits))
        n = self.space.vector_size
        low = np.concatenate([np.zeros(n), [-1.0, -1.0, 0.0]]).astype(np.float32)
        high = np.ones(n + 3, dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.arch: Arch = self.space.max_arch()
        self.measurement: Measurement | None = None
        self.steps = 0

    # -- gymnasium API ------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.steps = 0
        self.arch = self._start_arch()
        self.measurement = self._evaluate(self.arch) or self.evaluator.baseline
        self.arch = self.measurement.arch
        return self._obs(), self._info()

    def step(self, action):
        action = int(action)
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} outside {self.action_space}")
        edit = self.edits[action]
        if edit is None:
            return self._obs(), 0.0, True, False, self._info(action="stop")
        self.steps += 1
        truncated = self.steps >= self.max_edits
        new_arch = apply_edit(self.space, self.arch, edit)
        if new_arch is None:
            info = self._info(action=str(edit), invalid=True)
            return self._obs(), -self.invalid_action_penalty, False, truncated, info
        m = self._evaluate(new_arch)
        if m is None:
            return self._obs(), 0.0, False, True, self._info(action=str(edit), budget_exhausted=True)
        reward = self.objective(m) - self.objective(self.measurement)
        self.arch, self.measurement = new_arch, m
        return self._obs(), float(reward), False, truncated, self._info(action=str(edit))

    def planned_arch(self, action: int) -> Arch | None:
        """The architecture ``step(action)`` would measure (None for stop or an invalid edit), so
        that a vectorized env can start every env's measurement before stepping them."""
        edit = self.edits[int(action)]
        return None if edit is None else apply_edit(self.space, self.arch, edit)

    def action_masks(self) -> np.ndarray:
        """Valid actions for the current architecture (read by sb3-contrib's MaskablePPO)."""
        return valid_actions(self.space, self.arch, self.edits)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        m = self.measurement
        return (f"step {self.steps}/{self.max_edits} {self.arch.short()} ratio={m.latency_ratio} "
                f"acc_int8={m.acc_int8} feasible={m.feasible}")

    # -- helpers ------------------------------------------------------------------------------

    def objective(self, m: Measurement) -> float:
        """``J(m)``: the reward of stopping at ``m`` (see :mod:`rlnas.search.reward`)."""
        return self.reward_fn(m, self.evaluator.target_accuracy)

    def _start_arch(self) -> Arch:
        if self.start == "random":
            return self.space.sample(self.np_random)
        best = self.evaluator.best_feasible() if self.start == "best" else None
        return best.arch if best is not None else self.space.max_arch()

    def _evaluate(self, arch: Arch) -> Measurement | None:
        try:
            return self.evaluator.evaluate(arch)
        except BudgetExhausted:
            return None

    def _obs(self) -> np.ndarray:
        m = self.measurement
        if m.ok and m.latency_ratio and m.acc_int8 is not None:
            lat = -math.log(max(m.latency_ratio, 1e-6)) / math.log(self.ratio_scale)
            target = self.evaluator.target_accuracy
            margin = (m.acc_int8 - target) / target / self.margin_scale
        else:
            lat, margin = -1.0, -1.0
        left = 1.0 - self.steps / self.max_edits
        extra = np.clip([lat, margin], -1.0, 1.0)
        return np.concatenate([self.space.to_vector(self.arch), extra, [left]]).astype(np.float32)

    def _info(self, **extra: Any) -> dict[str, Any]:
        m = self.measurement
        return {"arch": self.arch.to_json(), "latency_ratio": m.latency_ratio, "acc_int8": m.acc_int8,
                "feasible": m.feasible, "status": m.status, "objective": self.objective(m),
                "unique_evaluations": self.evaluator.unique_evaluations, **extra}


class ConcurrentVecEnv(DummyVecEnv):
    """SB3's DummyVecEnv over :class:`ArchEditEnv` copies sharing one evaluator, whose step first
    submits every env's next architecture to the evaluator, so their measurements run
    concurrently (``evaluator.parallelism`` at once), then steps the envs in order (each
    collects its measurement). Beyond the budget a proposal is not measured: its env sees the
    budget exhausted, as a single env does."""

    def __init__(self, env_fns: list, evaluator: Evaluator) -> None:
        super().__init__(env_fns)
        self.evaluator = evaluator

    def step_wait(self):
        for env, action in zip(self.envs, self.actions):
            arch = env.unwrapped.planned_arch(int(action))
            if arch is not None:
                with contextlib.suppress(BudgetExhausted):
                    self.evaluator.submit(arch)
        return super().step_wait()
