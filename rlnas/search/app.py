"""``rlnas-search``: the search, top to bottom.

compose (Hydra) -> supernet (find the trained checkpoint for model + dataset + recipe, or train
it) -> oracles (accuracy, latency with a0 as reference) -> evaluator (budget, cache, JSONL log,
TensorBoard) -> agent -> export of the best feasible architecture -> result table.

Rerunning with the same ``run_dir=<dir>`` resumes: measurements come back from the run's
``evaluations.jsonl`` (and the shared cache), the PPO agent from its last checkpoint, random
search and evolution by replaying their seeded proposals for free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import rlnas
from rlnas.oracles.evaluator import EvaluationLogger, Evaluator
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet

log = logging.getLogger("rlnas.search")

HISTORY_NAME = "evaluations.jsonl"
SUPERNET_META_NAME = "supernet.json"


class SetupError(RuntimeError):
    """Something the run needs is missing; the message says what and how to get it."""


@dataclass
class SearchSetup:
    """Everything built from a config that outlives one search (shared by agents and seeds)."""

    cfg: DictConfig
    supernet: Supernet
    meta: dict[str, Any]
    data: Any
    store: Any
    latency: Any
    accuracy: Any
    input_shape: tuple[int, int, int, int]
    model_id: str
    context: dict[str, Any]

    def evaluator(self, history_path: Path | None = None, loggers: list[EvaluationLogger] | None = None,
                  budget: int | None = None) -> Evaluator:
        """A fresh evaluator (its own history and budget) over the shared oracles and cache."""
        return Evaluator(self.supernet, self.latency, self.accuracy, self.input_shape, tau=float(self.cfg.tau),
                         budget=budget, logger=loggers, history_path=history_path, context=self.context,
                         model_id=self.model_id)

    def close(self) -> None:
        self.latency.close()


# -- supernet ---------------------------------------------------------------------------------


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def supernet_train_config(cfg: DictConfig) -> DictConfig:
    """The ``train_supernet`` config of this search config (same model, dataset and recipe)."""
    train = _plain(cfg.supernet.train)
    return OmegaConf.create({
        "model": _plain(cfg.model), "dataset": _plain(cfg.dataset), "recipe": _plain(cfg.recipe),
        "seed": int(cfg.supernet.seed), "threads": int(cfg.threads), "resolution": int(cfg.resolution),
        "output_dir": "", "max_seconds": cfg.supernet.max_seconds, "init": _plain(cfg.supernet.init),
        "checkpoint": train.get("checkpoint", {}), "eval": train.get("eval", {}), "log": train.get("log", {}),
    })


def supernet_dir(cfg: DictConfig) -> Path:
    """``<supernet.dir>/<model>-<dataset>-<recipe>-<hash>``: the hash covers everything that
    changes the trained weights, so different configs never share a directory."""
    train = supernet_train_config(cfg)
    ident = {k: _plain(train[k]) for k in ("model", "dataset", "recipe", "seed", "resolution", "init")}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{cfg.model.name}-{cfg.dataset.name}-{cfg.recipe.name}-{digest}"
    return Path(cfg.supernet.dir) / name


def build_supernet(cfg: DictConfig, num_classes: int) -> Supernet:
    """The untrained supernet of ``cfg.model`` (validates the model config early)."""
    kwargs = _plain(cfg.model.get("kwargs") or {})
    try:
        return create_supernet(cfg.model.name, num_classes=num_classes, **kwargs)
    except KeyError as err:
        raise SetupError(str(err)) from err


def find_or_train_supernet(cfg: DictConfig, num_classes: int) -> tuple[Supernet, dict[str, Any]]:
    """``supernet.checkpoint`` if set; else the checkpoint trained for this config under
    ``supernet.dir``; else train it now (resuming an interrupted training)."""
    from rlnas.supernet import CheckpointError, load_supernet

    expected = {**_plain(cfg.model.get("kwargs") or {}), "num_classes": num_classes}
    build_supernet(cfg, num_classes)
    if cfg.supernet.checkpoint:
        path = Path(cfg.supernet.checkpoint)
        if not path.exists():
            raise SetupError(
                f"supernet checkpoint {path} not found. Train one with `rlnas-train-supernet "
                f"model={cfg.model.name} dataset={cfg.dataset.name} recipe={cfg.recipe.name}` (it prints the "
                "path of supernet.pt), or drop supernet.checkpoint to let rlnas-search find or train it.")
    else:
        out = supernet_dir(cfg)
        path = out / "supernet.pt"
        if not path.is_file():
            from rlnas.supernet.train import train_supernet

            train_cfg = supernet_train_config(cfg)
            train_cfg.output_dir = str(out)
            log.info("no trained supernet for this config: training one into %s (recipe %s)", out, cfg.recipe.name)
            path = train_supernet(train_cfg)
    try:
        supernet, meta = load_supernet(path)
    except CheckpointError as err:
        raise SetupError(str(err)) from err
    if meta["family"] != cfg.model.name or meta["kwargs"] != expected:
        raise SetupError(f"supernet checkpoint {path} is {meta['family']}({meta['kwargs']}), the config asks "
                         f"for {cfg.model.name}({expected}); pass a matching supernet.checkpoint or drop it")
    torch.set_num_threads(int(cfg.threads))
    return supernet, meta


# -- oracles and evaluator -----------------------------------------------------------------------


def build_accuracy_oracle(cfg: DictConfig, supernet: Supernet, meta: dict[str, Any], data: Any, store: Any):
    """The accuracy oracle of ``cfg.accuracy`` for a trained supernet."""
    from rlnas.oracles.accuracy import AccuracyOracle

    acc = cfg.accuracy
    return AccuracyOracle(supernet, data, store, meta["checkpoint_id"], recal_images=int(acc.recal_images),
                          calib_images=int(acc.calib_images), eval_images=acc.eval_images,
                          fp32_images=acc.fp32_images, batch_size=int(acc.batch_size),
                          threads=int(cfg.threads), inference_precision=str(acc.inference_precision))


def model_id(meta: dict[str, Any]) -> str:
    """Identity of the network beyond its architecture (family and builder kwargs)."""
    return json.dumps({"family": meta["family"], "kwargs": meta["kwargs"]}, sort_keys=True)


def load_profile(cfg: DictConfig):
    """The device profile of ``cfg.device``, checked against this host."""
    from rlnas.oracles.device import DeviceProfileError, profile_from_config

    try:
        return profile_from_config(_plain(cfg.device))
    except DeviceProfileError as err:
        raise SetupError(str(err)) from err


def build_latency_oracle(cfg: DictConfig, supernet: Supernet, meta: dict[str, Any], store: Any, profile: Any):
    """The latency oracle of ``cfg.latency`` on ``profile``, with a0 as the interleaved reference."""
    from rlnas.oracles.latency import LatencyOracle, QuantizationConfig
    from rlnas.oracles.worker import TimingConfig

    a0 = supernet.space.max_arch()
    lat = cfg.latency
    return LatencyOracle(profile, store, Path(cfg.cache_dir), reference=lambda: supernet.extract(a0).eval(),
                         reference_key=f"{model_id(meta)}:{a0.to_json()}", timing=TimingConfig(**_plain(lat.timing)),
                         quantization=QuantizationConfig(subset_size=int(lat.subset_size)),
                         ratio_method=str(lat.ratio_method), timeout_s=float(lat.timeout_s))


def build_setup(cfg: DictConfig) -> SearchSetup:
    """Supernet, data, measurement store and both oracles for ``cfg``."""
    from rlnas.data import DatasetError, build_data
    from rlnas.oracles.store import MeasurementStore

    torch.set_num_threads(int(cfg.threads))
    profile = load_profile(cfg)
    try:
        data = build_data(cfg.dataset, int(cfg.resolution))
    except DatasetError as err:
        raise SetupError(str(err)) from err
    supernet, meta = find_or_train_supernet(cfg, int(data.num_classes))
    store = MeasurementStore(Path(cfg.cache_dir) / "measurements.sqlite")
    input_shape = (1, 3, int(cfg.resolution), int(cfg.resolution))
    accuracy = build_accuracy_oracle(cfg, supernet, meta, data, store)
    latency = build_latency_oracle(cfg, supernet, meta, store, profile)
    context = {"model": model_id(meta), "checkpoint_id": meta["checkpoint_id"], "dataset": data.identity()
               if hasattr(data, "identity") else str(cfg.dataset.name), "device": profile.key(),
               "accuracy": _plain(cfg.accuracy)}
    context = json.loads(json.dumps(context, default=str))
    return SearchSetup(cfg, supernet, meta, data, store, latency, accuracy, input_shape, model_id(meta), context)


# -- the run ------------------------------------------------------------------------------------


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The main knobs of a run, flat (TensorBoard hparams and the report)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    out = {"model": cfg.model.name, "dataset": cfg.dataset.name, "device": cfg.device.name,
           "agent": choices.get("agent", cfg.agent._target_.rsplit(".", 1)[-1]),
           "reward": choices.get("reward", cfg.reward._target_.rsplit(".", 1)[-1]),
           "tau": float(cfg.tau), "budget": int(cfg.budget), "seed": int(cfg.seed)}
    for k, v in _plain(cfg.agent).items():
        if k != "_target_" and isinstance(v, int | float | str | bool):
            out[f"agent.{k}"] = v
    return out


def run_search(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Search with ``cfg`` in ``run_dir`` (resuming what is there); returns the summary."""
    from rlnas.report import result_table
    from rlnas.search.callbacks import ProgressBar, TensorBoardLogger

    # 1. supernet (found or trained), data, oracles
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = build_setup(cfg)
    (run_dir / SUPERNET_META_NAME).write_text(json.dumps(
        {k: v for k, v in setup.meta.items() if k != "history"}, indent=2, default=str))
    # 2. evaluator: budget, run log (resume), TensorBoard
    reward = instantiate(cfg.reward)
    tb = TensorBoardLogger(run_dir / "tb", reward, int(cfg.logging.pareto_every)) if cfg.logging.tensorboard else None
    evaluator = setup.evaluator(run_dir / HISTORY_NAME, [tb] if tb else [], budget=int(cfg.budget))
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
        log.info("a0 %s: INT8 %.3f ms, FP32 acc %.4f, INT8 acc %.4f, target %.4f", baseline.arch.short(),
                 baseline.latency_ms, baseline.acc_fp32, baseline.acc_int8, evaluator.target_accuracy)
        bar = ProgressBar(evaluator) if cfg.logging.progress else None
        if bar:
            evaluator.add_logger(bar)
        agent = instantiate(cfg.agent)
        result = agent.run(evaluator, budget=int(cfg.budget), seed=int(cfg.seed), reward=reward, run_dir=run_dir)
        if bar:
            bar.close()
    except BaseException:
        setup.close()
        raise
    # 4. results, export of the best feasible architecture, the table
    best = result.best
    summary = {"run_dir": str(run_dir), "best": best.to_dict() if best else None,
               "baseline": baseline.to_dict(), "target": evaluator.target_accuracy,
               "unique_evaluations": evaluator.unique_evaluations, "budget": int(cfg.budget),
               "stats": vars(evaluator.stats), "agent": result.agent, "agent_steps": result.agent_steps,
               "wall_seconds": result.wall_seconds}
    (run_dir / "search_result.json").write_text(json.dumps(summary, indent=2, default=str))
    if tb:
        final = {"best_feasible_latency_ratio": best.latency_ratio if best else 1.0,
                 "best_feasible_acc_int8": best.acc_int8 if best else baseline.acc_int8,
                 "unique_evaluations": float(evaluator.unique_evaluations)}
        tb.close(final)
    if cfg.export.enabled:
        from rlnas.export import ExportError, export_run

        try:
            summary["export"] = export_run(cfg, run_dir, setup=setup)
        except ExportError as err:
            log.warning("export skipped: %s", err)
        finally:
            setup.close()
    else:
        setup.close()
    extra = {"oracle cache hits": f"{evaluator.stats.oracle_cache_hits} of {evaluator.unique_evaluations}",
             "constraint violations": evaluator.stats.violations, "failures": evaluator.stats.failures,
             "run directory": run_dir}
    if summary.get("export"):
        extra["exported to"] = summary["export"]["out_dir"]
    print("\n" + result_table(baseline, best, evaluator.target_accuracy, evaluator.unique_evaluations,
                              int(cfg.budget), extra))
    return summary


@hydra.main(config_path=str(rlnas.CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run_search(cfg, run_dir)
    except SetupError as err:
        log.error("%s", err)
        sys.exit(2)
    best = summary["best"]
    return float(best["latency_ratio"]) if best else 1.0  # for Hydra sweepers: lower is better


def main() -> None:
    """Console entry point ``rlnas-search``."""
    _app()


if __name__ == "__main__":
    main()
