"""Training augmentation of whole uint8 batches: random crop with padding (CIFAR), or
RandomResizedCrop via ``roi_align``, then a horizontal flip; fast enough on one core that the
loader never limits training.

Every random choice comes from a generator seeded by ``(seed, epoch, step)``
(:func:`seeded_generator`): a resumed run sees exactly the batches an uninterrupted run would
have seen.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: The augmentations a dataset config may ask for (``dataset.augment``).
AUGMENTATIONS = ("crop_pad", "rrc", "none")


def augment_batch(images: Tensor, kind: str, resolution: int, gen: torch.Generator, pad: int = 4,
                  rrc_scale: tuple[float, float] = (0.25, 1.0)) -> Tensor:
    """A uint8 batch augmented by ``kind`` (:data:`AUGMENTATIONS`) at ``resolution``, then
    flipped at random: float, in the uint8 range, not normalized."""
    if kind == "crop_pad":
        x = resize(random_crop_pad(images, pad, gen).float(), resolution)
    elif kind == "rrc":
        x = random_resized_crop(images.float(), resolution, rrc_scale, gen)
    else:
        x = resize(images.float(), resolution)
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def resize(x: Tensor, size: int) -> Tensor:
    """A float batch resized to ``size`` (antialiased when it shrinks); as it is at that size."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size,) * 2, mode="bilinear", antialias=x.shape[-1] > size, align_corners=False)


def seeded_generator(*parts: int) -> torch.Generator:
    """A torch generator seeded by ``parts`` alone (e.g. seed, epoch, step): the same batches on
    every run and after every resume."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def random_crop_pad(images: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image."""
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    batch = torch.arange(b)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_resized_crop(x: Tensor, size: int, scale: tuple[float, float], gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """torchvision's RandomResizedCrop box sampling, cropped and resized for the whole batch at
    once with ``roi_align``."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    area = h * w
    boxes = torch.empty(b, 5)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for i in range(b):
        boxes[i] = torch.tensor([i, *_sample_box(h, w, area, scale, log_ratio, gen)])
    return roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _sample_box(h: int, w: int, area: int, scale: tuple[float, float], log_ratio: tuple[float, float],
                gen: torch.Generator) -> tuple[float, float, float, float]:
    for u in torch.rand(10, 4, generator=gen).tolist():
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = u[2] * (h - ch), u[3] * (w - cw)
            return left, top, left + cw, top + ch
    side = min(h, w)
    return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2
