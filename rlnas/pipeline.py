"""The search run, top to bottom (``rlnas-search`` and :func:`rlnas.api.search` call it).

compose (Hydra) -> run setup (:mod:`rlnas.runsetup`: a0, supernet found or trained from a0,
oracles on validation images, latency with a0 as reference) -> evaluator (budget, cache, JSONL
log, TensorBoard) -> agent -> finalists (:mod:`rlnas.finalists`: fine-tuned from a0, scored,
confirmed alongside a0) -> export (:mod:`rlnas.export`: artefacts of the chosen network and the
report) -> result table.

Rerunning with the same ``run_dir=<dir>`` resumes: measurements come back from the run's
``evaluations.jsonl`` (and the shared cache), the PPO agent from its last checkpoint, random
search and evolution by replaying their seeded proposals for free.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from rlnas.export import ExportError, export_run, load_run, run_target, wants_finalists
from rlnas.finalists import FinalistsConfig, run_finalists
from rlnas.oracles.profiling import ratio_label, time_label
from rlnas.report import result_table
from rlnas.runsetup import HISTORY_NAME, SUPERNET_META_NAME, RunSetup, SetupError, build_setup, plain
from rlnas.search.callbacks import ProgressBar, TensorBoardLogger
from rlnas.search.history import HistoryMismatch
from rlnas.timing import StageTimer

log = logging.getLogger("rlnas.search")


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The main knobs of a run, flat (TensorBoard hparams and the report)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    out = {"model": cfg.model.name, "dataset": cfg.dataset.name, "device": cfg.device.name,
           "agent": choices.get("agent", cfg.agent._target_.rsplit(".", 1)[-1]),
           "reward": choices.get("reward", cfg.reward._target_.rsplit(".", 1)[-1]),
           "tau": float(cfg.tau), "budget": int(cfg.budget), "seed": int(cfg.seed)}
    for k, v in plain(cfg.agent).items():
        if k != "_target_" and isinstance(v, int | float | str | bool):
            out[f"agent.{k}"] = v
    return out


def finalists_stage(cfg: DictConfig, run_dir: Path, setup: RunSetup) -> dict[str, Any] | None:
    """Fine-tune, score and confirm the run's finalists (resuming what is on disk and in the
    store); None when the run's result is not a finalist (:func:`~rlnas.export.wants_finalists`)."""
    baseline, candidates = load_run(run_dir)
    if not wants_finalists(cfg, setup, candidates):
        return None
    writer = SummaryWriter(str(run_dir / "tb" / "finetune")) if cfg.logging.tensorboard else None
    try:
        return run_finalists(setup, candidates, instantiate(cfg.reward), run_target(cfg, setup, baseline),
                             float(cfg.tau), run_dir, FinalistsConfig(**plain(cfg.finalists)), int(cfg.seed), writer)
    finally:
        if writer is not None:
            writer.close()


