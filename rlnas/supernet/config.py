"""The typed config of ``rlnas-train-supernet``: every key's type, default and valid values, in one place.

:class:`TrainSupernetConfig` is registered with Hydra's ConfigStore as ``schema/train_supernet``, the
first entry of ``conf/train_supernet.yaml``'s defaults list: Hydra composes the groups and the YAML
over it, so a value of the wrong type (``recipe.lr=abc``) or an unknown key is refused while
composing, and the YAML only sets what differs from these defaults.

- The ``recipe`` group's node is :class:`~rlnas.supernet.recipe.Recipe`'s, its phases
  :class:`~rlnas.supernet.recipe.Phase`'s (:func:`~rlnas.structured.node_of`): their defaults and
  rules are those dataclasses' fields, and a recipe's YAML sets what differs.
- The trainer's run options (:class:`TrainOptions`: checkpoint / eval / log) are one dataclass:
  at this config's root, and under ``rlnas-search``'s ``supernet.train``.
- :class:`CommonConfig` (model, dataset, recipe, seed, threads, resolution) starts both this config
  and ``rlnas-search``'s (:mod:`rlnas.schema`).

:func:`rlnas.validate.check_train` types a config and checks it against the rules before anything
runs; the trainer types what it is given (:func:`train_config`), so a plain config (a saved
``last.pt``'s, one built by the search) gets its types and defaults back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from rlnas.rules import integer, number, one_of, ruled
from rlnas.structured import node_of, typed
from rlnas.supernet.recipe import Phase, Recipe

#: where the trainer runs: ``auto`` is a CUDA GPU where torch sees one (and the task's trainer can
#: use it), else the CPU
ACCELERATORS = ("auto", "cpu", "cuda")
#: a cap on training time (the search's ``supernet.max_seconds`` too)
MAX_SECONDS = number(0, low_open=True, null="no cap", note="seconds")

PhaseNode = node_of(Phase, target=False, module=__name__, kinds={"elastic": list[str]})
RecipeNode = node_of(Recipe, target=False, module=__name__, kinds={"phases": list[PhaseNode]})


# -- the run options ---------------------------------------------------------------------------------


@dataclass
class CheckpointOptions:
    """``checkpoint``: ``last.pt`` is written at every epoch end and every ``every_steps`` optimizer
    steps (0: only at epoch ends)."""

    every_steps: int = ruled(200, integer(0, note="0: only at epoch ends"))


@dataclass
class EvalOptions:
    """``eval``: validation top-1 of the maximal and minimal subnets, after BN recalibration.

    :param every_epochs: every this many epochs (0: only at the end).
    :param val_images: a seeded subset per epoch (null: the whole split).
    :param final_val_images: at the end (null: the whole split).
    :param recal_images: BN recalibration images per evaluated subnet.
    """

    every_epochs: int = ruled(1, integer(0, note="0: only at the end"))
    val_images: int | None = ruled(2000, integer(1, null="the whole split"))
    final_val_images: int | None = ruled(None, integer(1, null="the whole split"))
    recal_images: int = ruled(1000, integer(0))


@dataclass
class LogOptions:
    """``log``: TensorBoard under ``<output_dir>/tb`` (scalars under ``train/``), tqdm bars."""

    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainOptions:
    """The trainer's run options: how a training is checkpointed, evaluated and logged, never its
    weights (a resume may change them: :data:`RESUMABLE_KEYS`)."""

    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    log: LogOptions = field(default_factory=LogOptions)


# -- the config --------------------------------------------------------------------------------------


@dataclass
class CommonConfig:
    """What the configs of ``rlnas-train-supernet`` and ``rlnas-search`` start with.

    :param model: the model family (the ``model`` group).
    :param dataset: the dataset (the ``dataset`` group).
    :param recipe: the supernet's training recipe (the ``recipe`` group: :class:`Recipe`).
    :param seed: the run's seed (the training's; the search's).
    :param threads: torch threads of this process.
    :param resolution: the input side in pixels (the model's by default).
    """

    model: Any = MISSING
    dataset: Any = MISSING
    recipe: RecipeNode = field(default_factory=RecipeNode)
    seed: int = ruled(0, integer(0))
    threads: int = ruled(2, integer(1))
    resolution: int = ruled(II("model.resolution"), integer(8, note="pixels"))


@dataclass
class A0Checkpoint:
    """``a0``: the user's trained model (a torchvision-format state dict). The maximal network
    starts from it; a recipe with ``teacher: a0`` also distils from it."""

    checkpoint: str | None = None


@dataclass
class SupernetInit:
    """``init``: the maximal network's initial weights when there is no a0.

    :param checkpoint: a local torchvision-format state dict.
    :param torchvision: torchvision's DEFAULT ImageNet weights (downloads; needs network).
    """

    checkpoint: str | None = None
    torchvision: bool = False


@dataclass
class TrainSupernetConfig(TrainOptions, CommonConfig):
    """The composed config of ``rlnas-train-supernet``: :class:`CommonConfig`, the run options
    (:class:`TrainOptions`) at the root, and the training's own keys.

    :param accelerator: :data:`ACCELERATORS` (bf16 autocast on a GPU).
    :param output_dir: where ``last.pt`` and ``supernet.pt`` are written; rerun with the same one to
        resume a killed run.
    :param max_seconds: stop (and still write ``supernet.pt``) after this much training time.
    """

    accelerator: str = ruled("auto", one_of(*ACCELERATORS))
    output_dir: str = "outputs/supernet/${model.name}-${dataset.name}-${recipe.name}"
    max_seconds: float | None = ruled(None, MAX_SECONDS)
    a0: A0Checkpoint = field(default_factory=A0Checkpoint)
    init: SupernetInit = field(default_factory=SupernetInit)


#: config keys a resume may change: the run options and where and how fast it runs (they do not
#: change the result)
RESUMABLE_KEYS = ("threads", "accelerator", "checkpoint", "eval", "log", "max_seconds", "output_dir", "hydra")

#: conf/train_supernet.yaml: ``- schema: train_supernet``
ConfigStore.instance().store(group="schema", name="train_supernet", node=TrainSupernetConfig, package="_global_")


def train_config(cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """``cfg`` typed as a :class:`TrainSupernetConfig` (:func:`~rlnas.structured.typed`): a
    composed one as it was, a plain one (a saved run's, the search's) with its types and defaults."""
    return typed(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), TrainSupernetConfig)
