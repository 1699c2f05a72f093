"""The typed config of ``rlnas-search``: every key's type, default and valid values, in one place.

:class:`SearchConfig` is registered with Hydra's ConfigStore as ``schema/search``, the first entry
of ``conf/config.yaml``'s defaults list: Hydra composes the groups and the YAML over it, so a value
of the wrong type (``budget=abc``) or an unknown key is refused while composing, and the YAML only
sets what differs from these defaults. (``conf/export.yaml`` overrides it with ``schema/export``,
:class:`ExportCommandConfig`, which adds ``rlnas-export``'s ``run``.)

Each default and each range is written once:

- a dataclass rlnas builds from the config declares them in its own fields, with their rules
  (:mod:`rlnas.rules`): :class:`~rlnas.oracles.ratios.TimingConfig`,
  :class:`~rlnas.supernet.finetune.FineTuneOptions` and :class:`FinalistsConfig`, which extends it;
  its Hydra node is a mutable copy of its fields (:func:`node_of`: Hydra makes a frozen dataclass
  a read-only node, which no override could change);
- the oracles' settings take their defaults from the oracle's constructor, and their rules are
  given here (:class:`AccuracyConfig`, :class:`LatencyConfig`,
  :class:`~rlnas.oracles.irbuild.QuantizationConfig`'s node);
- the rest of the search's keys are defined here.

:func:`check` checks a composed config against the rules before anything runs
(:func:`rlnas.validate.check_search`); :func:`rules` lists them by key.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import Field, dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import II, MISSING, DictConfig, OmegaConf

from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.oracles.device import INFERENCE_PRECISIONS
from rlnas.oracles.irbuild import QuantizationConfig
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.profiling import METRICS
from rlnas.oracles.ratios import RATIO_METHODS, TimingConfig
from rlnas.rules import RULE, FieldError, Rule, UnknownKeyError, integer, number, one_of, rule_of, ruled
from rlnas.supernet.finetune import FineTuneOptions

#: how the finalists are picked among the eligible candidates
RANKINGS = ("objective", "latency")
#: how a fine-tuned finalist becomes INT8
QUANTIZATIONS = ("ptq", "accuracy_control")

# -- building blocks ---------------------------------------------------------------------------------


def target_of(cls: type) -> str:
    """The ``_target_`` Hydra instantiates ``cls`` by."""
    return f"{cls.__module__}.{cls.__qualname__}"


def defaults_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The default of each parameter of ``fn`` (a class: its constructor) that has one."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _copy(spec: Field, kind: Any, rule: Rule | None) -> tuple[str, Any, Field]:
    metadata = {**spec.metadata, **({RULE: rule} if rule else {})}
    if spec.default_factory is not NO_DEFAULT:
        return spec.name, kind, field(default_factory=spec.default_factory, metadata=metadata)
    return spec.name, kind, field(default=spec.default, metadata=metadata)


def node_of(source: type, target: bool, rules: dict[str, Rule] | None = None) -> type:
    """The Hydra node of dataclass ``source``: a mutable dataclass with its fields, types, defaults
    and rules (plus ``rules``), and ``_target_`` = ``source`` when ``target`` (Hydra instantiates
    the node as ``source``). :func:`check` builds ``source`` from the node, so its
    ``__post_init__`` checks what no single field can (``block_skip`` below ``block_iters``)."""
    rules = rules or {}
    kinds = typing.get_type_hints(source)
    copied = [_copy(spec, kinds[spec.name], rules.get(spec.name)) for spec in fields(source)]
    head = [("_target_", str, field(default=target_of(source)))] if target else []
    return make_dataclass(f"{source.__name__}Node", head + copied,
                          namespace={"__module__": __name__, "__doc__": f"The config node of :class:`{source.__name__}`.",
                                     "SOURCE": source})


# -- the finalists -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalistsConfig(FineTuneOptions):
    """``cfg.finalists``: the fine-tuning fields of :class:`FineTuneOptions` (inherited, so their
    defaults are its own) and the rest of the finalists stage (:mod:`rlnas.finalists`).

    :param k: how many candidates to fine-tune and confirm (0: none; the export then takes the
        search's best feasible candidate as measured).
    :param margin: candidates up to this much accuracy below the target may be finalists.
    :param rank: how the eligible candidates are ordered: ``objective`` (the reward's, so a hard
        reward puts every feasible one first) or ``latency`` (the fastest first: near-misses that
        fine-tuning may lift over the target compete with feasible ones on speed alone).
    :param calib_images: real training images to quantize each finalist (and a0) by NNCF.
    :param confidence: with which the chosen finalist must meet the bound on validation images
        (one-sided, split over the finalists compared; :func:`rlnas.stats.bound_test`).
    :param confirm_timing: :class:`TimingConfig` fields of the confirmation over the search's
        ``latency.timing`` (longer: a0 and every finalist, interleaved).
    :param confirm_passes: confirmation passes (each a full interleaved measurement of a0 and the
        finalists); a finalist's confirmed ratio is its median over them (on a shared machine
        passes drift apart by more than each pass's own interval says).
    :param quantization: how each fine-tuned finalist becomes INT8: ``ptq`` (NNCF post-training
        quantization on ``calib_images`` real images, as the search measured) or
        ``accuracy_control`` (``nncf.quantize_with_accuracy_control``: then quantizers are
        reverted to FP32 until the INT8 top-1 on the *validation* images is at most ``max_drop``
        below the FP32 model's; slower, classification only). Its INT8 model is the one scored,
        confirmed and exported.
    :param max_drop: the absolute accuracy drop ``accuracy_control`` allows.
    """

    k: int = ruled(3, integer(0, note="0: no finalists"))
    margin: float = ruled(0.01, number(0))
    rank: str = ruled("objective", one_of(*RANKINGS))
    calib_images: int = ruled(300, integer(1))
    confidence: float = ruled(0.9, number(0, 1, low_open=True, high_open=True))
    confirm_timing: dict[str, Any] = field(default_factory=lambda: {"min_rounds": 30, "min_time_s": 20.0,
                                                                   "max_time_s": 240.0})
    confirm_passes: int = ruled(3, integer(1))
    quantization: str = ruled("ptq", one_of(*QUANTIZATIONS))
    max_drop: float = ruled(0.01, number(0, 1, low_open=True))

    def tuning(self) -> FineTuneOptions:
        """The fine-tuning fields, as :class:`~rlnas.supernet.finetune.FineTune` takes them."""
        return FineTuneOptions(**{f.name: getattr(self, f.name) for f in fields(FineTuneOptions)})


# -- the nodes ---------------------------------------------------------------------------------------

TimingNode = node_of(TimingConfig, target=True)
QuantizationNode = node_of(QuantizationConfig, target=True, rules={
    "subset_size": integer(1), "random_subset_size": integer(1), "inplace_min_pixels": integer(0)})
FinalistsNode = node_of(FinalistsConfig, target=False)

_ACCURACY = defaults_of(AccuracyOracle)
_LATENCY = defaults_of(LatencyOracle)


@dataclass
class AccuracyConfig:
    """``cfg.accuracy``: the :class:`~rlnas.oracles.accuracy.AccuracyOracle` the run setup
    instantiates (its parameters say what each key means; their defaults are its own). These keys
    are part of a run's identity (its log's context); another parameter of the oracle may be
    added with ``+accuracy.<name>=<value>`` (:func:`check`)."""

    _target_: str = target_of(AccuracyOracle)
    recal_images: int = ruled(_ACCURACY["recal_images"], integer(0, note="0: keep the supernet's BN statistics"))
    calib_images: int = ruled(_ACCURACY["calib_images"], integer(1))
    eval_images: int | None = ruled(_ACCURACY["eval_images"], integer(1, null="the whole split"))
    fp32_images: int | None = ruled(_ACCURACY["fp32_images"], integer(0, null="same as INT8", note="0: skip"))
    batch_size: int = ruled(_ACCURACY["batch_size"], integer(1))
    inference_precision: str = ruled(_ACCURACY["inference_precision"], one_of(*INFERENCE_PRECISIONS))


@dataclass
class LatencyConfig:
    """``cfg.latency``: the :class:`~rlnas.oracles.latency.LatencyOracle` the run setup
    instantiates, a0 its reference (its parameters say what each key means; their defaults are its
    own). ``metric``: what is timed, single-image ``latency`` or OpenVINO's ``throughput`` mode
    (:data:`~rlnas.oracles.profiling.METRICS`). Another parameter of the oracle may be added with
    ``+latency.<name>=<value>`` (``+latency.lock_path=...``)."""

    _target_: str = target_of(LatencyOracle)
    metric: str = ruled(_LATENCY["metric"], one_of(*METRICS))
    ratio_method: str = ruled(_LATENCY["ratio_method"], one_of(*RATIO_METHODS))
    timeout_s: float = ruled(_LATENCY["timeout_s"], number(0, low_open=True, note="seconds"))
    quantization: QuantizationNode = field(default_factory=QuantizationNode)  # NNCF for the timed IR (random data)
    timing: TimingNode = field(default_factory=TimingNode)


@dataclass
class A0Config:
    """``cfg.a0``: the model you deploy today, the constraint's reference and the supernet's start.

    :param checkpoint: a torchvision-format state dict trained for the task (``num_classes`` outputs).
    :param default: used when ``checkpoint`` is null and this file exists (experiments set the shared a0).
    :param fallback_recipe: the recipe to train from scratch with when the recipe needs an a0 and there is none.
    """

    checkpoint: str | None = None
    default: str | None = None
    fallback_recipe: str = "default"


@dataclass
class SupernetInit:
    """``cfg.supernet.init``: the initial weights of the maximal network."""

    checkpoint: str | None = None
    torchvision: bool = False


@dataclass
class SupernetConfig:
    """``cfg.supernet``.

    :param checkpoint: a ``supernet.pt`` (or its training directory); null: find or train one.
    :param dir: trained supernets: ``<dir>/<model>-<dataset>-<recipe>-<config hash>/``.
    :param max_seconds: cap on training time; a supernet cut short is still written and used.
    :param train: the trainer's checkpoint / eval / log options (the ``train_options`` group).
    """

    checkpoint: str | None = None
    dir: str = "${cache_dir}/supernets"
    seed: int = ruled(0, integer(0))
    max_seconds: float | None = ruled(None, number(0, low_open=True, null="no cap", note="seconds"))
    init: SupernetInit = field(default_factory=SupernetInit)
    train: Any = MISSING


@dataclass
class ExportConfig:
    """``cfg.export``: ``rlnas-export``, also run at the end of the search.

    :param finetune_epochs: with ``finalists.k=0`` only: fine-tune the found network from a0 (0:
        supernet weights).
    :param calib_images: real training images to quantize the exported INT8 IR.
    :param verify_images: INT8 accuracy (top-1, mAP@.5) of the exported IR on this many validation
        images (null: the evaluation set, 0: skip).
    """

    enabled: bool = True
    finetune_epochs: int = ruled(0, integer(0))
    finetune_lr: float = ruled(0.01, number(0, low_open=True))
    finetune_batch_size: int = ruled(64, integer(1))
    kd_temperature: float = ruled(1.0, number(0, low_open=True))
    calib_images: int = ruled(300, integer(1))
    verify_images: int | None = ruled(None, integer(0, null="the evaluation set", note="0: skip"))
    onnx_opset: int = ruled(17, integer(7))


@dataclass
class LoggingConfig:
    """``cfg.logging``: TensorBoard under ``<run_dir>/tb``, the Pareto figure every
    ``pareto_every`` unique evaluations, tqdm bars."""

    tensorboard: bool = True
    pareto_every: int = ruled(10, integer(1))
    progress: bool = True


@dataclass
class SearchConfig:
    """The composed config of ``rlnas-search``: the groups (their own keys), then the search's.

    :param seed: the search's seed.
    :param tau: feasible iff Acc_INT8(a) >= ``tau`` * Acc_FP32(a0).
    :param budget: unique measured architectures (a0 excluded), the same for every agent.
    :param resolution: input side in pixels (the model's by default).
    :param threads: torch threads of this process (the oracles set their own).
    :param cache_dir: the measurement store, IRs and trained supernets, shared by runs.
    :param run_dir: where the run writes; rerun with the same ``run_dir`` to resume or extend it.
    :param ray: ``backend=ray``'s cluster (``ray.address``); null with the local backend.
    """

    model: Any = MISSING
    dataset: Any = MISSING
    recipe: Any = MISSING
    device: Any = MISSING
    agent: Any = MISSING
    reward: Any = MISSING
    oracle: Any = field(default_factory=dict)
    backend: Any = field(default_factory=dict)
    ray: Any = None
    seed: int = ruled(0, integer(0))
    tau: float = ruled(0.99, number(0, 1, low_open=True, note="feasible iff Acc_INT8 >= tau * Acc_FP32(a0)"))
    budget: int = ruled(100, integer(1, note="unique architectures measured"))
    resolution: int = ruled(II("model.resolution"), integer(8, note="pixels"))
    threads: int = ruled(2, integer(1))
    cache_dir: str = "cache"
    run_dir: str = "outputs/search/${model.name}-${dataset.name}-${device.name}/${now:%Y-%m-%d_%H-%M-%S}"
    a0: A0Config = field(default_factory=A0Config)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    finalists: FinalistsNode = field(default_factory=FinalistsNode)
    export: ExportConfig = field(default_factory=ExportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class ExportCommandConfig(SearchConfig):
    """``rlnas-export``'s config: the search's and the run to export."""

    run: str = MISSING


#: conf/config.yaml: ``- schema: search``; conf/export.yaml: ``- override schema: export``
ConfigStore.instance().store(group="schema", name="search", node=SearchConfig, package="_global_")
ConfigStore.instance().store(group="schema", name="export", node=ExportCommandConfig, package="_global_")


# -- checking ----------------------------------------------------------------------------------------


def _is_node(kind: Any) -> bool:
    return isinstance(kind, type) and is_dataclass(kind)


def rules(schema: type = SearchConfig, prefix: str = "") -> Iterator[tuple[str, Rule]]:
    """Every key of ``schema`` that has a rule, with it, nested nodes included (``latency.timing.min_rounds``)."""
    kinds = typing.get_type_hints(schema)
    for spec in fields(schema):
        if _is_node(kinds[spec.name]):
            yield from rules(kinds[spec.name], f"{prefix}{spec.name}.")
        elif rule_of(spec) is not None:
            yield f"{prefix}{spec.name}", rule_of(spec)


def _build_source(node: DictConfig, source: type, path: str) -> None:
    """``source`` from the node's values: its ``__post_init__`` checks what one field cannot."""
    values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    try:
        source(**values)
    except FieldError as err:
        raise err.at(path) from None


def added_keywords(schema: type) -> list[str]:
    """The keywords a node of ``schema`` may have beyond its fields: with a ``_target_`` that is not
    a dataclass (an oracle), the other parameters with a default of the target's constructor;
    else none."""
    target = next((spec.default for spec in fields(schema) if spec.name == "_target_"), None)
    built = get_object(target) if isinstance(target, str) else None
    if built is None or is_dataclass(built):
        return []
    names = {spec.name for spec in fields(schema)}
    return [name for name in defaults_of(built) if name not in names]


def _check_keys(cfg: DictConfig, schema: type, path: str) -> None:
    """Every key of ``cfg`` is a field of ``schema`` or a keyword it may add (Hydra's ``+key=value``)."""
    known = [spec.name for spec in fields(schema) if spec.name != "_target_"]
    added = added_keywords(schema)
    for key in cfg:
        if key not in known and key != "_target_" and key not in added:
            raise UnknownKeyError(f"{path}{key}", known + added)


def check(cfg: DictConfig, path: str = "") -> DictConfig:
    """Raise :class:`~rlnas.rules.FieldError` for the first value of the typed ``cfg`` (a
    :func:`typed` config or a Hydra-composed one) a rule refuses, named by its full key, and
    :class:`~rlnas.rules.UnknownKeyError` for a key the schema does not know."""
    schema = OmegaConf.get_type(cfg)
    kinds = typing.get_type_hints(schema)
    _check_keys(cfg, schema, path)
    for spec in fields(schema):
        if OmegaConf.is_missing(cfg, spec.name):
            continue
        if _is_node(kinds[spec.name]):
            check(cfg[spec.name], f"{path}{spec.name}.")
            continue
        rule = rule_of(spec)
        if rule is not None and not rule.ok(cfg[spec.name]):
            raise FieldError(f"{path}{spec.name}", cfg[spec.name], rule.valid)
    source = getattr(schema, "SOURCE", None)
    if source is not None:
        _build_source(cfg, source, path)
    return cfg


def typed(cfg: DictConfig, schema: type = SearchConfig) -> DictConfig:
    """``cfg`` (Hydra's own node aside) over ``schema``: values converted to their types (a value
    of the wrong type is an OmegaConf error), unknown keys kept for :func:`check`. A config Hydra
    composed over the schema comes back as it was; a saved one (``<run>/.hydra/config.yaml``)
    gets its types back."""
    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, False)  # a key the schema does not know is for check() to name
    merged = OmegaConf.merge(base, body)
    OmegaConf.set_struct(merged, True)
    return merged
