"""The bound test: paired per-image differences, one-sided, alpha split over the comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from rlnas.stats import accuracy_interval, bound_test, pack_bits, unpack_bits


def test_bits_round_trip() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1894):
        bits = rng.random(n) < 0.8
        assert np.array_equal(unpack_bits(pack_bits(bits), n), bits)


def test_pairing_sees_what_two_separate_accuracies_cannot() -> None:
    """a0 right on 90 % of 2000 images; the network right on the same images but 12 it loses:
    0.894 >= 0.99 x 0.90 = 0.891 by a margin the paired test establishes and an unpaired one
    (two independent standard errors of ~0.7 points) never could."""
    a0 = np.zeros(2000, dtype=bool)
    a0[:1800] = True
    net = a0.copy()
    net[:12] = False
    test = bound_test(net, a0, tau=0.99, confidence=0.9)
    assert test.margin == pytest.approx(0.894 - 0.99 * 0.9)
    assert test.holds and 0 < test.lower < test.margin
    unpaired_se = np.sqrt(0.894 * 0.106 / 2000 + 0.9 * 0.1 / 2000)
    assert test.margin - 1.2816 * unpaired_se < 0 < test.lower


def test_more_comparisons_and_more_confidence_ask_for_more() -> None:
    rng = np.random.default_rng(1)
    a0 = rng.random(1500) < 0.88
    net = a0 & (rng.random(1500) > 0.004)
    one, three = bound_test(net, a0, 0.99, 0.9, 1), bound_test(net, a0, 0.99, 0.9, 3)
    sure = bound_test(net, a0, 0.99, 0.99, 1)
    assert one.margin == three.margin == sure.margin and three.lower < one.lower and sure.lower < one.lower
    worse = a0 & (rng.random(1500) > 0.05)  # loses 5 % of what a0 gets right: below the bound
    assert not bound_test(worse, a0, 0.99).holds
    with pytest.raises(ValueError, match="equal-length"):
        bound_test(net[:10], a0, 0.99)


def test_wilson_interval() -> None:
    low, high = accuracy_interval(np.array([True] * 880 + [False] * 120))
    assert low < 0.88 < high and high - low == pytest.approx(2 * 1.96 * np.sqrt(0.88 * 0.12 / 1000), rel=0.02)
    assert accuracy_interval(np.ones(50, dtype=bool))[1] == pytest.approx(1.0)
