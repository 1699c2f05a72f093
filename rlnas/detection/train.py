"""Detection supernet training: :class:`~rlnas.supernet.train.SupernetTrainer` with the SSD loss.

Everything but the step and the evaluation is the classification trainer's: the recipe and its
phases (progressive shrinking, channel sorting), the learning-rate schedule, ``last.pt`` /
``supernet.pt`` checkpoints with resume after a kill, TensorBoard and the ``meta`` the accuracy
oracle keys on. Per step, the sandwich rule runs the largest, the smallest and ``num_random``
random subnets on one batch (ground truth matched once) and sums their gradients:

- in place (no a0): the largest subnet learns the MultiBox loss
  (:class:`~rlnas.detection.loss.MultiBoxLoss`), the others ``(1 - kd_alpha) * MultiBox + kd_alpha
  * distillation`` from the largest subnet's detached outputs (KL on every prior's class scores,
  smooth L1 on matched priors' offsets);
- from a0 (``a0.checkpoint``; ``recipe=ssd_from_a0``: ``teacher=a0``): the maximal network starts as
  the user's trained detector, and every subnet, the largest included, learns that mix from the
  frozen a0's outputs, as the classification trainer's ``from_a0``.

Validation reports mAP@.5 as ``val_acc_{max,min}`` (the accuracy the search constrains) and
mAP@[.5:.95] as ``val_map_{max,min}``.

    rlnas-train-supernet model=ssd_mobilenet_v1 dataset=coco128 recipe=ssd   # dispatched by dataset.task
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from rlnas.arch import Arch
from rlnas.data.detection import DetectionData, Target, build_detection_data
from rlnas.data.spec import resolve_path
from rlnas.detection.evaluate import evaluate_detection, recalibrate
from rlnas.detection.loss import MultiBoxLoss
from rlnas.spaces.base import Supernet
from rlnas.spaces.ssd import ElasticSSD  # noqa: F401  (registers the SSD families)
from rlnas.supernet.checkpoint import load_file
from rlnas.supernet.recipe import Recipe
from rlnas.supernet.train import SupernetTrainer, sandwich_step

log = logging.getLogger(__name__)


def distill_loss(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], labels: Tensor,
                 temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on every prior's class scores (x T^2) + smooth L1 on the offsets of
    the priors matched to ground truth."""
    s_loc, s_conf = student
    t_loc, t_conf = teacher
    t = temperature
    kd_conf = F.kl_div(F.log_softmax(s_conf / t, -1), F.log_softmax(t_conf / t, -1), reduction="none",
                       log_target=True).sum(-1).mean() * t * t
    pos = labels > 0
    kd_loc = F.smooth_l1_loss(s_loc[pos], t_loc[pos]) if pos.any() else s_loc.sum() * 0.0
    return kd_conf + kd_loc


def detection_train_step(supernet: Supernet, x: Tensor, targets: list[Target], archs: list[tuple[str, Arch]],
                         recipe: Recipe, optimizer: torch.optim.Optimizer, loss_fn: MultiBoxLoss,
                         autocast: Callable[[], AbstractContextManager],
                         teacher: nn.Module | None = None) -> dict[str, float]:
    """:func:`~rlnas.supernet.train.sandwich_step` for detection (ground truth matched once). In
    place (no ``teacher``): the largest subnet learns the MultiBox loss, the others ``(1 - kd_alpha)
    * MultiBox + kd_alpha *`` :func:`distill_loss` from it. With a frozen ``teacher`` (a0), every
    subnet, the largest included, learns that mix from the teacher's outputs."""
    loc_t, labels = loss_fn.targets(targets)
    taught = None
    if teacher is not None:
        with torch.no_grad(), autocast():
            taught = tuple(t.float() for t in teacher(x))

    def subnet_loss(output: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor] | None) -> Tensor:
        loss = loss_fn.from_matched(*output, loc_t, labels)["loss"]
        if teacher is None or recipe.kd_alpha <= 0:
            return loss
        kd = distill_loss(output, teacher, labels, recipe.kd_temperature)
        return (1 - recipe.kd_alpha) * loss + recipe.kd_alpha * kd

    return sandwich_step(supernet, x, archs, recipe, optimizer, autocast, subnet_loss, taught)


@torch.no_grad()
def evaluate_subnet_map(supernet: Supernet, arch: Arch, data: DetectionData, val_images: int | None,
                        recal_images: int) -> dict[str, float]:
    """FP32 mAP of ``arch`` after BN recalibration, on an extracted copy (the supernet is untouched)."""
    model = recalibrate(supernet.extract(arch), data, recal_images)
    return evaluate_detection(model, None, data, max_images=val_images)


def load_backbone(supernet: Supernet, path: str | Path) -> int:
    """Initialise the SSD backbone from a ``mobilenet_v1`` classification checkpoint (``supernet.pt``,
    ``last.pt``, or a state dict with ``backbone.*`` keys such as the ``a0.pt`` of
    ``experiments/train_a0.py --model mobilenet_v1``; the stem does not change shapes, but an SSD
    runs the imagenet stem). Returns the number of tensors loaded."""
    state = load_file(path)
    state = state.get("model", state)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise KeyError(f"{path} has no backbone.* weights (a mobilenet_v1 classification a0.pt, supernet.pt or last.pt)")
    supernet.backbone.load_state_dict(backbone)
    return len(backbone)


class DetectionSupernetTrainer(SupernetTrainer):
    """:class:`SupernetTrainer` for ``task == "detection"`` supernets and datasets.

    Same config (``conf/train_supernet.yaml``); ``init.checkpoint`` names a ``mobilenet_v1``
    classification checkpoint whose backbone initialises the detector's.
    """

    DEVICES = ("cpu",)  # its loss and evaluation keep priors and targets on the CPU

    def __init__(self, cfg: DictConfig, on_step: Callable[[SupernetTrainer], None] | None = None) -> None:
        super().__init__(cfg, on_step)
        if self.supernet.task != "detection":
            raise ValueError(f"{cfg.model.name} is a {self.supernet.task} supernet; use the classification trainer")
        self.loss_fn = MultiBoxLoss(self.supernet.priors)

    def build_data(self) -> DetectionData:
        return build_detection_data(self.dataset_config(), self.resolution)

    def init_weights(self) -> None:
        if self.a0_path is not None:  # the user's trained detector: the maximal network is a0
            super().init_weights()
            return
        init = self.cfg.get("init") or {}
        if init.get("checkpoint"):
            path = resolve_path(init["checkpoint"])
            log.info("backbone: %d tensors from %s", load_backbone(self.supernet, path), path)
        elif init.get("torchvision"):
            raise ValueError("torchvision has no SSD-MobileNetV1 weights; use init.checkpoint=<mobilenet_v1 supernet.pt>")

    def step(self, x: Tensor, y: list[Target], archs: list[tuple[str, Arch]]) -> dict[str, float]:
        """:func:`detection_train_step` on a batch of images and their ground-truth targets."""
        return detection_train_step(self.supernet, x, y, archs, self.recipe, self.optimizer, self.loss_fn,
                                    self.autocast, self.teacher)

    def evaluate_arch(self, arch: Arch, val_images: int | None, recal_images: int) -> dict[str, float]:
        """mAP@.5 as ``val_acc`` (what the search constrains) and mAP@[.5:.95] as ``val_map``."""
        result = evaluate_subnet_map(self.supernet, arch, self.data, val_images, recal_images)
        return {"val_acc": result["map50"], "val_map": result["map"]}
