"""SSD default boxes (priors): part of the SSD family's definition, so they live with it.

Boxes are normalised to [0, 1] image coordinates, ``cx, cy, w, h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def default_boxes(feature_sizes: Sequence[int], aspect_ratios: Sequence[Sequence[float]],
                  min_scale: float = 0.2, max_scale: float = 0.95, clip: bool = True) -> torch.Tensor:
    """SSD default boxes for square feature maps, as ``(N, 4)`` ``cx, cy, w, h`` in [0, 1].

    Map ``k`` of ``m`` has scale ``s_k`` linearly spaced in ``[min_scale, max_scale]`` (SSD paper
    eq. 4). Per location, in this order: the 1:1 box of scale ``s_k``, the 1:1 box of scale
    ``sqrt(s_k s_{k+1})``, then ``r`` and ``1/r`` for every ``r`` in ``aspect_ratios[k]``, so
    ``2 + 2 * len(aspect_ratios[k])`` boxes per location (:func:`boxes_per_location`).
    Locations are row-major, matching a head output permuted to ``(B, H, W, A * 4)``.
    """
    m = len(feature_sizes)
    if len(aspect_ratios) != m:
        raise ValueError(f"{m} feature maps but {len(aspect_ratios)} aspect-ratio lists")
    scales = [min_scale + (max_scale - min_scale) * k / max(m - 1, 1) for k in range(m)] + [1.0]
    out = []
    for k, size in enumerate(feature_sizes):
        wh = _box_shapes(scales[k], scales[k + 1], aspect_ratios[k])
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        xy = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
        grid = torch.cat([xy.repeat_interleave(len(wh), 0), wh.repeat(size * size, 1)], dim=1)
        out.append(grid)
    boxes = torch.cat(out)
    return boxes.clamp(0.0, 1.0) if clip else boxes


def _box_shapes(s_k: float, s_next: float, ratios: Sequence[float]) -> torch.Tensor:
    shapes = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2]
    for r in ratios:
        root = math.sqrt(r)
        shapes += [(s_k * root, s_k / root), (s_k / root, s_k * root)]
    return torch.tensor(shapes, dtype=torch.float32)


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """Default boxes per feature-map location, per map (the ``A`` of each head)."""
    return [2 + 2 * len(r) for r in aspect_ratios]
