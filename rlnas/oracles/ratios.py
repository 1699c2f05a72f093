"""The timing protocol's settings and the ratio statistics, shared by the worker and the oracle.

:class:`TimingConfig` says how long the worker times (and :func:`ratio_rel_error` when it may stop);
the oracle turns the block times of interleaved rounds into ratios (:func:`ratio_estimates`,
:data:`RATIO_METHODS`) and confidence intervals (:func:`bootstrap_ratio_ci`). The worker process
imports this module: it imports neither torch nor scipy at import time.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlnas.rules import FieldError, check_fields, integer, number, ruled

RATIO_METHODS = ("median_round_p10", "median_round_median", "p10", "median", "min")


@dataclass(frozen=True)
class TimingConfig:
    """How long to time: warm-up, then rounds of (reference block, candidate block).

    Blocks alternate order every round (ref-cand, cand-ref, ...) so neither model always runs on
    caches the other just warmed. Timing stops once ``min_rounds``, ``min_iters`` candidate
    inferences and ``min_time_s`` are all reached and, with a reference, the relative standard
    error of the ratio (see :func:`ratio_rel_error`) is at most ``target_rel_error`` (None = no
    such condition); or at ``max_time_s`` / ``max_rounds``, whichever comes first. So a noisy
    machine gets longer measurements instead of worse ratios. ``block_skip`` inferences at the
    start of each block are run but not recorded (cold caches after switching models).
    """

    warmup_iters: int = ruled(10, integer(0))
    block_iters: int = ruled(10, integer(1))
    block_skip: int = ruled(1, integer(0))
    min_rounds: int = ruled(5, integer(1))
    max_rounds: int = ruled(10_000, integer(1))
    min_iters: int = ruled(50, integer(1))
    min_time_s: float = ruled(1.0, number(0, note="seconds"))
    max_time_s: float = ruled(60.0, number(0, low_open=True, note="seconds"))
    target_rel_error: float | None = ruled(None, number(0, low_open=True, null="no such condition"))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.block_skip >= self.block_iters:
            raise FieldError("block_skip", self.block_skip, f"below block_iters ({self.block_iters})")
        if self.max_rounds < self.min_rounds:
            raise FieldError("max_rounds", self.max_rounds, f">= min_rounds ({self.min_rounds})")
        if self.min_time_s > self.max_time_s:
            raise FieldError("min_time_s", self.min_time_s, f"<= max_time_s ({self.max_time_s})")


def round_ratios(cand_rounds: list[list[float]], ref_rounds: list[list[float]]) -> list[float]:
    """Per-round ratio of the candidate's to the reference's 10th-percentile time."""
    return [c / r for c, r in zip(round_p10(cand_rounds), round_p10(ref_rounds), strict=False)]


def ratio_rel_error(cand_rounds: list[list[float]], ref_rounds: list[list[float]]) -> float:
    """Relative standard error of the median per-round ratio, from its MAD (robust to bursts)."""
    ratios = np.asarray(round_ratios(cand_rounds, ref_rounds))
    if len(ratios) < 3:
        return float("inf")
    median = float(np.median(ratios))
    mad_sigma = 1.4826 * float(np.median(np.abs(ratios - median)))
    return 1.2533 * mad_sigma / np.sqrt(len(ratios)) / median


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ratio_estimates(cand_rounds: list[list[float]], ref_rounds: list[list[float]]) -> dict[str, float]:
    """Estimators of candidate/reference latency from interleaved rounds (times in ms)."""
    cand = [t for r in cand_rounds for t in r]
    ref = [t for r in ref_rounds for t in r]
    pairs = list(zip(cand_rounds, ref_rounds, strict=True))
    return {
        "median_round_p10": statistics.median(round_ratios(cand_rounds, ref_rounds)),
        "median_round_median": statistics.median(statistics.median(c) / statistics.median(r) for c, r in pairs),
        "p10": percentile(cand, 10) / percentile(ref, 10),
        "median": statistics.median(cand) / statistics.median(ref),
        "min": min(cand) / min(ref),
    }


def round_p10(rounds: list[list[float]]) -> list[float]:
    """Each round's 10th-percentile time: what :func:`round_ratios` divides, kept in a confirmation
    so that any two of its models can be compared round by round afterwards."""
    return [float(np.percentile(r, 10)) for r in rounds]


def bootstrap_ratio_ci(cand_rounds: list[list[float]], ref_rounds: list[list[float]], samples: int = 2000,
                       seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval (:func:`scipy.stats.bootstrap`, seeded) of the median
    per-round p10 ratio. Rounds are resampled, each as the pair (candidate, reference) timed in it.
    With fewer than two rounds, or one ratio in every round (the reference against itself), the
    interval is that median alone; no rounds raise ValueError."""
    return median_ci(round_ratios(cand_rounds, ref_rounds), samples, seed)


def median_ci(values: Sequence[float], samples: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the median of per-round ratios (see
    :func:`bootstrap_ratio_ci`)."""
    import scipy.stats  # here, not above: the worker process imports this module

    ratios = np.asarray(values, dtype=np.float64)
    if len(ratios) == 0:
        raise ValueError("no rounds to bootstrap")
    if len(ratios) < 2 or np.all(ratios == ratios[0]):
        median = float(np.median(ratios))
        return [median, median]
    ci = scipy.stats.bootstrap((ratios,), np.median, n_resamples=samples, confidence_level=0.95,
                               method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return [float(ci.low), float(ci.high)]
