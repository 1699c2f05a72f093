"""Search logging and SB3 callbacks.

Evaluation loggers (called by the :class:`~rlnas.search.evaluator.Evaluator` after each new
measurement, for every agent alike):

- :class:`TensorBoardLogger`: ``search/`` (reward, best feasible latency ratio and accuracy,
  constraint violations, unique evaluations), ``oracle/`` (stage timings, cache hit rate), the
  Pareto figure every ``pareto_every`` evaluations, the best architecture as text, the config.
- :class:`ProgressBar`: tqdm, unique evaluations / budget.

SB3 callbacks for the PPO agent: :class:`StopOnBudget` and :class:`AtomicCheckpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from rlnas.oracles.profiling import ratio_label, time_label
from rlnas.search.evaluator import Evaluator
from rlnas.search.measurement import Measurement
from rlnas.search.pareto import pareto_figure
from rlnas.search.reward import Reward


class TensorBoardLogger:
    """Write the search's progress to TensorBoard; the x axis is the unique evaluation count.

    :param log_dir: event file directory (the run directory's ``tb/``).
    :param reward: the objective, logged as ``search/reward`` for each measurement.
    :param pareto_every: add the Pareto figure every this many unique evaluations (and at close).
    """

    def __init__(self, log_dir: str | Path, reward: Reward, pareto_every: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.reward = reward
        self.pareto_every = max(1, int(pareto_every))
        self._best: Measurement | None = None
        self._evaluator: Evaluator | None = None

    def log_config(self, config_yaml: str, hparams: dict[str, Any]) -> None:
        """The composed config as text and the main hyperparameters as a table."""
        self.writer.add_text("config/yaml", "```\n" + config_yaml + "\n```")
        table = "| hparam | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
        self.writer.add_text("config/hparams", table)
        self._hparams = hparams

    def on_measurement(self, evaluator: Evaluator, m: Measurement) -> None:
        self._evaluator = evaluator
        if m.arch == evaluator.a0:
            self._log_baseline(m)
            return
        step = evaluator.unique_evaluations
        w = self.writer
        w.add_scalar("search/reward", self.reward(m, evaluator.target_accuracy), step)
        w.add_scalar("search/unique_evaluations", step, step)
        w.add_scalar("search/constraint_violations", evaluator.stats.violations, step)
        w.add_scalar("search/failures", evaluator.stats.failures, step)
        if m.ok:
            w.add_scalar("search/latency_ratio", m.latency_ratio, step)
            w.add_scalar("search/acc_int8", m.acc_int8, step)
            if m.acc_fp32 is not None:  # None with accuracy.fp32_images=0 (candidates skip FP32)
                w.add_scalar("search/acc_fp32", m.acc_fp32, step)
        best = evaluator.best_feasible()
        if best is not None:
            w.add_scalar("search/best_feasible_latency_ratio", best.latency_ratio, step)
            w.add_scalar("search/best_feasible_acc_int8", best.acc_int8, step)
            if best is not self._best:
                w.add_text("search/best_architecture", _arch_text(best), step)
                self._best = best
        for stage, seconds in m.stage_seconds.items():
            w.add_scalar(f"oracle/{stage}_seconds", seconds, step)
        w.add_scalar("oracle/evaluation_seconds", _total_seconds(m.stage_seconds), step)
        w.add_scalar("oracle/cache_hit_rate", evaluator.stats.oracle_cache_hits / max(1, step), step)
        if step % self.pareto_every == 0:
            self.add_pareto(evaluator)
        w.flush()

    def _log_baseline(self, m: Measurement) -> None:
        self.writer.add_text("search/baseline_a0", _arch_text(m), 0)
        self.writer.add_scalar("search/baseline_latency_ms", m.latency_ms, 0)
        self.writer.add_scalar("search/baseline_acc_int8", m.acc_int8, 0)
        self.writer.flush()

    def add_pareto(self, evaluator: Evaluator) -> None:
        import matplotlib.pyplot as plt

        metric = getattr(evaluator.accuracy_oracle, "metric", "top-1")
        fig = pareto_figure(evaluator.history, evaluator.baseline, evaluator.target_accuracy,
                            evaluator.best_feasible(), metric=f"{metric} accuracy")
        self.writer.add_figure("search/pareto_front", fig, evaluator.unique_evaluations)
        plt.close(fig)

    def close(self, final_metrics: dict[str, float] | None = None) -> None:
        """Final Pareto figure, hyperparameters with the final metrics, flush."""
        if self._evaluator is not None and self._evaluator.history:
            self.add_pareto(self._evaluator)
        if final_metrics is not None:
            hparams = {k: v if isinstance(v, int | float | str | bool) else str(v)
                       for k, v in getattr(self, "_hparams", {}).items()}
            self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final_metrics.items()},
                                    run_name="hparams")
        self.writer.flush()
        self.writer.close()


def _total_seconds(stages: dict[str, float]) -> float:
    """Wall time of one evaluation: each oracle's ``total`` (its stages are parts of it)."""
    oracles = {k.split("/", 1)[0] for k in stages if "/" in k}
    return sum(stages.get(f"{o}/total", sum(v for k, v in stages.items() if k.startswith(f"{o}/")))
               for o in oracles)


def _arch_text(m: Measurement) -> str:
    """One measured architecture as TensorBoard text; its ratio and time labelled with the latency
    metric they are in, as the progress bar and the result table do."""
    return (f"`{m.arch.short()}`  \n{ratio_label(m.latency_metric)} {m.latency_ratio}, "
            f"{time_label(m.latency_metric)} {m.latency_ms} ms, "
            f"INT8 acc {m.acc_int8}, FP32 acc {m.acc_fp32}, params {m.params}, MACs {m.macs}  \n"
            f"`{m.arch.to_json()}`")


class ProgressBar:
    """tqdm bar of unique evaluations / budget with the best feasible ratio so far, labelled with
    what the ratio times (the latency oracle's metric)."""

    def __init__(self, evaluator: Evaluator, desc: str = "search") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=evaluator.budget, initial=evaluator.unique_evaluations, desc=desc,
                        unit="arch", dynamic_ncols=True)

    def on_measurement(self, evaluator: Evaluator, m: Measurement) -> None:
        if m.arch == evaluator.a0:
            return
        self.bar.update(evaluator.unique_evaluations - self.bar.n)
        best = evaluator.best_feasible()
        # the search's own timing of the best candidate: the exported speed-up comes from the confirmation
        ratio = f"{best.latency_ratio:.3f} ({evaluator.latency_metric}, unconfirmed)" if best else "-"
        self.bar.set_postfix(best_search_ratio=ratio,
                             cache_hits=evaluator.stats.oracle_cache_hits, refresh=False)

    def close(self) -> None:
        self.bar.close()


class StopOnBudget(BaseCallback):
    """Stop SB3 training once the evaluator's budget of unique evaluations is used up."""

    def __init__(self, evaluator: Evaluator, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.evaluator = evaluator

    def _on_step(self) -> bool:
        return not self.evaluator.budget_exhausted


class AtomicCheckpoint(BaseCallback):
    """Save the model to one file every ``save_freq`` steps, atomically (write, then rename),
    so a ``kill -9`` during a save leaves the previous checkpoint intact."""

    def __init__(self, path: str | Path, save_freq: int, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.path = Path(path)
        self.save_freq = max(1, int(save_freq))

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            self.save(self.model, self.path)
        return True

    @staticmethod
    def save(model: Any, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.zip")
        model.save(tmp)
        os.replace(tmp, path)