def run_search(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Search with ``cfg`` in ``run_dir`` (resuming what is there); returns the summary."""
    # 1. supernet (found or trained), data, oracles
    clock = StageTimer()
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = build_setup(cfg)
    clock.lap("setup")
    (run_dir / SUPERNET_META_NAME).write_text(json.dumps(
        {k: v for k, v in setup.meta.items() if k != "history"}, indent=2, default=str))
    # 2. evaluator: budget, run log (resume), TensorBoard
    reward = instantiate(cfg.reward)
    tb = TensorBoardLogger(run_dir / "tb", reward, int(cfg.logging.pareto_every)) if cfg.logging.tensorboard else None
    try:
        evaluator = setup.evaluator(run_dir / HISTORY_NAME, [tb] if tb else [], budget=int(cfg.budget))
    except HistoryMismatch as err:
        setup.close()
        raise SetupError(str(err)) from err
    if evaluator.unique_evaluations:
        log.info("resuming %s: %d of %d unique evaluations already made", run_dir,
                 evaluator.unique_evaluations, cfg.budget)
    if tb:
        tb.log_config(OmegaConf.to_yaml(cfg), hparams(cfg))
    # 3. a0, then the agent until the budget is used
    try:
        try:
            baseline = evaluator.baseline
        except RuntimeError as err:  # without a0's numbers there is no reference and no target
            raise SetupError(str(err)) from err
        a0 = setup.a0_accuracy("val")
        if a0 is not None:
            log.info("a0 %s as deployed (validation images): FP32 %.4f, INT8 %.4f; target %.4f", setup.a0.path,
                     a0.acc_fp32, a0.acc_int8, evaluator.target_accuracy)
        log.info("maximal subnet %s: INT8 %s %.3f ms (%s to a0 %.3f), FP32 acc %s, INT8 acc %.4f, target %.4f",
                 baseline.arch.short(), time_label(evaluator.latency_metric), baseline.latency_ms,
                 ratio_label(evaluator.latency_metric), baseline.latency_ratio or 1.0,
                 f"{baseline.acc_fp32:.4f}" if baseline.acc_fp32 is not None else "-", baseline.acc_int8,
                 evaluator.target_accuracy)
        clock.lap("a0 and maximal subnet")
        bar = ProgressBar(evaluator) if cfg.logging.progress else None
        if bar:
            evaluator.add_logger(bar)
        agent = instantiate(cfg.agent)
        result = agent.run(evaluator, budget=int(cfg.budget), seed=int(cfg.seed), reward=reward, run_dir=run_dir)
        evaluator.close()
        if bar:
            bar.close()
        clock.lap("search")
    except BaseException:
        evaluator.close(cancel=True)  # before the backend stops: no measurement cut short is recorded
        setup.close()
        raise
    # 4. results; finalists fine-tuned and confirmed; export of the chosen network; the table
    best = result.best
    summary = {"run_dir": str(run_dir), "best": best.to_dict() if best else None,
               "baseline": baseline.to_dict(), "target": evaluator.target_accuracy,
               "unique_evaluations": evaluator.unique_evaluations, "budget": int(cfg.budget),
               "stats": asdict(evaluator.stats), "agent": result.agent, "agent_steps": result.agent_steps,
               "wall_seconds": result.wall_seconds}
    (run_dir / "search_result.json").write_text(json.dumps(summary, indent=2, default=str))
    if tb:
        final = {"best_feasible_latency_ratio": best.latency_ratio if best else 1.0,
                 "best_feasible_acc_int8": best.acc_int8 if best else baseline.acc_int8,
                 "unique_evaluations": float(evaluator.unique_evaluations)}
        tb.close(final)
    predicted = bool((cfg.get("oracle") or {}).get("_target_"))
    if cfg.export.enabled and predicted:
        log.warning("export skipped: the oracles are a surrogate (oracle=surrogate); export a measured run")
    if cfg.export.enabled and not predicted:
        try:
            finalists_stage(cfg, run_dir, setup)
            clock.lap("finalists")
            summary["export"] = export_run(cfg, run_dir, setup=setup)
            clock.lap("export")
        except ExportError as err:
            log.warning("export skipped: %s", err)
        finally:
            setup.close()
    else:
        setup.close()
    summary["stage_seconds"] = {stage: round(seconds, 1) for stage, seconds in clock.seconds.items()}
    (run_dir / "search_result.json").write_text(json.dumps(summary, indent=2, default=str))
    extra = {} if a0 is None else {"a0 as deployed (validation images)": f"FP32 {a0.acc_fp32:.4f}, INT8 {a0.acc_int8:.4f}"}
    extra |= {"oracle cache hits": f"{evaluator.stats.oracle_cache_hits} of {evaluator.unique_evaluations}",
             "constraint violations": evaluator.stats.violations, "failures": evaluator.stats.failures,
             "wall time (this invocation)": clock.describe(), "run directory": run_dir}
    exported = summary.get("export")
    if exported:
        found = exported["found"]
        extra["exported"] = (f"{found['arch']}: speed-up {exported['speedup']:.2f}x"
                             + (" (confirmed alongside a0)" if found.get("confirmed_ratio")
                                else " (the search's timing, unconfirmed)")
                             + f", INT8 val {found['acc_int8']:.4f}"
                             + (f", INT8 held-out {found['holdout_int8']:.4f}" if found.get("holdout_int8") else "")
                             + ("" if found.get("feasible") else " (INFEASIBLE)"))
        extra["exported to"] = exported["out_dir"]
    print("\n" + result_table(baseline, best, evaluator.target_accuracy, evaluator.unique_evaluations,
                              int(cfg.budget), extra))
    return summary
