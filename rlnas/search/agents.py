"""Search agents behind one interface: ``agent.run(evaluator, budget, seed, ...) -> AgentResult``.

- :class:`PPOAgent`: (Maskable)PPO from Stable-Baselines3 / sb3-contrib on :class:`ArchEditEnv`.
- :class:`RandomSearch`: uniform samples from the space.
- :class:`RegularizedEvolution`: aging evolution (Real et al., 2019); mutation = one random edit.

The budget is the number of unique architectures measured by the evaluator (``evaluator.budget``
is set to it), identical for every agent. Every agent is deterministic given its seed and the
measurements, which makes resuming exact for random search and evolution: rerun them on the
restored evaluator and the steps already taken replay for free from the run's history (no
measurement is repeated) until they reach new ground. PPO resumes from its last checkpoint.
Agents are built from ``conf/agent/*.yaml`` with Hydra's ``_target_``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecMonitor

from rlnas.errors import ConfigError
from rlnas.search.callbacks import AtomicCheckpoint, StopOnBudget
from rlnas.search.env import ArchEditEnv, ConcurrentVecEnv, random_edit
from rlnas.search.evaluator import Evaluator
from rlnas.search.measurement import Measurement
from rlnas.search.reward import Reward, SoftReward

log = logging.getLogger(__name__)


@dataclass
class AgentResult:
    """What a search returns: the best feasible candidate (None if none) and the effort spent."""

    agent: str
    best: Measurement | None
    unique_evaluations: int
    agent_steps: int
    wall_seconds: float


class Agent:
    """Base class. Subclasses implement :meth:`_search`; ``run`` handles budget and timing."""

    name = "agent"

    def run(self, evaluator: Evaluator, budget: int, seed: int, reward: Reward | None = None,
            run_dir: str | Path | None = None, **_: Any) -> AgentResult:
        """Search until ``budget`` unique architectures have been measured (or the agent's step
        limit). ``reward`` is the objective to maximise (PPO's reward, evolution's fitness);
        ``run_dir`` holds agent checkpoints for resume."""
        evaluator.budget = int(budget)
        evaluator.baseline  # noqa: B018 -- measured first, outside the budget
        t0 = time.perf_counter()
        steps = self._search(evaluator, int(seed), reward or SoftReward(), Path(run_dir) if run_dir else None)
        return AgentResult(self.name, evaluator.best_feasible(), evaluator.unique_evaluations, steps,
                           time.perf_counter() - t0)

    def _search(self, evaluator: Evaluator, seed: int, reward: Reward, run_dir: Path | None) -> int:
        raise NotImplementedError


def _draw_limit(evaluator: Evaluator, factor: int) -> int:
    """Cap on proposals: a small space can run out of unseen architectures before the budget."""
    return max(1, int(evaluator.budget or 1)) * factor


class RandomSearch(Agent):
    """Uniform random samples from the space (each choice drawn independently).

    :param max_draws_factor: stop after ``budget * max_draws_factor`` samples even if the budget
        is not used up (tiny spaces).
    """

    name = "random"

    def __init__(self, max_draws_factor: int = 50) -> None:
        self.max_draws_factor = int(max_draws_factor)

    def _search(self, evaluator: Evaluator, seed: int, reward: Reward, run_dir: Path | None) -> int:
        rng = np.random.default_rng(seed)
        draws, limit = 0, _draw_limit(evaluator, self.max_draws_factor)
        while not evaluator.budget_exhausted and draws < limit:
            # a batch of parallelism samples: the same draws in the same order as one at a time
            batch = [evaluator.space.sample(rng) for _ in range(min(evaluator.parallelism, limit - draws))]
            evaluator.evaluate_many(batch)
            draws += len(batch)
        return draws


class RegularizedEvolution(Agent):
    """Aging evolution: tournament selection, one-edit mutation, the oldest member dies.

    :param population_size: members kept (P).
    :param sample_size: tournament size (S); the fittest of S random members is the parent.
    :param init: ``"random"`` (uniform samples, as in Real et al.) or ``"a0"`` (one random edit
        of a0 each, starting next to the original model like the PPO agent).
    :param max_cycles_factor: stop after ``budget * max_cycles_factor`` children (tiny spaces).
    """

    name = "evolution"

    def __init__(self, population_size: int = 10, sample_size: int = 3, init: str = "random",
                 max_cycles_factor: int = 50) -> None:
        if init not in ("random", "a0"):
            raise ConfigError(f"init must be 'random' or 'a0', got {init!r}")
        if not 1 <= sample_size <= population_size:
            raise ConfigError(f"need 1 <= sample_size ({sample_size}) <= population_size ({population_size})")
        self.population_size = int(population_size)
        self.sample_size = int(sample_size)
        self.init = init
        self.max_cycles_factor = int(max_cycles_factor)

    def _search(self, evaluator: Evaluator, seed: int, reward: Reward, run_dir: Path | None) -> int:
        """Asynchronous when the evaluator measures in parallel (as Real et al. ran it): a new
        child is proposed from the current population as soon as any measurement completes. With
        one measurement at a time this is the sequential algorithm, draw for draw."""
        rng = np.random.default_rng(seed)
        space, target = evaluator.space, evaluator.target_accuracy
        population: deque[Measurement] = deque()
        in_flight: list[Future[Measurement]] = []
        cycles, limit = 0, _draw_limit(evaluator, self.max_cycles_factor)
        while True:
            while (len(in_flight) < evaluator.parallelism and evaluator.can_submit and cycles < limit
                   and (population or len(in_flight) < self.population_size)):
                in_flight.append(evaluator.submit(self._propose(space, population, in_flight, reward, target, rng)))
                cycles += 1
            if not in_flight:
                return cycles
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in [f for f in in_flight if f in done]:  # in submission order
                in_flight.remove(future)
                population.append(future.result())
                if len(population) > self.population_size:
                    population.popleft()

    def _propose(self, space, population: deque[Measurement], in_flight: list, reward: Reward, target: float,
                 rng: np.random.Generator):
        """A member of the initial population (random, or one edit of a0), or a mutated
        tournament winner once the population is full."""
        if len(population) + len(in_flight) < self.population_size:
            return space.sample(rng) if self.init == "random" else random_edit(space, space.max_arch(), rng)
        picks = rng.choice(len(population), size=min(self.sample_size, len(population)), replace=False)
        parent = max((population[int(i)] for i in picks), key=lambda m: reward(m, target))
        return random_edit(space, parent.arch, rng)


class PPOAgent(Agent):
    """PPO (or MaskablePPO) on :class:`~rlnas.search.env.ArchEditEnv`.

    Environment: ``max_edits``, ``start``, ``invalid_action_penalty``. Algorithm: ``masked``
    (MaskablePPO with the env's ``action_masks``; else plain PPO, invalid edits are penalised
    no-ops) and SB3's hyperparameters as named there. ``n_steps`` is the rollout length per update:
    keep it well below the budget so the policy updates several times in a small run.

    :param checkpoint_freq: save the agent to ``<run_dir>/agent/ppo.zip`` every this many env
        steps (atomically); a rerun on the same run directory resumes from it.
    :param max_steps_per_evaluation: env-step limit per unit of budget (revisits are free, so a
        converged policy could otherwise loop without measuring anything new).
    :param tensorboard_dir: SB3's own logs (``rollout/``, ``train/``) go to ``<dir>/ppo``
        (default: ``<run_dir>/tb``).
    :param n_envs: environments collecting at once (:class:`~rlnas.search.env.ConcurrentVecEnv`):
        their steps' measurements run concurrently where the evaluator measures in parallel
        (the Ray backend); ``n_steps`` is per environment.
    """

    name = "ppo"

    def __init__(
        self,
        masked: bool = True,
        max_edits: int = 8,
        start: str = "a0",
        invalid_action_penalty: float = 0.05,
        policy: str = "MlpPolicy",
        net_arch: list[int] | None = None,
        learning_rate: float = 3e-4,
        n_steps: int = 16,
        batch_size: int = 8,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        checkpoint_freq: int = 8,
        max_steps_per_evaluation: int = 25,
        tensorboard_dir: str | None = None,
        device: str = "cpu",
        verbose: int = 0,
        n_envs: int = 1,
    ) -> None:
        self.masked = bool(masked)
        self.n_envs = max(1, int(n_envs))
        self.env_kwargs = {"max_edits": int(max_edits), "start": start,
                           "invalid_action_penalty": float(invalid_action_penalty)}
        self.policy = policy
        self.algo_kwargs = {
            "learning_rate": float(learning_rate), "n_steps": int(n_steps), "batch_size": int(batch_size),
            "n_epochs": int(n_epochs), "gamma": float(gamma), "gae_lambda": float(gae_lambda),
            "clip_range": float(clip_range), "ent_coef": float(ent_coef), "vf_coef": float(vf_coef),
            "max_grad_norm": float(max_grad_norm),
            "policy_kwargs": {"net_arch": list(net_arch or [64, 64])},
        }
        self.checkpoint_freq = int(checkpoint_freq)
        self.max_steps_per_evaluation = int(max_steps_per_evaluation)
        self.tensorboard_dir = tensorboard_dir
        self.device = device
        self.verbose = int(verbose)

    def make_env(self, evaluator: Evaluator, reward: Reward):
        if self.n_envs == 1:
            return ArchEditEnv(evaluator, reward, **self.env_kwargs)
        envs = [partial(ArchEditEnv, evaluator, reward, **self.env_kwargs)] * self.n_envs
        return VecMonitor(ConcurrentVecEnv(envs, evaluator))  # SB3's rollout/ep_* as with one env

    def _algo(self):
        return MaskablePPO if self.masked else PPO

    def _search(self, evaluator: Evaluator, seed: int, reward: Reward, run_dir: Path | None) -> int:
        env = self.make_env(evaluator, reward)
        ckpt = run_dir / "agent" / "ppo.zip" if run_dir else None
        algo = self._algo()
        if ckpt is not None and ckpt.exists():
            model = algo.load(ckpt, env=env, device=self.device)
            log.info("resuming PPO from %s at step %d", ckpt, model.num_timesteps)
            set_random_seed(seed + model.num_timesteps)
        else:
            model = algo(self.policy, env, seed=seed, device=self.device, verbose=self.verbose,
                         **self.algo_kwargs)
        tb_dir = self.tensorboard_dir or (run_dir / "tb" if run_dir else None)
        if tb_dir:
            model.set_logger(configure(str(Path(tb_dir) / "ppo"), ["tensorboard"]))
        callbacks = [StopOnBudget(evaluator)]
        if ckpt is not None:
            callbacks.append(AtomicCheckpoint(ckpt, self.checkpoint_freq))
        start = model.num_timesteps
        # SB3 adds num_timesteps to total_timesteps when reset_num_timesteps=False
        remaining = int(evaluator.budget or 1) * self.max_steps_per_evaluation - start
        if remaining > 0 and not evaluator.budget_exhausted:
            model.learn(total_timesteps=remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
        if ckpt is not None:
            AtomicCheckpoint.save(model, ckpt)
        self.model = model
        return model.num_timesteps - start
