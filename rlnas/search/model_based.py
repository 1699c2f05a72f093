"""Model-based PPO: PPO learns on a surrogate fitted online to the run's own measurements, and
spends real evaluations only on its proposals.

One run, top to bottom (:meth:`ModelBasedPPO._search`):

    warm-up   ``init_evaluations`` real measurements: random walks of 1..``max_edits`` edits from a0
    repeat    fit  :class:`OnlineSurrogate` on every measurement of this run (latency ratio:
                   the additive per-layer-group model; INT8 accuracy: extremely randomised trees)
              imagine  PPO trains ``model_steps`` env steps on :class:`ModelWorld`, the same
                   :class:`~rlnas.search.env.ArchEditEnv` whose evaluator answers from the
                   surrogate (free, unlimited); the policy persists across rounds
              propose  the ``proposals`` networks visited in imagination that score best by the
                   reward on the surrogate's prediction (the accuracy moved by ``kappa`` times
                   the trees' spread: optimism where the model knows little, by default) and were
                   never measured; measure them for real (concurrently where the evaluator can)
    until     the budget of unique real evaluations is used up

The budget counts real evaluations only, as for every agent. Deterministic given the seed and
the measurements; a resumed run replays its measurements from the history for free.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sb3_contrib import MaskablePPO
from stable_baselines3.common.logger import configure

from rlnas.arch import Arch
from rlnas.errors import ConfigError
from rlnas.oracles.surrogate import Featurizer, features_for, make_model
from rlnas.search.agents import Agent
from rlnas.search.env import ArchEditEnv, random_edit
from rlnas.search.evaluator import Evaluator
from rlnas.search.measurement import Measurement
from rlnas.search.reward import Reward

log = logging.getLogger(__name__)


class OnlineSurrogate:
    """Latency-ratio and INT8-accuracy models refitted on a run's measurements.

    :param supernet: the run's supernet (the layers each architecture builds).
    :param resolution: input side of the measurements.
    :param latency_model: one of :data:`rlnas.oracles.surrogate.MODELS`.
    :param accuracy_model: ``trees`` (its spread over trees is the uncertainty) or another model
        (no spread).
    :param seed: of the trees.
    """

    def __init__(self, supernet: Any, resolution: int, latency_model: str = "additive",
                 accuracy_model: str = "trees", seed: int = 0) -> None:
        self.featurizer = Featurizer(supernet, resolution)
        self.kinds = {"latency_ratio": latency_model, "acc_int8": accuracy_model}
        self.seed = int(seed)
        self.models: dict[str, Any] = {}

    def fit(self, measurements: list[Measurement]) -> OnlineSurrogate:
        """Fit both models on the measurements that have both numbers."""
        usable = [m for m in measurements if m.ok and m.latency_ratio is not None and m.acc_int8 is not None]
        if len(usable) < 2:
            raise ValueError(f"the online surrogate needs 2 measured networks, has {len(usable)}")
        archs = [m.arch for m in usable]
        self.featurizer.fit(archs)
        targets = {"latency_ratio": [m.latency_ratio for m in usable], "acc_int8": [m.acc_int8 for m in usable]}
        self.models = {t: make_model(kind, self.seed).fit(features_for(kind, self.featurizer, archs),
                                                          np.asarray(targets[t]))
                       for t, kind in self.kinds.items()}
        return self

    def predict(self, arch: Arch) -> tuple[float, float, float]:
        """``(latency ratio, INT8 accuracy, spread of the accuracy over the trees)``."""
        ratio_x = features_for(self.kinds["latency_ratio"], self.featurizer, [arch])
        acc_x = features_for(self.kinds["acc_int8"], self.featurizer, [arch])
        ratio = max(float(self.models["latency_ratio"].predict(ratio_x)[0]), 1e-3)
        acc_model = self.models["acc_int8"]
        if hasattr(acc_model, "estimators_"):
            rows = np.ascontiguousarray(acc_x, dtype=np.float32)  # the trees' own dtype: no re-validation
            per_tree = np.asarray([tree.tree_.predict(rows)[0, 0] for tree in acc_model.estimators_])
            return ratio, float(np.clip(per_tree.mean(), 0, 1)), float(per_tree.std())
        return ratio, float(np.clip(acc_model.predict(acc_x)[0], 0, 1)), 0.0


class ModelWorld:
    """The evaluator interface :class:`ArchEditEnv` needs, answered by an :class:`OnlineSurrogate`
    (nothing measured, no budget). It remembers every network visited since :meth:`refit`.

    :param evaluator: the real evaluator (space, a0, target, network identity, best so far).
    :param surrogate: the fitted models.
    :param kappa: the accuracy the env sees is the prediction minus ``kappa`` times its spread.
    """

    def __init__(self, evaluator: Evaluator, surrogate: OnlineSurrogate, kappa: float = 0.0) -> None:
        self.real = evaluator
        self.space = evaluator.space
        self.surrogate = surrogate
        self.kappa = float(kappa)
        self.visited: dict[str, Measurement] = {}  # network key -> its prediction

    @property
    def baseline(self) -> Measurement:
        return self.real.baseline

    @property
    def target_accuracy(self) -> float:
        return self.real.target_accuracy

    @property
    def unique_evaluations(self) -> int:
        return len(self.visited)

    def best_feasible(self) -> Measurement | None:
        return self.real.best_feasible()

    def refit(self, measurements: list[Measurement]) -> None:
        self.surrogate.fit(measurements)
        self.visited = {}

    def evaluate(self, arch: Arch) -> Measurement:
        if arch == self.real.a0:
            return self.baseline
        key = self.real.network_key(arch)
        if key not in self.visited:
            ratio, acc, spread = self.surrogate.predict(arch)
            acc = acc - self.kappa * spread
            self.visited[key] = Measurement(arch=arch, latency_ratio=ratio, acc_int8=acc,
                                            feasible=acc >= self.target_accuracy)
        m = self.visited[key]
        return m if m.arch == arch else replace(m, arch=arch)


def random_walk(space: Any, start: Arch, edits: int, rng: np.random.Generator) -> Arch:
    """``start`` after ``edits`` random valid edits."""
    arch = start
    for _ in range(edits):
        arch = random_edit(space, arch, rng)
    return arch


class ModelBasedPPO(Agent):
    """MaskablePPO trained on an online surrogate of the run's measurements (module doc).

    :param init_evaluations: real measurements before the first fit (random walks from a0).
    :param proposals: real evaluations per round (the best unmeasured networks of the round's
        imagination); with a parallel evaluator they are measured concurrently.
    :param model_steps: PPO env steps in the model per round.
    :param kappa: the accuracy an imagined network gets is the prediction minus ``kappa`` times
        the trees' spread: > 0 pessimistic, < 0 optimistic (upper-confidence exploration, which
        the next round's real measurements correct).
    :param max_edits: edits per imagined episode (steps are free here: longer than real PPO's).
    :param start: ``a0``, ``random`` or ``best`` (the best feasible network measured so far).
    :param latency_model: :data:`rlnas.oracles.surrogate.MODELS` member for the latency ratio.
    :param accuracy_model: likewise for the INT8 accuracy.
    :param learning_rate, n_steps, batch_size, n_epochs, gamma, gae_lambda, clip_range, ent_coef,
        net_arch: SB3's PPO hyperparameters.
    :param tensorboard_dir: SB3's logs under ``<dir>/ppo_model`` (default ``<run_dir>/tb``).
    :param max_rounds_factor: stop after ``budget * max_rounds_factor`` rounds without filling the
        budget (tiny spaces run out of new networks).
    """

    name = "ppo_model"

    def __init__(
        self,
        init_evaluations: int = 20,
        proposals: int = 10,
        model_steps: int = 2048,
        kappa: float = -0.5,
        max_edits: int = 16,
        start: str = "best",
        latency_model: str = "additive",
        accuracy_model: str = "trees",
        learning_rate: float = 3e-4,
        n_steps: int = 256,
        batch_size: int = 64,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.01,
        net_arch: list[int] | None = None,
        tensorboard_dir: str | None = None,
        max_rounds_factor: int = 5,
        device: str = "cpu",
    ) -> None:
        if init_evaluations < 2 or proposals < 1 or model_steps < 1:
            raise ConfigError("ppo_model: init_evaluations >= 2, proposals >= 1 and model_steps >= 1 are needed")
        if start not in ("a0", "random", "best"):
            raise ConfigError(f"start must be 'a0', 'random' or 'best', got {start!r}")
        self.init_evaluations = int(init_evaluations)
        self.proposals = int(proposals)
        self.model_steps = int(model_steps)
        self.kappa = float(kappa)
        self.env_kwargs = {"max_edits": int(max_edits), "start": start}
        self.surrogate_kwargs = {"latency_model": latency_model, "accuracy_model": accuracy_model}
        self.algo_kwargs = {
            "learning_rate": float(learning_rate), "n_steps": int(n_steps), "batch_size": int(batch_size),
            "n_epochs": int(n_epochs), "gamma": float(gamma), "gae_lambda": float(gae_lambda),
            "clip_range": float(clip_range), "ent_coef": float(ent_coef),
            "policy_kwargs": {"net_arch": list(net_arch or [64, 64])},
        }
        self.tensorboard_dir = tensorboard_dir
        self.max_rounds_factor = int(max_rounds_factor)
        self.device = device

    def _search(self, evaluator: Evaluator, seed: int, reward: Reward, run_dir: Path | None) -> int:
        rng = np.random.default_rng(seed)
        self._warm_up(evaluator, rng)
        surrogate = OnlineSurrogate(evaluator.supernet, evaluator.input_shape[-1], seed=seed, **self.surrogate_kwargs)
        world = ModelWorld(evaluator, surrogate, self.kappa)
        env = ArchEditEnv(world, reward, **self.env_kwargs)
        model = MaskablePPO("MlpPolicy", env, seed=seed, device=self.device, **self.algo_kwargs)
        tb_dir = self.tensorboard_dir or (run_dir / "tb" if run_dir else None)
        if tb_dir:
            model.set_logger(configure(str(Path(tb_dir) / "ppo_model"), ["tensorboard"]))
        rounds, limit = 0, max(1, int(evaluator.budget or 1)) * self.max_rounds_factor
        while not evaluator.budget_exhausted and rounds < limit:
            world.refit([evaluator.baseline, *evaluator.history])
            model.learn(total_timesteps=self.model_steps, reset_num_timesteps=False)
            evaluator.evaluate_many(self._proposals(evaluator, world, reward, rng))  # None beyond the budget
            rounds += 1
        self.model = model
        return int(model.num_timesteps)

    def _warm_up(self, evaluator: Evaluator, rng: np.random.Generator) -> None:
        max_edits = self.env_kwargs["max_edits"]
        evaluator.evaluate_many([random_walk(evaluator.space, evaluator.a0, int(rng.integers(1, max_edits + 1)), rng)
                                 for _ in range(self.init_evaluations)])

    def _proposals(self, evaluator: Evaluator, world: ModelWorld, reward: Reward,
                   rng: np.random.Generator) -> list[Arch]:
        """The round's best imagined networks never measured; random walks from the best real
        network fill up a round whose imagination found too few."""
        measured = {evaluator.network_key(m.arch) for m in [evaluator.baseline, *evaluator.history]}
        target = evaluator.target_accuracy
        fresh = [m for key, m in world.visited.items() if key not in measured]
        fresh.sort(key=lambda m: -reward(m, target))
        batch = [m.arch for m in fresh[:self.proposals]]
        start = (evaluator.best_feasible() or evaluator.baseline).arch
        seen = measured | {evaluator.network_key(a) for a in batch}
        for _ in range(20 * self.proposals):
            if len(batch) >= self.proposals:
                break
            arch = random_walk(evaluator.space, start, int(rng.integers(1, 4)), rng)
            key = evaluator.network_key(arch)
            if key not in seen:
                seen.add(key)
                batch.append(arch)
        return batch
