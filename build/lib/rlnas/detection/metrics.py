"""COCO mAP@[.5:.95] and mAP@.5 through torchmetrics' ``MeanAveragePrecision`` (pycocotools backend).

pycocotools is the reference COCO evaluator and works offline; torchmetrics only adapts the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.detection import MeanAveragePrecision


class DetectionMAP:
    """Accumulates detections and ground truths, then reports COCO box mAP.

    Boxes are ``xyxy``; pass them in original-image pixels so COCO's small/medium/large areas
    mean what they say (``map`` and ``map50`` do not depend on the scale).
    """

    def __init__(self) -> None:
        self._metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        # SSD keeps up to 100 low-score detections per image; that is what COCO scoring expects
        self._metric.warn_on_many_detections = False

    def update(self, preds: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]) -> None:
        """``preds``: ``boxes, scores, labels``; ``targets``: ``boxes, labels`` (optional ``iscrowd``)."""
        self._metric.update([_detach(p, ("boxes", "scores", "labels")) for p in preds],
                            [_detach(t, ("boxes", "labels", "iscrowd")) for t in targets])

    def compute(self) -> dict[str, float]:
        """``{"map": mAP@[.5:.95], "map50": mAP@.5, "map75": mAP@.75}``; -1 when there is no ground truth."""
        result = self._metric.compute()
        return {"map": float(result["map"]), "map50": float(result["map_50"]), "map75": float(result["map_75"])}


def _detach(item: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {k: item[k].detach().cpu() for k in keys if k in item}
    out["boxes"] = out["boxes"].float().reshape(-1, 4)
    out["labels"] = out["labels"].long()
    return out
