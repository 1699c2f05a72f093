"""The bound test: paired per-image differences, one-sided, alpha split over the comparisons; for
mAP@.5 a paired bootstrap over images on detections matched once (equal to torchmetrics' mAP), the
matches packed small and exact, and mAP's bootstrap interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlnas.detection.metrics import DetectionMAP
from rlnas.stats import (
    accuracy_interval,
    bound_test,
    detection_map,
    map_bound_test,
    map_interval,
    match_detections,
    pack_bits,
    pack_matches,
    unpack_bits,
    unpack_matches,
)


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


# ----------------------------------------------------------------------------- mAP@.5: the paired bootstrap


def _box(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y2]


def _image(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> dict:
    item = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    return item if scores is None else {**item, "scores": torch.tensor(scores, dtype=torch.float32)}


def _torchmetrics_map50(preds: list[dict], targets: list[dict]) -> float:
    metric = DetectionMAP()
    metric.update(preds, targets)
    return metric.compute()["map50"]


def test_fast_map_hand_computed_equals_torchmetrics() -> None:
    """Three images; classes 1 and 2 have ground truth, class 3 is detected but absent.

    Class 1 (3 ground truths, one per image) ranked: 0.95 FP (nothing there), 0.9 TP (exact), 0.85
    FP (IoU 0.45 < 0.5 with a free ground truth), 0.8 TP (IoU 90/110), 0.7 FP (a second box on a
    taken ground truth): precision 0, 1/2, 1/3, 1/2, 2/5 at recall 0, 1/3, 1/3, 2/3, 2/3, whose
    envelope is 1/2 up to recall 2/3 and nothing beyond: 67 of the 101 recall points, AP 33.5/101.
    Class 2 (1 ground truth): 0.6 FP, 0.5 TP (IoU 100/150): AP 1/2. Class 3 has no ground truth:
    left out of the mean. mAP@.5 = (33.5/101 + 1/2) / 2 = 42/101."""
    targets = [_image([_box(0, 0, 10, 10)], [1]),
               _image([_box(0, 0, 10, 10), _box(50, 50, 60, 60)], [1, 2]),
               _image([_box(0, 0, 10, 10)], [1])]
    preds = [_image([_box(20, 20, 30, 30), _box(0, 0, 10, 10)], [1, 1], [0.95, 0.9]),
             _image([_box(1, 0, 11, 10), _box(0, 0, 10, 10), _box(0, 0, 10, 10), _box(50, 50, 60, 65),
                     _box(5, 5, 9, 9)], [1, 1, 2, 2, 3], [0.8, 0.7, 0.6, 0.5, 0.99]),
             _image([_box(0, 0, 10, 4.5)], [1], [0.85])]
    matches = match_detections(preds, targets)
    assert matches.labels.tolist() == [1, 2] and matches.gt.tolist() == [[1, 0], [1, 1], [1, 0]]
    assert matches.det_tp.tolist() == [False, True, True, False, False, True, False]
    assert detection_map(matches) == pytest.approx(42 / 101, abs=1e-12)
    assert _torchmetrics_map50(preds, targets) == pytest.approx(42 / 101, abs=1e-6)


def _scenes(rng: np.random.Generator, n: int, noise: float, classes: int = 3, extra: int = 3,
            targets: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """``n`` images of 1-3 objects (or the given ``targets``) and detections of them: every object
    found with its box jittered by ``noise`` px and a score that falls with the error, plus
    ``extra`` random false positives per image."""
    if targets is None:
        targets = []
        for _ in range(n):
            k = int(rng.integers(1, 4))
            xy = rng.uniform(0, 200, (k, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(20, 80, (k, 2))], axis=1)
            targets.append(_image(boxes.tolist(), rng.integers(1, classes + 1, k).tolist()))
    preds = []
    for t in targets:
        gt = t["boxes"].numpy()
        err = rng.normal(0, noise, gt.shape)
        found = gt + err
        fp = rng.uniform(0, 200, (extra, 2))
        boxes = np.concatenate([found, np.concatenate([fp, fp + 30], axis=1)])
        scores = np.concatenate([1 / (1 + np.abs(err).mean(1)), rng.uniform(0, 0.5, extra)])
        labels = t["labels"].tolist() + rng.integers(1, classes + 1, extra).tolist()
        preds.append(_image(boxes.tolist(), labels, scores.tolist()))
    return preds, targets


def test_fast_map_equals_torchmetrics_on_random_scenes_and_resamples() -> None:
    """On random scenes the fast mAP@.5 is torchmetrics' (float32) and a resample's image weights
    give the mAP of the resampled list of images (duplicates included)."""
    rng = np.random.default_rng(0)
    for noise in (3.0, 10.0):
        preds, targets = _scenes(rng, 30, noise)
        matches = match_detections(preds, targets)
        assert detection_map(matches) == pytest.approx(_torchmetrics_map50(preds, targets), abs=1e-6)
        picks = rng.integers(0, 30, (2, 30))
        weights = np.stack([np.bincount(p, minlength=30) for p in picks])
        resampled = detection_map(matches, weights)
        for row, p in zip(resampled, picks, strict=True):
            assert row == pytest.approx(_torchmetrics_map50([preds[i] for i in p], [targets[i] for i in p]), abs=1e-6)


def test_map_bound_of_a_network_against_itself() -> None:
    """The same detections as a0's at tau = 1: margin exactly 0 in every resample, which does not
    establish the bound (it is not shown to be positive); at tau = 0.9 it holds."""
    preds, targets = _scenes(np.random.default_rng(1), 60, 6.0)
    same = match_detections(preds, targets)
    tie = map_bound_test(same, same, tau=1.0, confidence=0.99, resamples=200)
    assert tie.margin == 0 and tie.lower == 0 and tie.stderr == 0 and not tie.holds
    loose = map_bound_test(same, same, tau=0.9, confidence=0.99, resamples=200)
    assert loose.margin == pytest.approx(0.1 * detection_map(same)) and loose.lower > 0 and loose.holds


def test_map_bound_pairs_the_images_and_is_seeded() -> None:
    """A candidate with tighter boxes than a0 on the same images holds the bound at 0.99 x a0's
    mAP@.5; a much sloppier one does not; the same seed gives the same numbers."""
    rng = np.random.default_rng(2)
    a0_preds, targets = _scenes(rng, 150, 9.0)
    a0 = match_detections(a0_preds, targets)
    better = match_detections(_scenes(rng, 0, 3.0, targets=targets)[0], targets)
    worse = match_detections(_scenes(rng, 0, 20.0, targets=targets)[0], targets)
    assert detection_map(better) > detection_map(a0) > detection_map(worse)
    test = map_bound_test(better, a0, tau=0.99, confidence=0.9, comparisons=3, resamples=300, seed=5)
    assert test.holds and 0 < test.lower < test.margin and test.images == 150 and test.comparisons == 3
    assert test == map_bound_test(better, a0, tau=0.99, confidence=0.9, comparisons=3, resamples=300, seed=5)
    assert test.lower != map_bound_test(better, a0, tau=0.99, confidence=0.9, comparisons=3, resamples=300,
                                        seed=6).lower
    one = map_bound_test(better, a0, tau=0.99, confidence=0.9, resamples=300, seed=5)
    assert one.margin == test.margin and one.lower >= test.lower  # alpha split three ways asks for more
    assert not map_bound_test(worse, a0, tau=0.99, resamples=300).holds
    with pytest.raises(ValueError, match="same images"):
        map_bound_test(better, match_detections(a0_preds[:-1], targets[:-1]), tau=0.99)


def test_packed_matches_give_the_same_map_under_any_weights() -> None:
    """pack_matches keeps each class's ranking up to its last true positive (false positives
    between two true positives as an image-sorted run, no scores): through JSON and back, mAP@.5,
    every resample's mAP and the bound test are the same numbers; most of the 8 false positives
    an image ranked after every true positive are gone."""
    rng = np.random.default_rng(3)
    preds, targets = _scenes(rng, 120, 8.0, extra=8)
    matches = match_detections(preds, targets)
    packed = json.loads(json.dumps(pack_matches(matches)))
    back = unpack_matches(packed)
    assert detection_map(back) == detection_map(matches)
    weights = rng.multinomial(120, np.full(120, 1 / 120), size=20).astype(float)
    assert np.array_equal(detection_map(back, weights), detection_map(matches, weights))
    a0 = match_detections(_scenes(rng, 0, 5.0, targets=targets)[0], targets)
    assert map_bound_test(back, a0, 0.95, resamples=200) == map_bound_test(matches, a0, 0.95, resamples=200)
    assert np.array_equal(back.gt, matches.gt) and np.array_equal(back.labels, matches.labels)
    kept = int(back.det_tp.size)
    assert back.det_tp.sum() == matches.det_tp.sum() and kept < matches.det_tp.size
    assert np.all(np.diff(back.det_image) >= 0)  # image order, as match_detections orders
    assert len(json.dumps(packed)) < 3 * kept + 500  # ~1-2 bytes a detection
    with pytest.raises(ValueError, match="matches/1"):
        unpack_matches({"format": "other"})


def test_map_interval_is_a_seeded_bootstrap_interval() -> None:
    preds, targets = _scenes(np.random.default_rng(4), 100, 8.0)
    matches = match_detections(preds, targets)
    low, high = map_interval(matches, resamples=400)
    assert low < detection_map(matches) < high and (low, high) == map_interval(matches, resamples=400)
    narrow = map_interval(matches, confidence=0.5, resamples=400)
    assert low < narrow[0] < narrow[1] < high
