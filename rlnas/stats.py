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

Detection's accuracy, mAP@.5, is not a mean over images: :func:`map_bound_test` is the same test
by a paired bootstrap over images. Each network's detections are matched to the ground truth
once (:func:`match_detections`, pycocotools' matching); a resample only changes how many times
each image counts, so its mAP (:func:`detection_map`, torchmetrics' number on the same boxes) is
a weighted cumulative sum over the detections ranked once, for 1000 resamples of 2000 images in
about a second. mAP@[.5:.95] would be the mean of ten such mAPs (one matching per IoU
threshold, the same resamples); the search constrains mAP@.5, so only that is tested.

A network's matches travel as :func:`pack_matches` (JSON: per class, the images of its ranked
detections up to its last true positive and which of them are true positives; the ground-truth
counts), which :func:`unpack_matches` turns back into matches with the same mAP under any image
weights: what the finalists keep per network, as packed bits are for top-1. :func:`map_interval`
is the bootstrap percentile interval of one network's mAP@.5.
"""

from __future__ import annotations

import base64
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse
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


# ---------------------------------------------------------------------------------------------
# mAP@.5: a paired bootstrap over images (mAP is not a mean over images)

#: The 101 recall points of COCO's interpolated AP as torchmetrics' ``MeanAveragePrecision`` hands
#: them to pycocotools (``rec_thresholds``: a float32 ``torch.linspace``, so that e.g. a recall of
#: exactly 0.3 falls below its 0.3 point; pycocotools' own float64 points differ there)
RECALL_POINTS = np.array(torch.linspace(0.0, 1.00, round(1.00 / 0.01) + 1).tolist(), dtype=np.float64)


@dataclass(frozen=True)
class DetectionMatches:
    """One network's detections on a set of images, matched to the ground truth once at one IoU
    threshold exactly as pycocotools does it for box mAP (per image and class; up to
    ``max_detections`` per image and class, highest score first; greedy, each detection taking the
    free ground truth of highest IoU >= the threshold). Matching never looks across images, so this
    is all the AP of any multiset of these images needs (:func:`detection_map` with weights).

    :ivar labels: the classes with ground truth, sorted (detections of other classes are dropped:
        COCO leaves a class without ground truth out of the mean).
    :ivar gt: ``(images, classes)`` ground-truth boxes per image and class.
    :ivar det_image, det_class, det_score, det_tp: per kept detection: its image, class index (into
        ``labels``), score, and whether it matched a ground truth; in image order, then by class,
        then by descending score (stable), the order pycocotools ranks ties in.
    :ivar iou_threshold: the IoU a match needs (0.5: mAP@.5, the accuracy the search constrains).
    """

    labels: np.ndarray
    gt: np.ndarray
    det_image: np.ndarray
    det_class: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    iou_threshold: float

    @property
    def images(self) -> int:
        return int(self.gt.shape[0])


def _as_array(value: object, dtype: type) -> np.ndarray:
    value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    return np.asarray(value, dtype=dtype)


def _box_iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """pycocotools' box IoU (``maskApi.c bbIou``, no crowd) of ``xywh`` boxes, in float64."""
    w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``xyxy`` to ``xywh`` in float32 (as torchmetrics hands the boxes to pycocotools), then float64."""
    b = boxes_xyxy.reshape(-1, 4).astype(np.float32)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).astype(np.float64)


def match_detections(preds: list[dict], targets: list[dict], iou_threshold: float = 0.5,
                     max_detections: int = 100) -> DetectionMatches:
    """:class:`DetectionMatches` of per-image ``preds`` (``boxes`` xyxy, ``scores``, ``labels``)
    against ``targets`` (``boxes``, ``labels``) as :class:`rlnas.detection.metrics.DetectionMAP`
    takes them (tensors or arrays). Crowd ground truth (``iscrowd``) is refused: COCO's crowd
    regions are ignore regions, not modelled here."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
    gt_labels = [_as_array(t["labels"], np.int64).reshape(-1) for t in targets]
    if any(_as_array(t["iscrowd"], np.int64).any() for t in targets if "iscrowd" in t):
        raise ValueError("crowd ground truth (iscrowd=1) is not supported")
    labels = np.unique(np.concatenate(gt_labels)) if gt_labels else np.zeros(0, np.int64)
    index = {int(label): k for k, label in enumerate(labels)}
    gt = np.zeros((len(targets), len(labels)), dtype=np.int64)
    image, cls, score, tp = [], [], [], []
    thr = min(iou_threshold, 1 - 1e-10)
    for i, (p, t, g_lab) in enumerate(zip(preds, targets, gt_labels, strict=True)):
        g_box = _xywh(_as_array(t["boxes"], np.float64))
        d_box = _xywh(_as_array(p["boxes"], np.float64))
        d_score = _as_array(p["scores"], np.float32).reshape(-1).astype(np.float64)
        d_lab = _as_array(p["labels"], np.int64).reshape(-1)
        for label in np.unique(g_lab):
            gt[i, index[int(label)]] = int((g_lab == label).sum())
        for label in np.unique(d_lab):
            if int(label) not in index:
                continue
            d = np.flatnonzero(d_lab == label)
            d = d[np.argsort(-d_score[d], kind="mergesort")][:max_detections]
            g = np.flatnonzero(g_lab == label)
            hit = np.zeros(len(d), dtype=bool)
            if len(g):
                ious = _box_iou_xywh(d_box[d], g_box[g])
                taken = np.zeros(len(g), dtype=bool)
                for j in range(len(d)):
                    cand = np.where(taken, -1.0, ious[j])
                    best = cand.max()
                    if best >= thr:  # the last of equal IoUs, as pycocotools' loop picks
                        m = len(g) - 1 - int(np.argmax(cand[::-1]))
                        taken[m] = hit[j] = True
            image.append(np.full(len(d), i))
            cls.append(np.full(len(d), index[int(label)]))
            score.append(d_score[d])
            tp.append(hit)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return DetectionMatches(labels, gt, cat(image, np.int64), cat(cls, np.int64), cat(score, np.float64),
                            cat(tp, bool), float(iou_threshold))


@dataclass(frozen=True)
class _ClassRanking:
    """One class's detections over all images, ranked as pycocotools ranks them, reduced to what
    AP needs under any image weights: the true positives' images in rank order, and how many false
    positives of each image rank before each true positive (sparse ``(TP, images)``, by the
    number of true positives ranked before them)."""

    tp_image: np.ndarray
    fp_before: sparse.csr_matrix
    gt: np.ndarray


def _rankings(matches: DetectionMatches) -> list[_ClassRanking]:
    out = []
    for c in range(len(matches.labels)):
        sel = np.flatnonzero(matches.det_class == c)
        order = sel[np.argsort(-matches.det_score[sel], kind="mergesort")]
        tp, image = matches.det_tp[order], matches.det_image[order]
        segment = np.cumsum(tp)[~tp]  # true positives ranked before each false positive
        fp_image = image[~tp]
        keep = segment < tp.sum()  # false positives after the last true positive change nothing
        fp = sparse.csr_matrix((np.ones(int(keep.sum())), (segment[keep], fp_image[keep])),
                               shape=(int(tp.sum()), matches.images))
        out.append(_ClassRanking(image[tp], fp, matches.gt[:, c].astype(np.float64)))
    return out


def _weighted_map(rankings: list[_ClassRanking], weights: np.ndarray) -> np.ndarray:
    """COCO AP (101-point interpolated precision) averaged over the classes with ground truth, for
    each row of image ``weights`` (``(B, images)`` multiplicities); -1 where no class has any."""
    total = np.zeros(len(weights))
    counted = np.zeros(len(weights))
    for r in rankings:
        npig = weights @ r.gt
        present = npig > 0
        ap = np.zeros(len(weights))
        if len(r.tp_image):
            tps = np.cumsum(weights[:, r.tp_image], axis=1)
            fps = np.cumsum(np.asarray((r.fp_before @ weights.T).T), axis=1)
            precision = tps / (fps + tps + np.spacing(1))
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for b in np.flatnonzero(present):
                at = np.searchsorted(tps[b] / npig[b], RECALL_POINTS, side="left")
                ap[b] = np.where(at < len(r.tp_image), envelope[b, np.minimum(at, len(r.tp_image) - 1)], 0.0).mean()
        total += np.where(present, ap, 0.0)
        counted += present
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / np.maximum(counted, 1), -1.0)


