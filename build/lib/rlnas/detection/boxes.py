"""Default boxes (priors), SSD box encoding/decoding, matching and NMS post-processing.

The default boxes themselves belong to the SSD family (:mod:`rlnas.spaces.priors`); they are
re-exported here. Boxes are normalised to [0, 1] image coordinates. Priors are ``cx, cy, w, h``; ground truth and
detections are ``x1, y1, x2, y2``. Offsets use the SSD variances (0.1, 0.2), i.e. torchvision's
box-coder weights (10, 10, 5, 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, box_convert, box_iou

from rlnas.spaces.priors import boxes_per_location, default_boxes

__all__ = ["VARIANCES", "PostProcess", "boxes_per_location", "decode", "default_boxes", "encode", "match",
           "postprocess"]

VARIANCES = (0.1, 0.2)


def encode(boxes_xyxy: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Regression targets of ``boxes_xyxy`` (N, 4) relative to ``priors`` (N, 4, cxcywh)."""
    b = box_convert(boxes_xyxy, "xyxy", "cxcywh")
    dxy = (b[:, :2] - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    dwh = torch.log(b[:, 2:].clamp_min(1e-6) / priors[:, 2:]) / VARIANCES[1]
    return torch.cat([dxy, dwh], dim=1)


def decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: offsets ``(..., N, 4)`` to ``xyxy`` boxes ``(..., N, 4)``."""
    xy = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    # clamp before exp: an untrained head must not produce inf boxes
    wh = priors[..., 2:] * torch.exp((loc[..., 2:] * VARIANCES[1]).clamp(max=math.log(1000.0)))
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)


def match(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, priors: torch.Tensor,
          iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD matching of one image: ``(loc_targets (N, 4), labels (N,))``, label 0 = background.

    A prior takes the ground truth it overlaps most if that IoU >= ``iou_threshold``; every ground
    truth also claims its best prior, so no object goes unmatched.
    """
    n = priors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.zeros(n, 4), torch.zeros(n, dtype=torch.int64)
    iou = box_iou(gt_boxes, box_convert(priors, "cxcywh", "xyxy"))  # (G, N)
    best_iou, best_gt = iou.max(dim=0)
    best_prior = iou.argmax(dim=1)
    best_gt[best_prior] = torch.arange(gt_boxes.shape[0])
    best_iou[best_prior] = 1.0
    labels = gt_labels[best_gt].clone()
    labels[best_iou < iou_threshold] = 0
    return encode(gt_boxes[best_gt], priors), labels


@dataclass(frozen=True)
class PostProcess:
    """Decoding and NMS settings (SSD defaults: top 200 candidates per class, NMS at 0.45; COCO scores at most 100 detections per image)."""

    score_threshold: float = 0.01
    nms_iou: float = 0.45
    topk_candidates: int = 200
    max_detections: int = 100


def postprocess(loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor,
                cfg: PostProcess = PostProcess()) -> list[dict[str, torch.Tensor]]:
    """Raw head outputs to detections, one dict per image.

    :param loc: ``(B, N, 4)`` offsets; :param conf: ``(B, N, C + 1)`` logits, class 0 background.
    :returns: ``[{"boxes": (K, 4) xyxy in [0, 1], "scores": (K,), "labels": (K,) in 1..C}]``.
    """
    boxes = decode(loc.float(), priors).clamp(0.0, 1.0)
    scores = torch.softmax(conf.float(), dim=-1)[..., 1:]
    return [_image_detections(b, s, cfg) for b, s in zip(boxes, scores, strict=True)]


def _image_detections(boxes: torch.Tensor, scores: torch.Tensor, cfg: PostProcess) -> dict[str, torch.Tensor]:
    # per-class top-k (torchvision SSD style), vectorised over classes
    k = min(cfg.topk_candidates, scores.shape[0])
    top_scores, top_prior = scores.topk(k, dim=0)  # (k, C)
    labels = torch.arange(1, scores.shape[1] + 1).expand(k, -1)
    keep = top_scores > cfg.score_threshold
    cand_boxes, cand_scores, labels = boxes[top_prior[keep]], top_scores[keep], labels[keep]
    kept = batched_nms(cand_boxes, cand_scores, labels, cfg.nms_iou)[: cfg.max_detections]
    return {"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept]}
