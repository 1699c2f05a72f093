"""Resumable distillation fine-tuning of one network from a frozen teacher (a0).

:class:`FineTune` runs where its data is: on the driver (``run``: checkpoints to its directory)
or on a Ray node (``advance`` / ``state`` / ``load_state``: the driver keeps the checkpoints).
Batches are a function of (seed, epoch, step), so a resumed run reaches the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from rlnas import machinelock
from rlnas.rules import check_fields, integer, number, ruled
from rlnas.supernet.checkpoint import atomic_save, load_file
from rlnas.supernet.train import kd_loss, sgd, to_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneOptions:
    """How one network is fine-tuned (the training fields of ``cfg.finalists``: its
    :class:`~rlnas.schema.FinalistsConfig` extends this class, so each default is written here once).

    :param epochs: epochs over the training images (fractions allowed; 0: no fine-tuning).
    :param lr: peak SGD learning rate (5 % warm-up, cosine to 0); ``weight_decay`` on weights only.
    :param kd_alpha: loss = ``kd_alpha`` * KD(teacher) + (1 - ``kd_alpha``) * CE(labels, smoothing).
    :param kd_temperature: the distillation temperature.
    :param checkpoint_every: optimizer steps between resumable checkpoints.
    :param progress: a tqdm bar.
    """

    epochs: float = ruled(1.0, number(0, note="0: no fine-tuning"))
    lr: float = ruled(0.01, number(0, low_open=True))
    weight_decay: float = ruled(5e-4, number(0))
    batch_size: int = ruled(128, integer(1))
    kd_alpha: float = ruled(0.8, number(0, 1))
    kd_temperature: float = ruled(1.0, number(0, low_open=True))
    label_smoothing: float = ruled(0.1, number(0, 1, high_open=True))
    checkpoint_every: int = ruled(50, integer(1))
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


def classification_kd(options: FineTuneOptions) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(student logits, teacher logits, labels) -> loss``: KD from the teacher mixed with the labels."""

    def loss(out: Tensor, taught: Tensor, labels: Tensor) -> Tensor:
        value = options.kd_alpha * kd_loss(out, taught, options.kd_temperature)
        if options.kd_alpha < 1:
            value = value + (1 - options.kd_alpha) * F.cross_entropy(out, labels,
                                                                      label_smoothing=options.label_smoothing)
        return value

    return loss


class FineTune:
    """Distillation fine-tuning of ``student`` from ``teacher`` on ``data``'s training images.

    :param out_dir: where :meth:`run` keeps ``finetune.pt`` (model, optimizer, schedule position);
        None: no files (the caller keeps :meth:`state`).
    :param on_step: called with the step number after every optimizer step (tests kill there).
    :param device: where the networks and batches live (``cuda`` on a GPU node).
    :param loss_fn: ``(student output, teacher output, targets) -> loss``; default
        :func:`classification_kd` of ``options`` (a detector passes its task's distillation loss).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, data: Any, out_dir: Path | None,
                 options: FineTuneOptions, name: str, seed: int = 0, writer: Any = None,
                 on_step: Callable[[int], None] | None = None, device: str = "cpu",
                 loss_fn: Callable[[Any, Any, Any], Tensor] | None = None) -> None:
        self.device = torch.device(device)
        self.student, self.teacher = student.to(self.device), teacher.to(self.device)
        self.data, self.options = data, options
        self.out = Path(out_dir) if out_dir is not None else None
        self.name, self.seed, self.writer, self.on_step = name, seed, writer, on_step
        self.steps_per_epoch = data.steps_per_epoch(options.batch_size)
        self.total = max(1, round(options.epochs * self.steps_per_epoch))
        self.optimizer = sgd(student, options.lr, options.weight_decay)
        warm = max(1, round(0.05 * self.total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(
            (s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, self.total - warm))))))
        self.loss_fn = loss_fn or classification_kd(options)
        self.step = 0

    @property
    def path(self) -> Path | None:
        return self.out / "finetune.pt" if self.out is not None else None

    def run(self) -> nn.Module:
        """Fine-tune to the end (resuming from ``finetune.pt``); returns the student in eval mode."""
        self._resume()
        bar = tqdm(total=self.total, initial=self.step, desc=f"fine-tune {self.name}", unit="step",
                   disable=not self.options.progress, mininterval=2.0, dynamic_ncols=True)

        def after_step(loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if self.step % self.options.checkpoint_every == 0 or self.step == self.total:
                self._save()
            if self.on_step is not None:
                self.on_step(self.step)

        self.advance(self.total - self.step, after_step)
        bar.close()
        self._save()
        return self.student.eval()

    def advance(self, steps: int, after_step: Callable[[float], None] | None = None) -> list[float]:
        """Up to ``steps`` more optimizer steps (never past the end); their losses."""
        losses: list[float] = []
        self.student.train()
        while len(losses) < steps and self.step < self.total:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            for x, y in self.data.train_batches(self.options.batch_size, epoch, self.seed + 1000, in_epoch):
                losses.append(self._train_step(x, y))
                if after_step is not None:
                    after_step(losses[-1])
                if len(losses) >= steps or self.step >= self.total:
                    break
        return losses

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (on the CPU, so it travels and saves as it is)."""
        model = {k: v.detach().cpu() for k, v in self.student.state_dict().items()}
        return {"model": model, "optimizer": _to_cpu(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "total": self.total}

    def load_state(self, state: dict[str, Any]) -> bool:
        """Resume from :meth:`state`; False (and nothing loaded) when it is from another schedule."""
        if state.get("total") != self.total:
            log.warning("fine-tune %s: a checkpoint for %s steps, this run has %s: starting over", self.name,
                        state.get("total"), self.total)
            return False
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        return True

    def _train_step(self, x: Tensor, y: Any) -> float:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        y = to_device(y, self.device)
        with machinelock.shared(machinelock.DEFAULT_PATH):  # a timing run on this machine waits for the step
            with torch.no_grad():
                taught = _as_float(self.teacher(x))
            loss = self.loss_fn(_as_float(self.student(x)), taught, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.student.parameters(), 5.0)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.writer is not None:
            self.writer.add_scalar(f"finetune/{self.name}/loss", loss.item(), self.step)
            self.writer.add_scalar(f"finetune/{self.name}/lr", lr, self.step)
        return loss.item()

    def _save(self) -> None:
        if self.path is not None:
            atomic_save(self.state(), self.path)

    def _resume(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        if self.load_state(load_file(self.path)):
            log.info("fine-tune %s resumed at step %d of %d", self.name, self.step, self.total)


def _as_float(output: Any) -> Any:
    """A network's output in fp32: logits, or a detector's ``(loc, conf)``."""
    return tuple(o.float() for o in output) if isinstance(output, tuple | list) else output.float()


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
