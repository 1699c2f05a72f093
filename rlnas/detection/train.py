"""Detection supernet training: :class:`~rlnas.supernet.train.SupernetTrainer` with the SSD loss.

Everything but the step and the evaluation is the classification trainer's: the recipe and its
phases (progressive shrinking, channel sorting), the learning-rate schedule, ``last.pt`` /
``supernet.pt`` checkpoints with resume after a kill, TensorBoard and the ``meta`` the accuracy
oracle keys on. Per step, the sandwich rule runs the largest, the smallest and ``num_random``
random subnets on one batch (ground truth matched once) and sums their gradients:

- the largest subnet learns the MultiBox loss (:class:`~rlnas.detection.loss.MultiBoxLoss`);
- the others learn ``(1 - kd_alpha) * MultiBox + kd_alpha * distillation`` from the largest
  subnet's detached outputs (KL on every prior's class scores, smooth L1 on matched priors' offsets).

Validation reports mAP@.5 as ``val_acc_{max,min}`` (the accuracy the search constrains) and
mAP@[.5:.95] as ``val_map_{max,min}``.

    python -m rlnas.detection.train model=ssd_mobilenet_v1 dataset=coco128 recipe=ssd
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import rlnas
from rlnas.arch import Arch
from rlnas.data.detection import DetectionData, Target, build_detection_data, resolve_path
from rlnas.detection.evaluate import evaluate_detection, recalibrate
from rlnas.detection.loss import MultiBoxLoss
from rlnas.spaces.base import Supernet
from rlnas.spaces.ssd import ElasticSSD  # noqa: F401  (registers the SSD families)
from rlnas.supernet.checkpoint import load_file
from rlnas.supernet.train import Recipe, SupernetTrainer, phase_space, sandwich

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
                         autocast: Callable[[], AbstractContextManager]) -> dict[str, float]:
    """Forward/backward every subnet of the sandwich (gradients accumulate), then one optimizer
    step. Returns the mean loss per subnet kind."""
    loc_t, labels = loss_fn.targets(targets)
    teacher: tuple[Tensor, Tensor] | None = None
    sums: dict[str, list[float]] = {}
    for kind, arch in archs:
        supernet.set_active(arch)
        with autocast():
            loc, conf = supernet(x)
        loc, conf = loc.float(), conf.float()
        loss = loss_fn.from_matched(loc, conf, loc_t, labels)["loss"]
        if teacher is None:
            teacher = (loc.detach(), conf.detach())
        elif recipe.kd_alpha > 0:
            kd = distill_loss((loc, conf), teacher, labels, recipe.kd_temperature)
            loss = (1 - recipe.kd_alpha) * loss + recipe.kd_alpha * kd
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} for the {kind} subnet {arch.short()}")
        loss.backward()
        sums.setdefault(kind, []).append(loss.item())
    if recipe.grad_clip:
        nn.utils.clip_grad_norm_(supernet.parameters(), recipe.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    supernet.set_active(archs[0][1])
    return {k: float(np.mean(v)) for k, v in sums.items()}


@torch.no_grad()
def evaluate_subnet_map(supernet: Supernet, arch: Arch, data: DetectionData, val_images: int | None,
                        recal_images: int) -> dict[str, float]:
    """FP32 mAP of ``arch`` after BN recalibration, on an extracted copy (the supernet is untouched)."""
    model = recalibrate(supernet.extract(arch), data, recal_images)
    return evaluate_detection(model, None, data, max_images=val_images)


def load_backbone(supernet: Supernet, path: str | Path) -> int:
    """Initialise the SSD backbone from a ``mobilenet_v1`` classification checkpoint (``supernet.pt``,
    ``last.pt`` or a state dict with ``backbone.*`` keys; the stem does not change shapes).
    Returns the number of tensors loaded."""
    state = load_file(path)
    state = state.get("model", state)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise KeyError(f"{path} has no backbone.* weights")
    supernet.backbone.load_state_dict(backbone)
    return len(backbone)


class DetectionSupernetTrainer(SupernetTrainer):
    """:class:`SupernetTrainer` for ``task == "detection"`` supernets and datasets.

    Same config (``conf/train_supernet.yaml``); ``init.checkpoint`` names a ``mobilenet_v1``
    classification checkpoint whose backbone initialises the detector's.
    """

    def __init__(self, cfg: DictConfig, on_step: Callable[[SupernetTrainer], None] | None = None) -> None:
        super().__init__(cfg, on_step)
        if self.supernet.task != "detection":
            raise ValueError(f"{cfg.model.name} is a {self.supernet.task} supernet; use the classification trainer")
        self.loss_fn = MultiBoxLoss(self.supernet.priors)

    def _build_data(self) -> DetectionData:
        ds = dict(OmegaConf.to_container(self.cfg.dataset, resolve=True))
        if self.recipe.train_images is not None:
            ds["train_limit"] = int(self.recipe.train_images)
        return build_detection_data(ds, self.resolution)

    def _init_weights(self) -> None:
        init = self.cfg.get("init") or {}
        if init.get("checkpoint"):
            path = resolve_path(init["checkpoint"])
            log.info("backbone: %d tensors from %s", load_backbone(self.supernet, path), path)
        elif init.get("torchvision"):
            raise ValueError("torchvision has no SSD-MobileNetV1 weights; use init.checkpoint=<mobilenet_v1 supernet.pt>")

    def _run_epoch(self) -> None:
        """The classification trainer's epoch with :func:`detection_train_step`."""
        p = self.progress
        phase_idx = self.recipe.phase_at(p.epoch)
        phase = self.recipe.phases[phase_idx]
        self._maybe_sort(phase_idx, phase)
        space = phase_space(self.supernet.space, phase)
        num_random = self.recipe.num_random if phase.num_random is None else phase.num_random
        self.supernet.train()
        for x, targets in self._batches(phase):
            if self.recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            start = time.perf_counter()
            archs = sandwich(space, num_random, np.random.default_rng([self.seed, p.global_step]))
            lr = self.optimizer.param_groups[0]["lr"]
            self.last_losses = detection_train_step(self.supernet, x, targets, archs, self.recipe, self.optimizer,
                                                    self.loss_fn, self.autocast)
            self.scheduler.step()
            seconds = time.perf_counter() - start
            p.global_step += 1
            p.step_in_epoch += 1
            p.elapsed += seconds
            self._log_step(lr, len(x) / seconds, len(archs))
            every = int(self.cfg.checkpoint.get("every_steps") or 0)
            if every and p.global_step % every == 0:
                self.save_last()
            if self.on_step is not None:
                self.on_step(self)
            if self._out_of_time():
                return
        p.epoch += 1
        p.step_in_epoch = 0
        self._end_of_epoch(phase)
        self.save_last()

    def _evaluate(self, val_images: int | None, recal_images: int) -> dict[str, float]:
        space = self.supernet.space
        out = {}
        for kind, arch in (("max", space.max_arch()), ("min", space.min_arch())):
            result = evaluate_subnet_map(self.supernet, arch, self.data, val_images, recal_images)
            out[f"val_acc_{kind}"], out[f"val_map_{kind}"] = result["map50"], result["map"]
        self.supernet.train()
        return out


def train_detection_supernet(cfg: DictConfig | Mapping[str, Any],
                             on_step: Callable[[SupernetTrainer], None] | None = None) -> Path:
    """:func:`rlnas.supernet.train.train_supernet` for detection: returns the path of ``supernet.pt``."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    return DetectionSupernetTrainer(cfg, on_step).run()


def main() -> None:
    """``python -m rlnas.detection.train`` with the ``train_supernet`` config and Hydra overrides."""
    import hydra

    @hydra.main(config_path=str(rlnas.CONF_DIR), config_name="train_supernet", version_base="1.3")
    def _app(cfg: DictConfig) -> None:
        print(train_detection_supernet(cfg))

    _app()


if __name__ == "__main__":
    main()
