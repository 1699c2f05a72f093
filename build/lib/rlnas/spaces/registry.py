"""The family registry (timm-style): ``@register_family``, ``create_supernet``, ``list_families``,
``get_space``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlnas.arch import SearchSpace
from rlnas.spaces.base import Supernet

_FAMILIES: dict[str, Callable[..., Supernet]] = {}


def register_family(name: str) -> Callable[[Callable[..., Supernet]], Callable[..., Supernet]]:
    """Register ``builder(**kwargs) -> Supernet`` under ``name``."""

    def decorator(builder: Callable[..., Supernet]) -> Callable[..., Supernet]:
        if name in _FAMILIES:
            raise ValueError(f"family {name!r} is already registered")
        _FAMILIES[name] = builder
        return builder

    return decorator


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def create_supernet(name: str, **kwargs) -> Supernet:
    """Build the supernet of family ``name``; ``kwargs`` go to the family's builder."""
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; registered families: {', '.join(list_families())}")
    return _FAMILIES[name](**kwargs)


def get_space(name: str, **kwargs) -> SearchSpace:
    """The search space of family ``name``, without allocating its weights."""
    with torch.device("meta"):
        return create_supernet(name, **kwargs).space
