"""Supernet training recipes (``rlnas/conf/recipe/*.yaml``): phases of progressive shrinking, the
optimizer and schedule, the sandwich of subnets per step, and who teaches (the maximal subnet in
place, or the frozen a0).

:class:`Recipe` and :class:`Phase` are the schema of the ``recipe`` config group (their nodes:
:mod:`rlnas.supernet.config`): each field's default and valid values are written here once, and a
recipe's YAML sets only what differs from them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from rlnas.arch import Arch, SearchSpace
from rlnas.rules import (
    REQUIRED,
    UnknownKeyError,
    check_fields,
    each_of,
    integer,
    non_empty,
    number,
    one_of,
    ruled,
)

ELASTIC_DIMS = ("depth", "width", "expand")
#: ``auto``: bf16 autocast only where the device computes bf16 natively (emulated bf16 is far
#: slower than fp32)
PRECISIONS = ("auto", "fp32", "bf16")
#: ``max``: in-place distillation from the maximal subnet; ``a0``: from the frozen a0 (OFA)
TEACHERS = ("max", "a0")


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own elastic dimensions and learning-rate cycle.

    :param name: the phase's name in logs and progress bars.
    :param epochs: epochs over the training images.
    :param elastic: subset of ``depth``/``width``/``expand``; the others stay at their maximum.
        Empty: the maximal network alone.
    :param num_random: random subnets per step (None: the recipe's).
    :param lr_scale: peak learning rate relative to the recipe's ``lr``.
    :param warmup: warm-up fraction of the phase (None: the recipe's).
    :param sort_channels: call ``supernet.sort_channels()`` when the phase starts.
    """

    name: str
    epochs: int = ruled(REQUIRED, integer(1))
    elastic: tuple[str, ...] = ruled((), each_of(*ELASTIC_DIMS))
    num_random: int | None = ruled(None, integer(0, null="the recipe's"))
    lr_scale: float = ruled(1.0, number(0, low_open=True))
    warmup: float | None = ruled(None, number(0, 1, null="the recipe's"))
    sort_channels: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "elastic", tuple(self.elastic))


@dataclass(frozen=True)
class Recipe:
    """The training recipe (``conf/recipe/*.yaml``). Its defaults are the ``default`` recipe's:
    ResNet-50 on CIFAR-10 from scratch, sized for a CPU with a few cores.

    Phases run in order (progressive shrinking, OFA-style): e.g. first the maximal network alone
    (cheap, and the teacher for in-place distillation), then channels sorted by importance and
    every elastic dimension trained with the sandwich rule (max on labels, min + ``num_random``
    random subnets distilled from max's soft predictions). Each phase runs its own warm-up +
    cosine learning-rate cycle.

    :param name: the recipe's name (in the supernet's directory name and its metadata).
    :param phases: the :class:`Phase` list (a plain list of mappings is converted).
    :param batch_size: training images per step.
    :param lr: peak SGD learning rate (per phase x ``lr_scale``).
    :param momentum: SGD momentum; ``nesterov``: Nesterov's.
    :param weight_decay: on conv/linear weights only (not BN, not biases).
    :param warmup: linear warm-up fraction of each phase (one-cycle-like).
    :param final_lr: cosine decay to ``final_lr`` x peak at each phase end.
    :param label_smoothing: on the labels' cross-entropy.
    :param num_random: random subnets per step besides max and min.
    :param kd_alpha: a distilled subnet's loss = ``kd_alpha`` * KD(teacher) + (1 - ``kd_alpha``) * CE(labels).
    :param kd_temperature: the distillation temperature.
    :param precision: :data:`PRECISIONS`.
    :param channels_last: train in the channels-last memory format.
    :param grad_clip: clip the total gradient norm to this (it stops the early loss spikes: loss
        2.4 -> 12 at lr 0.1 without; 0 or null: no clipping).
    :param train_images: a seeded subset of the training split (null: all).
    :param zero_init_residual: the last BN scale of each bottleneck = 0 on a fresh start (ignored
        when the weights come from a0 or ``init``).
    :param teacher: :data:`TEACHERS`; ``a0`` needs ``a0.checkpoint``.
    """

    name: str
    phases: tuple[Phase, ...] = ruled(REQUIRED, non_empty("phases"))
    batch_size: int = ruled(128, integer(1))
    lr: float = ruled(0.1, number(0, note="0: the weights stay as they start"))
    momentum: float = ruled(0.9, number(0, 1, high_open=True))
    nesterov: bool = True
    weight_decay: float = ruled(5e-4, number(0))
    warmup: float = ruled(0.15, number(0, 1))
    final_lr: float = ruled(0.0, number(0, 1))
    label_smoothing: float = ruled(0.1, number(0, 1, high_open=True))
    num_random: int = ruled(1, integer(0))
    kd_alpha: float = ruled(1.0, number(0, 1))
    kd_temperature: float = ruled(1.0, number(0, low_open=True))
    precision: str = ruled("auto", one_of(*PRECISIONS))
    channels_last: bool = True
    grad_clip: float | None = ruled(5.0, number(0, null="no clipping", note="0: no clipping"))
    train_images: int | None = ruled(None, integer(1, null="all"))
    zero_init_residual: bool = True
    teacher: str = ruled("max", one_of(*TEACHERS))

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "phases", tuple(p if isinstance(p, Phase) else Phase(**p) for p in self.phases))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Recipe:
        """The recipe of a ``recipe`` node: a typed one, or plain data (a supernet's metadata)."""
        data = dict(_plain(cfg))
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UnknownKeyError(f"recipe.{unknown[0]}", known)
        return cls(**data)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_at(self, epoch: int) -> int:
        """Index of the phase that epoch ``epoch`` belongs to."""
        end = 0
        for i, p in enumerate(self.phases):
            end += p.epochs
            if epoch < end:
                return i
        return len(self.phases) - 1

    def phase_start(self, index: int) -> int:
        return sum(p.epochs for p in self.phases[:index])

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate / ``lr`` at global ``step``: per phase, linear warm-up then cosine decay
        to ``final_lr``, scaled by the phase's ``lr_scale``."""
        phase_idx = self.phase_at(step // steps_per_epoch)
        phase = self.phases[phase_idx]
        start = self.phase_start(phase_idx) * steps_per_epoch
        total = phase.epochs * steps_per_epoch
        pos = min(step - start, total - 1)
        warm = max(1, round((self.warmup if phase.warmup is None else phase.warmup) * total))
        if pos < warm:
            return phase.lr_scale * (pos + 1) / warm
        t = (pos - warm) / max(1, total - warm)
        return phase.lr_scale * (self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def phase_space(space: SearchSpace, phase: Phase) -> SearchSpace:
    """``space`` with the dimensions ``phase`` keeps fixed pinned to their maximum."""
    changes: dict[str, Any] = {}
    if "depth" not in phase.elastic:
        changes["min_depths"] = space.max_depths
    if "width" not in phase.elastic:
        changes["width_choices"] = space.width_choices[-1:]
    if "expand" not in phase.elastic and space.has_expand:
        changes["expand_choices"] = space.expand_choices[-1:]
    return dataclasses.replace(space, **changes)


def sandwich(space: SearchSpace, num_random: int, rng: np.random.Generator) -> list[tuple[str, Arch]]:
    """The sub-networks of one step: ``max`` first (the teacher), then ``min`` and random ones."""
    largest, smallest = space.max_arch(), space.min_arch()
    if largest == smallest:
        return [("max", largest)]
    return [("max", largest), ("min", smallest)] + [("random", space.sample(rng)) for _ in range(num_random)]


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
