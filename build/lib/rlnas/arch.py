"""Architectures as small immutable values, and the search space that bounds them.

An :class:`Arch` says, for each stage of a family's backbone, how many blocks are active, the
stage width multiplier and the expand ratio of every active block. It is hashable (used as a
cache key), round-trips through JSON, and the :class:`SearchSpace` encodes it as a fixed-length
vector in [0, 1] for observations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class InvalidArchError(ValueError):
    """An architecture that its family's search space does not contain."""


@dataclass(frozen=True)
class Arch:
    """One architecture of a family.

    :param family: registered family name, e.g. ``"resnet50"``.
    :param depths: active blocks per stage (leading blocks are kept, trailing ones dropped).
    :param widths: width multiplier per stage.
    :param expands: expand ratio of each *active* block, per stage (``len(expands[i]) ==
        depths[i]``); empty for families without an expand ratio. Keeping only active blocks makes
        equal networks equal values.
    """

    family: str
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    expands: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))
        object.__setattr__(self, "expands", tuple(tuple(float(e) for e in s) for s in self.expands))

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "depths": list(self.depths),
            "widths": list(self.widths),
            "expands": [list(s) for s in self.expands],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        missing = {"family", "depths", "widths"} - set(data)
        if missing:
            raise InvalidArchError(f"architecture dict lacks {sorted(missing)}: {data}")
        return cls(data["family"], tuple(data["depths"]), tuple(data["widths"]),
                   tuple(tuple(s) for s in data.get("expands", ())))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Arch:
        return cls.from_dict(json.loads(text))

    def short(self) -> str:
        """A compact human-readable form for logs and tables."""
        parts = []
        for i, (d, w) in enumerate(zip(self.depths, self.widths)):
            exp = ""
            if self.expands:
                exp = "e" + "/".join(f"{e:g}" for e in self.expands[i])
            parts.append(f"d{d}w{w:g}{exp}")
        return f"{self.family}[" + " ".join(parts) + "]"


@dataclass(frozen=True)
class SearchSpace:
    """The architectures of one family: per-stage depth range, width and expand choices.

    Choices are sorted ascending. ``expand_choices`` is empty for families without an expand ratio.
    """

    family: str
    max_depths: tuple[int, ...]
    min_depths: tuple[int, ...]
    width_choices: tuple[float, ...]
    expand_choices: tuple[float, ...] = ()
    stage_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.max_depths) != len(self.min_depths):
            raise ValueError("max_depths and min_depths differ in length")
        if any(lo < 1 or lo > hi for lo, hi in zip(self.min_depths, self.max_depths)):
            raise ValueError(f"bad depth range {self.min_depths}..{self.max_depths}")
        if list(self.width_choices) != sorted(self.width_choices) or not self.width_choices:
            raise ValueError("width_choices must be non-empty and sorted ascending")
        if list(self.expand_choices) != sorted(self.expand_choices):
            raise ValueError("expand_choices must be sorted ascending")
        if not self.stage_names:
            object.__setattr__(self, "stage_names", tuple(f"stage{i + 1}" for i in range(self.num_stages)))

    @property
    def num_stages(self) -> int:
        return len(self.max_depths)

    @property
    def has_expand(self) -> bool:
        return bool(self.expand_choices)

    def max_arch(self) -> Arch:
        return self._uniform(self.max_depths, self.width_choices[-1], self.expand_choices[-1:] or (None,))

    def min_arch(self) -> Arch:
        return self._uniform(self.min_depths, self.width_choices[0], self.expand_choices[:1] or (None,))

    def _uniform(self, depths: tuple[int, ...], width: float, expand: tuple) -> Arch:
        expands = tuple((expand[0],) * d for d in depths) if self.has_expand else ()
        return Arch(self.family, depths, (width,) * self.num_stages, expands)

    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if it belongs to this space, else raise :class:`InvalidArchError`."""
        problems = []
        if arch.family != self.family:
            problems.append(f"family {arch.family!r} is not {self.family!r}")
        if len(arch.depths) != self.num_stages or len(arch.widths) != self.num_stages:
            problems.append(f"needs {self.num_stages} stages, got depths={arch.depths} widths={arch.widths}")
        else:
            for i, (d, w) in enumerate(zip(arch.depths, arch.widths)):
                if not self.min_depths[i] <= d <= self.max_depths[i]:
                    problems.append(f"{self.stage_names[i]}: depth {d} not in "
                                    f"[{self.min_depths[i]}, {self.max_depths[i]}]")
                if w not in self.width_choices:
                    problems.append(f"{self.stage_names[i]}: width {w} not in {self.width_choices}")
            problems += self._expand_problems(arch)
        if problems:
            raise InvalidArchError(f"invalid {self.family} architecture {arch.to_json()}: " + "; ".join(problems))
        return arch

    def _expand_problems(self, arch: Arch) -> list[str]:
        if not self.has_expand:
            return [] if not arch.expands else ["this family has no expand ratio"]
        if len(arch.expands) != self.num_stages:
            return [f"expands needs {self.num_stages} stages"]
        problems = []
        for i, (d, stage) in enumerate(zip(arch.depths, arch.expands)):
            if len(stage) != d:
                problems.append(f"{self.stage_names[i]}: {len(stage)} expand ratios for {d} blocks")
            bad = [e for e in stage if e not in self.expand_choices]
            if bad:
                problems.append(f"{self.stage_names[i]}: expand {bad} not in {self.expand_choices}")
        return problems

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except InvalidArchError:
            return False
        return True

    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random architecture (each choice drawn independently)."""
        depths = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(self.min_depths, self.max_depths))
        widths = tuple(float(rng.choice(self.width_choices)) for _ in depths)
        expands = ()
        if self.has_expand:
            expands = tuple(tuple(float(rng.choice(self.expand_choices)) for _ in range(d)) for d in depths)
        return Arch(self.family, depths, widths, expands)

    @property
    def vector_size(self) -> int:
        per_block = sum(self.max_depths) if self.has_expand else 0
        return 2 * self.num_stages + per_block

    def to_vector(self, arch: Arch) -> np.ndarray:
        """Fixed-length encoding in [0, 1]: per stage depth and width, then every block's expand
        ratio (0 for inactive blocks, whose absence the depth already says)."""
        self.validate(arch)
        vec = []
        for i, (d, w) in enumerate(zip(arch.depths, arch.widths)):
            span = self.max_depths[i] - self.min_depths[i]
            vec.append((d - self.min_depths[i]) / span if span else 1.0)
            vec.append(_choice_position(w, self.width_choices))
        if self.has_expand:
            for i, stage in enumerate(arch.expands):
                slots = [(_choice_position(e, self.expand_choices) + 1) / 2 for e in stage]
                vec.extend(slots + [0.0] * (self.max_depths[i] - len(stage)))
        return np.asarray(vec, dtype=np.float32)

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        total = 1
        for lo, hi in zip(self.min_depths, self.max_depths):
            per_stage = sum(len(self.expand_choices) ** d if self.has_expand else 1 for d in range(lo, hi + 1))
            total *= per_stage * len(self.width_choices)
        return total


def _choice_position(value: float, choices: tuple[float, ...]) -> float:
    if len(choices) == 1:
        return 1.0
    return choices.index(value) / (len(choices) - 1)