def detection_map(matches: DetectionMatches, weights: np.ndarray | None = None) -> float | np.ndarray:
    """COCO box mAP at ``matches.iou_threshold`` (mAP@.5 for the default matching), equal to
    torchmetrics' ``MeanAveragePrecision`` (pycocotools backend, ``map_50``) on the same boxes.

    :param weights: ``(B, images)`` image multiplicities (a bootstrap resample's counts): the mAP of
        each multiset of images, ``(B,)``; None: the images once each, a float.
    """
    rankings = _rankings(matches)
    if weights is None:
        return float(_weighted_map(rankings, np.ones((1, matches.images)))[0])
    return _weighted_map(rankings, np.atleast_2d(np.asarray(weights, dtype=np.float64)))


@dataclass(frozen=True)
class BootstrapBoundTest(BoundTest):
    """:class:`BoundTest` of a metric that is not a mean over images (mAP), by a paired bootstrap:
    ``stderr`` is the resampled margins' standard deviation, ``lower`` the percentile lower bound
    (at most ``alpha`` of the resamples fall below it, ``alpha = (1 - confidence) / comparisons``).

    ``holds`` asks ``lower > 0`` (strictly): the bound is established only when more than
    ``1 - alpha`` of the resamples put the margin above zero, so a margin of exactly zero in every
    resample (a network against itself at ``tau = 1``) does not establish it."""

    resamples: int
    seed: int

    @property
    def holds(self) -> bool:
        return self.lower > 0


