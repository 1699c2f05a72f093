"""The typed config of ``rlnas-search``: every key's type, default and valid values, in one place.

:class:`SearchConfig` is registered with Hydra's ConfigStore as ``schema/search``, the first entry
of ``conf/config.yaml``'s defaults list: Hydra composes the groups and the YAML over it, so a value
of the wrong type (``budget=abc``) or an unknown key is refused while composing, and the YAML only
sets what differs from these defaults. (``conf/export.yaml`` overrides it with ``schema/export``,
:class:`ExportCommandConfig`, which adds ``rlnas-export``'s ``run``.)

Each default and each range is written once:

- a dataclass rlnas builds from the config declares them in its own fields, with their rules
  (:mod:`rlnas.rules`): :class:`~rlnas.oracles.ratios.TimingConfig`,
  :class:`~rlnas.supernet.finetune.FineTuneOptions`, :class:`FinalistsConfig`, which extends it, and
  :class:`~rlnas.detection.pipeline.DetectionOptions` (``detection``: the heads a detector keeps in FP32);
  its Hydra node is a mutable copy of its fields (:func:`~rlnas.structured.node_of`: Hydra makes a frozen dataclass
  a read-only node, which no override could change);
- the oracles' settings take their defaults from the oracle's constructor, and their rules are
  given here (:class:`AccuracyConfig`, :class:`LatencyConfig`,
  :class:`~rlnas.oracles.irbuild.QuantizationConfig`'s node);
- what ``rlnas-train-supernet``'s config has too comes from its schema (:mod:`rlnas.supernet.config`):
  :class:`~rlnas.supernet.config.CommonConfig` (model, dataset, the recipe's node, seed, threads,
  resolution) starts :class:`SearchConfig`, and ``supernet.train`` is its
  :class:`~rlnas.supernet.config.TrainOptions`;
- the rest of the search's keys are defined here.

:func:`rlnas.structured.check` checks a composed config against the rules before anything runs
(:func:`rlnas.validate.check_search`); :func:`rlnas.structured.rules` lists them by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rlnas.detection.pipeline import DetectionOptions
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.oracles.device import INFERENCE_PRECISIONS
from rlnas.oracles.irbuild import QuantizationConfig
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.profiling import METRICS
from rlnas.oracles.ratios import RATIO_METHODS, TimingConfig
from rlnas.rules import integer, number, one_of, ruled
from rlnas.structured import defaults_of, node_of, target_of
from rlnas.supernet.config import MAX_SECONDS, A0Checkpoint, CommonConfig, SupernetInit, TrainOptions
from rlnas.supernet.finetune import FineTuneOptions

#: how the finalists are picked among the eligible candidates
RANKINGS = ("objective", "latency")
#: how a fine-tuned finalist becomes INT8
QUANTIZATIONS = ("ptq", "accuracy_control")

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
        fine-tuning may lift over the target compete with feasible ones on speed alone; the fastest
        feasible one keeps a slot).
    :param calib_images: real training images to quantize each finalist (and a0) by NNCF.
    :param confidence: with which the chosen finalist must meet the bound on validation images
        (one-sided, split over the finalists compared; the task's test: :func:`rlnas.stats.bound_test`
        for top-1, :func:`rlnas.stats.map_bound_test` for mAP@.5).
    :param confirm_timing: :class:`TimingConfig` fields of the confirmation over the search's
        ``latency.timing`` (longer: a0 and every finalist, interleaved).
    :param confirm_passes: confirmation passes (each a full interleaved measurement of a0 and the
        finalists); a finalist's confirmed ratio is its median over them (on a shared machine
        passes drift apart by more than each pass's own interval says).
    :param quantization: how each fine-tuned finalist becomes INT8: ``ptq`` (NNCF post-training
        quantization on ``calib_images`` real images, as the search measured) or
        ``accuracy_control`` (``nncf.quantize_with_accuracy_control``: then quantizers are
        reverted to FP32 until the INT8 accuracy (top-1, mAP@.5) on the *validation* images is at
        most ``max_drop`` below the FP32 model's; slower). Its INT8 model is the one scored,
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

TimingConfigNode = node_of(TimingConfig, target=True, module=__name__)
QuantizationConfigNode = node_of(QuantizationConfig, target=True, module=__name__, rules={
    "subset_size": integer(1), "random_subset_size": integer(1), "inplace_min_pixels": integer(0)})
FinalistsConfigNode = node_of(FinalistsConfig, target=False, module=__name__)
DetectionConfigNode = node_of(DetectionOptions, target=False, module=__name__, kinds={"fp32_heads": list[str]})

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
    quantization: QuantizationConfigNode = field(default_factory=QuantizationConfigNode)  # NNCF for the timed IR
    timing: TimingConfigNode = field(default_factory=TimingConfigNode)


@dataclass
class A0Config(A0Checkpoint):
    """``cfg.a0``: the model you deploy today, the constraint's reference and the supernet's start.

    :param checkpoint: a torchvision-format state dict trained for the task (``num_classes`` outputs).
    :param default: used when ``checkpoint`` is null and this file exists (experiments set the shared a0).
    :param fallback_recipe: the recipe to train from scratch with when the recipe needs an a0 and there is none.
    """

    default: str | None = None
    fallback_recipe: str = "default"


@dataclass
class SupernetConfig:
    """``cfg.supernet``.

    :param checkpoint: a ``supernet.pt`` (or its training directory); null: find or train one.
    :param dir: trained supernets: ``<dir>/<model>-<dataset>-<recipe>-<config hash>/``.
    :param max_seconds: cap on training time; a supernet cut short is still written and used.
    :param init: the maximal network's initial weights when there is no a0.
    :param train: the trainer's checkpoint / eval / log options.
    """

    checkpoint: str | None = None
    dir: str = "${cache_dir}/supernets"
    seed: int = ruled(0, integer(0))
    max_seconds: float | None = ruled(None, MAX_SECONDS)
    init: SupernetInit = field(default_factory=SupernetInit)
    train: TrainOptions = field(default_factory=TrainOptions)


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
class SearchConfig(CommonConfig):
    """The composed config of ``rlnas-search``: :class:`~rlnas.supernet.config.CommonConfig` (the
    search's seed; the oracles set their own threads), the other groups (their own keys), then the
    search's.

    :param tau: feasible iff Acc_INT8(a) >= ``tau`` * Acc_FP32(a0).
    :param budget: unique measured architectures (a0 excluded), the same for every agent.
    :param cache_dir: the measurement store, IRs and trained supernets, shared by runs.
    :param run_dir: where the run writes; rerun with the same ``run_dir`` to resume or extend it.
    :param ray: ``backend=ray``'s cluster (``ray.address``); null with the local backend.
    """

    device: Any = MISSING
    agent: Any = MISSING
    reward: Any = MISSING
    oracle: Any = field(default_factory=dict)
    backend: Any = field(default_factory=dict)
    ray: Any = None
    tau: float = ruled(0.99, number(0, 1, low_open=True, note="feasible iff Acc_INT8 >= tau * Acc_FP32(a0)"))
    budget: int = ruled(100, integer(1, note="unique architectures measured"))
    cache_dir: str = "cache"
    run_dir: str = "outputs/search/${model.name}-${dataset.name}-${device.name}/${now:%Y-%m-%d_%H-%M-%S}"
    a0: A0Config = field(default_factory=A0Config)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    finalists: FinalistsConfigNode = field(default_factory=FinalistsConfigNode)
    detection: DetectionConfigNode = field(default_factory=DetectionConfigNode)  # detectors: heads kept in FP32
    export: ExportConfig = field(default_factory=ExportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class ExportCommandConfig(SearchConfig):
    """``rlnas-export``'s config: the search's and the run to export."""

    run: str = MISSING


#: conf/config.yaml: ``- schema: search``; conf/export.yaml: ``- override schema: export``
ConfigStore.instance().store(group="schema", name="search", node=SearchConfig, package="_global_")
ConfigStore.instance().store(group="schema", name="export", node=ExportCommandConfig, package="_global_")
