"""The SSD MultiBox loss: smooth L1 on matched priors + cross-entropy with 3:1 hard negative mining."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlnas.detection.boxes import match


class MultiBoxLoss(nn.Module):
    """SSD loss (Liu et al. 2016): ``(L_conf + alpha * L_loc) / N_pos``.

    Positives are the priors matched to a ground truth (IoU >= ``iou_threshold``, plus each ground
    truth's best prior); negatives are the ``neg_pos_ratio * N_pos`` background priors with the
    highest background loss, per image.

    :param priors: ``(N, 4)`` ``cx, cy, w, h`` default boxes of the model's resolution.
    """

    def __init__(self, priors: torch.Tensor, iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0,
                 alpha: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("priors", priors, persistent=False)
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha

    def targets(self, targets: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Matched ``(loc_targets (B, N, 4), labels (B, N))`` for a batch of ground truths."""
        priors = self.priors.cpu()
        pairs = [match(t["boxes"].float().cpu(), t["labels"].cpu(), priors, self.iou_threshold)
                 for t in targets]
        device = self.priors.device
        return torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor,
                targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """:returns: ``{"loss", "loc", "conf"}`` (``loss`` is the one to backpropagate)."""
        loc_t, labels = self.targets(targets)
        return self.from_matched(loc, conf, loc_t, labels)

    def from_matched(self, loc: torch.Tensor, conf: torch.Tensor, loc_t: torch.Tensor,
                     labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss given already matched targets (lets the sandwich rule match once per batch)."""
        pos = labels > 0
        num_pos = pos.sum().clamp_min(1).float()
        loc_loss = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
        ce = F.cross_entropy(conf.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        conf_loss = ce[pos | self._hard_negatives(ce.detach(), pos)].sum()
        loc_loss, conf_loss = loc_loss / num_pos, conf_loss / num_pos
        return {"loss": conf_loss + self.alpha * loc_loss, "loc": loc_loss, "conf": conf_loss}

    def _hard_negatives(self, ce: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        neg_loss = ce.masked_fill(pos, -1.0)  # positives never count as negatives
        rank = neg_loss.argsort(dim=1, descending=True).argsort(dim=1)
        num_neg = (self.neg_pos_ratio * pos.sum(dim=1, keepdim=True)).clamp(max=pos.shape[1] - 1)
        return rank < num_neg