def map_bound_test(int8: DetectionMatches, a0_fp32: DetectionMatches, tau: float, confidence: float = 0.9,
                   comparisons: int = 1, resamples: int = 1000, seed: int = 0,
                   chunk: int = 50) -> BootstrapBoundTest:
    """Is ``mAP_INT8(a) >= tau * mAP_FP32(a0)`` on these images, by statistics rather than luck?

    mAP is not a mean over images, so :func:`bound_test`'s normal approximation does not apply:
    the images are resampled with replacement (``resamples`` times, seeded), the *same* resample for
    both networks (paired: the images both find hard stay together), and the margin
    ``mAP_INT8(a) - tau * mAP_FP32(a0)`` recomputed on each (:func:`detection_map` on the matches
    made once: a resample only reweights images). ``int8`` and ``a0_fp32`` must be matched on the
    same images, in the same order, at the same IoU threshold (mAP@.5 for the search's constraint).
    """
    if not np.array_equal(int8.gt, a0_fp32.gt) or not np.array_equal(int8.labels, a0_fp32.labels):
        raise ValueError("the two networks' detections were not matched against the same images")
    if int8.iou_threshold != a0_fp32.iou_threshold:
        raise ValueError(f"IoU thresholds differ: {int8.iou_threshold} and {a0_fp32.iou_threshold}")
    n = int8.images
    if n < 2 or resamples < 2:
        raise ValueError(f"need >= 2 images and >= 2 resamples, got {n} and {resamples}")
    if not 0 < confidence < 1 or comparisons < 1:
        raise ValueError(f"confidence {confidence} must be in (0, 1) and comparisons {comparisons} >= 1")
    ours, theirs = _rankings(int8), _rankings(a0_fp32)
    ones = np.ones((1, n))
    margin = float(_weighted_map(ours, ones)[0] - tau * _weighted_map(theirs, ones)[0])
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    margins = np.concatenate([_weighted_map(ours, w) - tau * _weighted_map(theirs, w)
                              for w in np.array_split(counts.astype(np.float64), max(1, resamples // chunk))])
    alpha = (1 - confidence) / comparisons
    lower = float(np.sort(margins)[int(np.floor(alpha * resamples))])
    return BootstrapBoundTest(margin, float(margins.std(ddof=1)), lower, confidence, comparisons, n,
                              resamples, seed)


# ---------------------------------------------------------------------------------------------
# the matches as a compact record (what the finalists keep per network and split)

#: :func:`pack_matches`' format tag
MATCHES_FORMAT = "matches/1"
_INT_TYPES = {"u1": np.uint8, "u2": np.uint16, "u4": np.uint32}


def _pack_ints(values: np.ndarray) -> str:
    """Non-negative integers as ``"u<bytes>:"`` + base64 of their zlib'd bytes, in the smallest
    unsigned type that holds them."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if len(values) and values.min() < 0:
        raise ValueError("negative values cannot be packed")
    top = int(values.max()) if len(values) else 0
    tag = next(t for t, d in _INT_TYPES.items() if top <= np.iinfo(d).max)
    data = zlib.compress(values.astype(_INT_TYPES[tag]).tobytes(), 9)
    return f"{tag}:{base64.b64encode(data).decode('ascii')}"


def _unpack_ints(packed: str, count: int) -> np.ndarray:
    tag, data = packed.split(":", 1)
    values = np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype=_INT_TYPES[tag]).astype(np.int64)
    if len(values) != count:
        raise ValueError(f"a packed array of {len(values)} values where {count} were recorded")
    return values


def pack_matches(matches: DetectionMatches) -> dict[str, Any]:
    """``matches`` as a small JSON-serialisable record that :func:`unpack_matches` reads back.

    AP under any image weights reads, per class, only the images of its true positives in rank
    order and, for each false positive, its image and how many true positives rank before it
    (:func:`_rankings`), plus the ground-truth counts. That is all this keeps, exactly:

    - per class, the true positives' images in rank order (pycocotools' ranking: descending score,
      ties in image order);
    - the false positives ranked between two true positives (or before the first) as a run,
      sorted by image, delta-coded; their order inside the run changes no precision at any true
      positive, so no AP. False positives ranked after the class's last true positive are
      dropped: they change neither the recall nor the precision at any true positive, under any
      weights (a resample reweights images, it cannot reorder the ranking);
    - the ``(images, classes)`` ground-truth counts; no scores (only their order mattered).

    Each integer array is zlib'd in the smallest unsigned type. :func:`detection_map` and
    :func:`map_bound_test` give the same numbers on the unpacked matches as on ``matches``
    (any weights, any resamples); 2000 images with ~100 detections each pack to ~0.2-0.3 MB."""
    tp_image, runs, fp_delta, tps = [], [], [], []
    for c in range(len(matches.labels)):
        sel = np.flatnonzero(matches.det_class == c)
        order = sel[np.argsort(-matches.det_score[sel], kind="mergesort")]
        tp, image = matches.det_tp[order], matches.det_image[order]
        segment = np.cumsum(tp)[~tp]  # true positives ranked before each false positive
        keep = segment < tp.sum()
        segment, fp_image = segment[keep], image[~tp][keep]
        by = np.lexsort((fp_image, segment))
        segment, fp_image = segment[by], fp_image[by]
        first = np.ones(len(segment), dtype=bool)
        first[1:] = segment[1:] != segment[:-1]
        delta = fp_image.copy()
        delta[~first] = np.diff(fp_image)[~first[1:]]
        tp_image.append(image[tp])
        runs.append(np.bincount(segment, minlength=int(tp.sum())))
        fp_delta.append(delta)
        tps.append(int(tp.sum()))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    return {"format": MATCHES_FORMAT, "images": matches.images, "iou_threshold": matches.iou_threshold,
            "labels": [int(x) for x in matches.labels], "gt": _pack_ints(matches.gt), "tps": tps,
            "tp_image": _pack_ints(cat(tp_image)), "fp_runs": _pack_ints(cat(runs)),
            "fps": int(sum(len(d) for d in fp_delta)), "fp_image": _pack_ints(cat(fp_delta))}


def unpack_matches(packed: dict[str, Any]) -> DetectionMatches:
    """The :class:`DetectionMatches` of a :func:`pack_matches` record. Per class, its ranking as
    kept: each run of false positives (by image) before the true positive that ends it, scored by
    rank (``det_score`` in (0, 1], falling with the rank within the class: their order, not the
    network's scores); in image order, then class, then score, as :func:`match_detections` orders."""
    if not isinstance(packed, dict) or packed.get("format") != MATCHES_FORMAT:
        raise ValueError(f"not a {MATCHES_FORMAT} record: {str(packed)[:80]!r}")
    n, labels = int(packed["images"]), np.asarray(packed["labels"], dtype=np.int64)
    tps = np.asarray(packed["tps"], dtype=np.int64)
    segments = int(tps.sum())
    gt = _unpack_ints(packed["gt"], n * len(labels)).reshape(n, len(labels))
    tp_image = _unpack_ints(packed["tp_image"], segments)
    runs = _unpack_ints(packed["fp_runs"], segments)
    delta = _unpack_ints(packed["fp_image"], int(packed["fps"]))
    cum = np.cumsum(delta)
    run_start = np.cumsum(runs) - runs
    fp_image = cum - np.repeat(np.concatenate([[0], cum])[run_start], runs)
    # each segment: its false positives, then its true positive
    length = runs + 1
    end = np.cumsum(length)
    tp = np.zeros(int(end[-1]) if segments else 0, dtype=bool)
    tp[end - 1] = True
    image = np.zeros(len(tp), dtype=np.int64)
    image[tp], image[~tp] = tp_image, fp_image
    per_class = np.bincount(np.repeat(np.arange(len(labels)), tps), weights=length,
                            minlength=len(labels)).astype(np.int64)
    cls = np.repeat(np.arange(len(labels)), per_class).astype(np.int64)
    score = np.concatenate([(k - np.arange(k)) / k for k in per_class if k]) if len(tp) else np.zeros(0)
    order = np.lexsort((-score, cls, image))
    return DetectionMatches(labels, gt, image[order], cls[order], score[order], tp[order],
                            float(packed["iou_threshold"]))


def map_interval(matches: DetectionMatches, confidence: float = 0.95, resamples: int = 1000, seed: int = 0,
                 chunk: int = 50) -> tuple[float, float]:
    """Bootstrap percentile interval of one network's mAP (at ``matches.iou_threshold``): the
    images resampled with replacement ``resamples`` times (seeded), mAP recomputed on each
    (:func:`detection_map`'s weights), the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles."""
    n = matches.images
    if n < 2 or resamples < 2 or not 0 < confidence < 1:
        raise ValueError(f"need >= 2 images, >= 2 resamples and confidence in (0, 1); got {n}, {resamples}, "
                         f"{confidence}")
    rankings = _rankings(matches)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    maps = np.concatenate([_weighted_map(rankings, w)
                           for w in np.array_split(counts.astype(np.float64), max(1, resamples // chunk))])
    low, high = np.quantile(maps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)
