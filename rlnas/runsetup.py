"""Run setup: from a composed config to the supernet, a0, the data, the oracles and the evaluator.

One module builds what a search, an export, the finalists and the experiments share, so they
measure exactly the same way:

    a0.checkpoint (the user's model)  ->  a0 as deployed: reference of the constraint and of latency
    supernet.checkpoint, or the one trained for this config under supernet.dir (from a0 when given)
    dataset -> train / validation / held-out images
    accuracy oracle (validation images; a second one on held-out images for reports)
    latency oracle (device profile, a0 interleaved as the reference)
    -> Evaluator (budget, run log, target = tau * a0's FP32 accuracy on validation images)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import rlnas
import rlnas.schema  # noqa: F401  (registers the search config's schema with Hydra: composing "config" needs it)
from rlnas.data import DatasetError
from rlnas.detection.pipeline import DetectionOptions
from rlnas.errors import UserError
from rlnas.oracles.accuracy import AccuracyOracle, AccuracyResult, TaskPipeline
from rlnas.oracles.device import DeviceProfileError, profile_from_config
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.store import MeasurementStore
from rlnas.oracles.surrogate import SurrogateError
from rlnas.rules import FieldError
from rlnas.search.evaluator import EvaluationLogger, Evaluator
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet
from rlnas.supernet import CheckpointError, load_supernet
from rlnas.supernet.a0 import A0Error, build_a0, file_sha256, resolve_a0
from rlnas.supernet.config import train_config
from rlnas.tasks import TaskError, build_data, get_task, task_pipeline

log = logging.getLogger("rlnas.setup")

HISTORY_NAME = "evaluations.jsonl"
SUPERNET_META_NAME = "supernet.json"


class SetupError(UserError, RuntimeError):
    """Something the run needs is missing or wrong; the message says what and how to fix it."""


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


# -- a0 ---------------------------------------------------------------------------------------------


@dataclass
class A0:
    """The user's trained model as deployed (its own BN statistics), the run's reference.

    :param model: the plain network (eval mode).
    :param path: its checkpoint; ``sha256`` identifies it in cache keys and reports.
    """

    model: nn.Module
    path: Path
    sha256: str
    accuracy: dict[str, AccuracyResult] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"a0:{self.sha256[:16]}"


def a0_path(cfg: DictConfig) -> Path | None:
    """``a0.checkpoint`` if set (it must exist); else ``a0.default`` where that file exists (e.g.
    the shared ResNet-50/CIFAR-10 a0); else None, said in one line."""
    section = cfg.get("a0") or {}
    try:
        if section.get("checkpoint"):
            return resolve_a0(section["checkpoint"])
        if section.get("default"):
            try:
                return resolve_a0(section["default"])
            except A0Error:
                log.warning("no a0: %s is not here (pass a0.checkpoint=<your trained model>); the supernet "
                            "is trained from scratch and its maximal subnet is the reference", section["default"])
    except A0Error as err:
        raise SetupError(str(err)) from err
    return None


def load_a0(cfg: DictConfig, num_classes: int) -> A0 | None:
    """a0 of the config (see :func:`a0_path`), checked against the family and class count."""
    path = a0_path(cfg)
    if path is None:
        return None
    kwargs = {**plain(cfg.model.get("kwargs") or {}), "num_classes": num_classes}
    try:
        model = build_a0(cfg.model.name, kwargs, path)
    except A0Error as err:
        raise SetupError(str(err)) from err
    return A0(model, path, file_sha256(path))


# -- supernet ---------------------------------------------------------------------------------------


def recipe_config(cfg: DictConfig, a0: Path | None) -> Any:
    """The recipe to train with: ``cfg.recipe``, or ``a0.fallback_recipe`` when the recipe
    distils from an a0 that this run does not have."""
    recipe = plain(cfg.recipe)
    if recipe.get("teacher") != "a0" or a0 is not None:
        return recipe
    fallback = cfg.a0.fallback_recipe
    path = rlnas.CONF_DIR / "recipe" / f"{fallback}.yaml"
    if not path.is_file():
        raise SetupError(f"recipe {recipe.get('name')!r} needs an a0 and a0.fallback_recipe={fallback!r} is not "
                         f"in {path.parent}")
    log.warning("recipe %r distils from a0, which this run has not: training with recipe %r from scratch",
                recipe.get("name"), fallback)
    return plain(OmegaConf.load(path))


def supernet_train_config(cfg: DictConfig, a0: Path | None = None) -> DictConfig:
    """The ``train_supernet`` config of this run's config, typed: the same model, dataset, recipe,
    a0 and seed, with ``supernet.train`` as its run options (both schemas' ``TrainOptions``)."""
    train = plain(cfg.supernet.train)
    return train_config({
        "model": plain(cfg.model), "dataset": plain(cfg.dataset), "recipe": recipe_config(cfg, a0),
        "seed": int(cfg.supernet.seed), "threads": int(cfg.threads), "resolution": int(cfg.resolution),
        "output_dir": "", "max_seconds": cfg.supernet.max_seconds, "init": plain(cfg.supernet.init),
        "a0": {"checkpoint": str(a0) if a0 else None}, **train,
    })


def supernet_dir(cfg: DictConfig, a0: A0 | None = None) -> Path:
    """``<supernet.dir>/<model>-<dataset>-<recipe>-<hash>``: the hash covers everything that
    changes the trained weights (a0 by content), so different configs never share a directory."""
    train = supernet_train_config(cfg, a0.path if a0 else None)
    ident = {k: plain(train[k]) for k in ("model", "dataset", "recipe", "seed", "resolution", "init")}
    ident["a0"] = a0.sha256 if a0 else None
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path(cfg.supernet.dir) / f"{cfg.model.name}-{cfg.dataset.name}-{train.recipe.name}-{digest}"


def build_supernet(cfg: DictConfig, num_classes: int) -> Supernet:
    """The untrained supernet of ``cfg.model`` (validates the model config early)."""
    kwargs = plain(cfg.model.get("kwargs") or {})
    try:
        return create_supernet(cfg.model.name, num_classes=num_classes, **kwargs)
    except KeyError as err:
        raise SetupError(str(err)) from err


def find_or_train_supernet(cfg: DictConfig, num_classes: int, a0: A0 | None = None) -> tuple[Supernet, dict]:
    """``supernet.checkpoint`` if set; else the checkpoint trained for this config under
    ``supernet.dir``; else train it now (resuming an interrupted training)."""
    expected = {**plain(cfg.model.get("kwargs") or {}), "num_classes": num_classes}
    build_supernet(cfg, num_classes)
    if cfg.supernet.checkpoint:
        path = Path(cfg.supernet.checkpoint)
        if path.is_dir():
            path = path / "supernet.pt"
        if not path.exists():
            raise SetupError(
                f"supernet checkpoint {path} not found. Train one with `rlnas-train-supernet "
                f"model={cfg.model.name} dataset={cfg.dataset.name} recipe={cfg.recipe.name}` (it prints the "
                "path of supernet.pt), or drop supernet.checkpoint to let rlnas-search find or train it.")
    else:
        out = supernet_dir(cfg, a0)
        path = out / "supernet.pt"
        if not path.is_file():
            train_cfg = supernet_train_config(cfg, a0.path if a0 else None)
            train_cfg.output_dir = str(out)
            log.info("no trained supernet for this config: training one into %s (recipe %s)", out,
                     train_cfg.recipe.name)
            path = get_task(cfg.dataset.get("task")).trainer(train_cfg).run()
    try:
        supernet, meta = load_supernet(path)
    except CheckpointError as err:
        raise SetupError(str(err)) from err
    if meta["family"] != cfg.model.name or meta["kwargs"] != expected:
        raise SetupError(f"supernet checkpoint {path} is {meta['family']}({meta['kwargs']}), the config asks "
                         f"for {cfg.model.name}({expected}); pass a matching supernet.checkpoint or drop it")
    torch.set_num_threads(int(cfg.threads))
    return supernet, meta


# -- oracles ---------------------------------------------------------------------------------------


def detection_options(cfg: DictConfig) -> DetectionOptions:
    """``cfg.detection`` (its defaults where a config has none), checked: a head group that is not
    one is a :class:`~rlnas.rules.FieldError` naming ``detection.fp32_heads`` and the valid ones."""
    try:
        return DetectionOptions(**(plain(cfg.get("detection")) or {}))
    except FieldError as err:
        raise err.at("detection.") from None


def run_pipeline(cfg: DictConfig, task: str | None) -> TaskPipeline:
    """The accuracy pipeline of ``task`` (None: classification) with the run's ``detection``
    settings: how both oracles, the finalists and the export quantize (the latency oracle takes its
    :meth:`~rlnas.oracles.accuracy.TaskPipeline.fp32_scope`)."""
    try:
        return task_pipeline(task, detection_options(cfg))
    except TaskError as err:
        raise SetupError(str(err)) from err


def build_accuracy_oracle(cfg: DictConfig, supernet: Supernet, meta: dict[str, Any], data: Any, store: Any,
                          split: str = "val", backend: Any = None) -> AccuracyOracle:
    """The accuracy oracle of ``cfg.accuracy`` for a trained supernet, scoring ``split`` images
    (the search's on the backend's accuracy workers when there is one) with the run's pipeline
    (:func:`run_pipeline`)."""
    # a partial from the config alone: the run's objects go to the constructor as they are
    build = instantiate(cfg.accuracy, _partial_=True)
    kwargs = {"supernet": supernet, "data": data, "store": store, "checkpoint_id": meta["checkpoint_id"],
              "threads": int(cfg.threads), "split": split, "pipeline": run_pipeline(cfg, supernet.task)}
    if backend is not None and split == "val":
        return backend.accuracy_oracle(build, dataset=cfg.dataset, resolution=int(cfg.resolution),
                                       checkpoint_path=meta["path"], **kwargs)
    return build(**kwargs)


def model_id(meta: dict[str, Any]) -> str:
    """Identity of the network beyond its architecture (family and builder kwargs)."""
    return json.dumps({"family": meta["family"], "kwargs": meta["kwargs"]}, sort_keys=True)


def load_profile(cfg: DictConfig, check_host: bool = True):
    """The device profile of ``cfg.device``, checked against this host (unless another machine
    measures: the Ray backend checks it on the device's node)."""
    try:
        return profile_from_config(plain(cfg.device), check_host=check_host)
    except DeviceProfileError as err:
        raise SetupError(str(err)) from err


def latency_metric(cfg: DictConfig) -> str:
    """``latency.metric``: what the search's latency ratios time (the schema's default: batch-1 latency)."""
    return str(cfg.latency.metric)


def build_latency_oracle(cfg: DictConfig, supernet: Supernet, meta: dict[str, Any], store: Any, profile: Any,
                         a0: A0 | None = None, backend: Any = None) -> LatencyOracle:
    """The latency oracle of ``cfg.latency`` on ``profile`` timing ``latency.metric``, with a0
    (else the maximal subnet) as the interleaved reference; its INT8 IRs leave in floating point
    what the run's accuracy pipeline leaves (:func:`run_pipeline`: ``detection.fp32_heads``)."""
    if a0 is not None:
        reference, key = (lambda: a0.model), f"{model_id(meta)}:{a0.key}"
    else:
        top = supernet.space.max_arch()
        reference, key = (lambda: supernet.extract(top).eval()), f"{model_id(meta)}:{top.to_json()}"
    build = instantiate(cfg.latency, _partial_=True)
    kwargs = {"profile": profile, "store": store, "cache_dir": Path(cfg.cache_dir), "reference": reference,
              "reference_key": key, "metric": latency_metric(cfg),
              "fp32_scope": run_pipeline(cfg, supernet.task).fp32_scope()}
    if backend is None:
        return build(**kwargs)
    try:
        return backend.latency_oracle(build, **kwargs)
    except DeviceProfileError as err:  # no node can measure on the device
        raise SetupError(str(err)) from err


def build_backend(cfg: DictConfig) -> Any:
    """``backend=ray``: the distributed backend of ``cfg.backend`` (not started); None: local."""
    node = cfg.get("backend") or {}
    return instantiate(node) if node.get("_target_") else None


def build_surrogate_oracles(cfg: DictConfig, supernet: Supernet, context: dict[str, Any]) -> tuple[Any, Any]:
    """``oracle=surrogate``: accuracy and latency predicted from a table of real measurements."""
    build = instantiate(cfg.oracle, _partial_=True)
    try:
        return build(supernet=supernet, resolution=int(cfg.resolution), context=context)
    except SurrogateError as err:
        raise SetupError(str(err)) from err


# -- the whole setup ---------------------------------------------------------------------------------


@dataclass
class RunSetup:
    """Everything built from a config that outlives one search (shared by agents, seeds, export)."""

    cfg: DictConfig
    supernet: Supernet
    meta: dict[str, Any]
    data: Any
    store: MeasurementStore
    latency: LatencyOracle
    accuracy: AccuracyOracle
    input_shape: tuple[int, int, int, int]
    model_id: str
    context: dict[str, Any]
    a0: A0 | None = None
    backend: Any = None
    _holdout: AccuracyOracle | None = None

    @property
    def holdout(self) -> AccuracyOracle:
        """An accuracy oracle like :attr:`accuracy` on the held-out images (reports only)."""
        if self._holdout is None:
            self._holdout = build_accuracy_oracle(self.cfg, self.supernet, self.meta, self.data, self.store,
                                                  split="holdout")
        return self._holdout

    def a0_accuracy(self, split: str = "val") -> AccuracyResult | None:
        """a0's FP32 and INT8 accuracy as deployed on ``split`` (measured once, cached), or None
        without an a0."""
        if self.a0 is None:
            return None
        if split not in self.a0.accuracy:
            oracle = self.accuracy if split == "val" else self.holdout
            result = oracle.evaluate_model(self.a0.model, self.a0.key)
            if not result.ok:
                raise SetupError(f"cannot score a0 ({self.a0.path}) on {split} images: {result.reason}")
            self.a0.accuracy[split] = result
        return self.a0.accuracy[split]

    def evaluator(self, history_path: Path | None = None, loggers: list[EvaluationLogger] | None = None,
                  budget: int | None = None) -> Evaluator:
        """A fresh evaluator (its own history and budget) over the shared oracles and cache."""
        return Evaluator(self.supernet, self.latency, self.accuracy, self.input_shape, tau=float(self.cfg.tau),
                         budget=budget, logger=loggers, history_path=history_path, context=self.context,
                         model_id=self.model_id, reference=self.a0_accuracy("val"),
                         parallelism=self.backend.parallelism if self.backend is not None else 1)

    def close(self) -> None:
        self.latency.close()
        if hasattr(self.accuracy, "close"):  # remote accuracy actors
            self.accuracy.close()
        if self.backend is not None:
            self.backend.stop()


def build_setup(cfg: DictConfig) -> RunSetup:
    """Supernet, a0, data, measurement store and both oracles for ``cfg``."""
    torch.set_num_threads(int(cfg.threads))
    backend = build_backend(cfg)
    predicted = bool((cfg.get("oracle") or {}).get("_target_"))
    profile = load_profile(cfg, check_host=backend is None and not predicted)  # else: checked where it is measured
    try:
        data = build_data(cfg.dataset, int(cfg.resolution))
    except (DatasetError, TaskError) as err:
        raise SetupError(str(err)) from err
    scope = run_pipeline(cfg, cfg.dataset.get("task")).fp32_scope()  # refused now, not after training
    a0 = load_a0(cfg, int(data.num_classes))
    supernet, meta = find_or_train_supernet(cfg, int(data.num_classes), a0)
    store = MeasurementStore(Path(cfg.cache_dir) / "measurements.sqlite")
    input_shape = (1, 3, int(cfg.resolution), int(cfg.resolution))
    context = {"model": model_id(meta), "checkpoint_id": meta["checkpoint_id"], "dataset": data.identity()
               if hasattr(data, "identity") else str(cfg.dataset.name), "device": profile.key(),
               "accuracy": plain(cfg.accuracy), "a0": a0.sha256 if a0 else None}
    if latency_metric(cfg) != "latency":  # only then: the logs of latency runs keep their context
        context["latency_metric"] = latency_metric(cfg)
    if scope is not None:  # only then (fp32_heads): the logs of runs quantizing every head keep their context
        context.update(scope.identity())
    if predicted:
        context["oracle"] = plain(cfg.oracle)  # only here: measured runs' logs keep their context
        accuracy, latency = build_surrogate_oracles(cfg, supernet, json.loads(json.dumps(context, default=str)))
    else:
        if backend is not None:
            backend.start([profile.name])
        accuracy = build_accuracy_oracle(cfg, supernet, meta, data, store, backend=backend)
        latency = build_latency_oracle(cfg, supernet, meta, store, profile, a0, backend=backend)
    context = json.loads(json.dumps(context, default=str))
    return RunSetup(cfg, supernet, meta, data, store, latency, accuracy, input_shape, model_id(meta), context, a0,
                    backend)
