"""Accuracy of a PyTorch classifier (training's evaluation and the accuracy oracle's FP32 pass)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def torch_correct(model: nn.Module, batches: Iterable[Tensor], labels: Tensor,
                  channels_last: bool = True) -> np.ndarray:
    """Per image, whether ``model`` (eval mode) classifies it right; ``labels`` of ``batches``."""
    correct: list[np.ndarray] = []
    seen = 0
    for x in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        correct.append((model(x).argmax(1) == labels[seen:seen + len(x)]).numpy())
        seen += len(x)
    if seen != len(labels):
        raise ValueError(f"batches held {seen} images for {len(labels)} labels")
    return np.concatenate(correct) if correct else np.zeros(0, dtype=bool)


def torch_top1(model: nn.Module, batches: Iterable[Tensor], labels: Tensor, channels_last: bool = True) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``batches`` whose labels are ``labels``."""
    correct = torch_correct(model, batches, labels, channels_last)
    return float(correct.mean()) if len(correct) else 0.0


