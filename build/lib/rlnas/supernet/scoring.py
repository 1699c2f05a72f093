"""Accuracy of a PyTorch classifier (training's evaluation and the accuracy oracle's FP32 pass)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def torch_top1(model: nn.Module, batches: Iterable[Tensor], labels: Tensor, channels_last: bool = True) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``batches`` whose labels are ``labels``."""
    correct = seen = 0
    for x in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pred = model(x).argmax(1)
        correct += int((pred == labels[seen:seen + len(x)]).sum())
        seen += len(x)
    if seen != len(labels):
        raise ValueError(f"batches held {seen} images for {len(labels)} labels")
    return correct / max(1, seen)


