"""Is the accuracy bound met, by statistics rather than luck?

The bound is ``Acc_INT8(a) >= tau * Acc_FP32(a0)``. Both accuracies are means over the same images,
so the test is on the paired per-image difference ``x_i = c_INT8(a)_i - tau * c_FP32(a0)_i``
(``c`` = 1 where the image is classified right): its mean is the margin over the bound, and pairing
removes the variance the two networks share (the images both get right or both get wrong). The
bound holds with confidence ``1 - alpha`` when the one-sided lower confidence bound of that mean is
>= 0. Choosing among ``k`` finalists spends ``alpha`` on each (Bonferroni: ``alpha / k``), so the
statement still holds for whichever is chosen. Normal approximation: thousands of images.

Per-image correctness travels as a packed bit string (:func:`pack_bits`), so the store keeps
it beside the accuracy at ~1 bit per image.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


def pack_bits(correct: np.ndarray) -> str:
    """Booleans as base64 of their packed bits (the length is kept by the caller's image count)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(packed: str, count: int) -> np.ndarray:
    """The ``count`` booleans :func:`pack_bits` packed."""
    return np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))[:count].astype(bool)


@dataclass(frozen=True)
class BoundTest:
    """The paired test of one network against the bound on one set of images.

    :ivar margin: mean of ``c_INT8(a) - tau * c_FP32(a0)``: ``Acc_INT8(a) - tau * Acc_FP32(a0)``.
    :ivar lower: its one-sided lower confidence bound at ``confidence`` (``alpha`` already split
        over ``comparisons``).
    :ivar holds: ``lower >= 0``: the bound holds with that confidence.
    """

    margin: float
    stderr: float
    lower: float
    confidence: float
    comparisons: int
    images: int

    @property
    def holds(self) -> bool:
        return self.lower >= 0


def bound_test(int8_correct: np.ndarray, a0_fp32_correct: np.ndarray, tau: float, confidence: float = 0.9,
               comparisons: int = 1) -> BoundTest:
    """:class:`BoundTest` of a network whose INT8 per-image correctness is ``int8_correct`` against
    ``tau`` times a0's FP32 one on the same images (same order)."""
    a, b = np.asarray(int8_correct, dtype=float), np.asarray(a0_fp32_correct, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equal-length vectors of >= 2 images, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1 or comparisons < 1:
        raise ValueError(f"confidence {confidence} must be in (0, 1) and comparisons {comparisons} >= 1")
    x = a - tau * b
    stderr = float(x.std(ddof=1) / math.sqrt(len(x)))
    z = float(norm.ppf(1 - (1 - confidence) / comparisons))
    return BoundTest(float(x.mean()), stderr, float(x.mean()) - z * stderr, confidence, comparisons, len(x))


def accuracy_interval(correct: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a top-1 from per-image correctness."""
    n = len(correct)
    if n == 0:
        raise ValueError("no images")
    p = float(np.mean(correct))
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
