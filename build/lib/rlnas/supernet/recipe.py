"""Supernet training recipes (``rlnas/conf/recipe/*.yaml``): phases of progressive shrinking, the
optimizer and schedule, the sandwich of subnets per step, and who teaches (the maximal subnet in
place, or the frozen a0)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from rlnas.arch import Arch, SearchSpace

ELASTIC_DIMS = ("depth", "width", "expand")
PRECISIONS = ("auto", "fp32", "bf16")
#: ``max``: in-place distillation from the maximal subnet; ``a0``: from the frozen a0 (OFA)
TEACHERS = ("max", "a0")


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own elastic dimensions and learning-rate cycle.

    :param elastic: subset of ``depth``/``width``/``expand``; the others stay at their maximum.
        Empty: the maximal network alone.
    :param num_random: random subnets per step (None: the recipe's).
    :param lr_scale: peak learning rate relative to the recipe's ``lr``.
    :param warmup: warm-up fraction of the phase (None: the recipe's).
    :param sort_channels: call ``supernet.sort_channels()`` when the phase starts.
    """

    name: str
    epochs: int
    elastic: tuple[str, ...] = ()
    num_random: int | None = None
    lr_scale: float = 1.0
    warmup: float | None = None
    sort_channels: bool = False

    def __post_init__(self) -> None:
        bad = set(self.elastic) - set(ELASTIC_DIMS)
        if bad:
            raise ValueError(f"phase {self.name!r}: unknown elastic dims {sorted(bad)}; choose from {ELASTIC_DIMS}")
        if self.epochs < 1:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 1")


@dataclass(frozen=True)
class Recipe:
    """The training recipe (``conf/recipe/*.yaml``); see ``conf/recipe/default.yaml`` for meanings."""

    name: str
    phases: tuple[Phase, ...]
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup: float = 0.15
    final_lr: float = 0.0
    label_smoothing: float = 0.1
    num_random: int = 2
    kd_alpha: float = 1.0
    kd_temperature: float = 1.0
    precision: str = "auto"
    channels_last: bool = True
    grad_clip: float | None = None
    train_images: int | None = None
    zero_init_residual: bool = True
    teacher: str = "max"

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"recipe.teacher={self.teacher!r}; choose one of {TEACHERS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"recipe.precision={self.precision!r}; choose one of {PRECISIONS}")
        if not self.phases:
            raise ValueError("recipe has no phases")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Recipe:
        data = dict(_plain(cfg))
        phases = tuple(Phase(**{**p, "elastic": tuple(p.get("elastic") or ())}) for p in data.pop("phases", []))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(phases=phases, **data)

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
