"""BatchNorm recalibration: re-estimate running statistics for one sub-network.

Weight sharing leaves the supernet's BN statistics a mixture over every sub-network trained, so
each sub-network's statistics are re-estimated on training images before it is evaluated (OFA,
BigNAS). Recalibration only ever writes BN buffers; :func:`preserved_bn_state` restores them when
it must run on the supernet itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor], channels_last: bool = False) -> int:
    """Reset every BN layer's running statistics and re-estimate them as the average over all
    images of ``batches`` (train-mode forward, no gradients). Weights are untouched; the momentum
    and the train/eval mode of every module are restored afterwards.

    Each batch is weighted by its size (momentum ``n / (seen + n)``), so a short last batch does
    not count as much as a full one; batches should mix classes (the per-batch variances are
    averaged).

    :returns: the number of images seen.
    """
    layers = bn_layers(model)
    momenta = [bn.momentum for bn in layers]
    modes = {m: m.training for m in model.modules()}
    for bn in layers:
        bn.reset_running_stats()
    model.train()
    seen = 0
    try:
        for x in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for bn in layers:
                bn.momentum = len(x) / (seen + len(x))
            model(x)
            seen += len(x)
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    if seen == 0:
        raise ValueError("recalibrate_bn: no batches")
    return seen


def bn_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every BN buffer (running mean/var, batches tracked), by parameter name."""
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{names[id(bn)]}.{k}": v.clone() for bn in bn_layers(model)
            for k, v in bn.named_buffers(recurse=False) if v is not None}


def load_bn_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Write back buffers saved by :func:`bn_state`."""
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            buffers[name].copy_(value)


@contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s BN buffers on exit (to recalibrate a supernet in place temporarily)."""
    saved = bn_state(model)
    try:
        yield
    finally:
        load_bn_state(model, saved)
