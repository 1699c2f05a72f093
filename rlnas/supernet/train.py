"""Supernet training (``rlnas-train-supernet``): sandwich rule, in-place distillation, progressive
shrinking, resumable checkpoints.

Each step trains the largest sub-network on the labels, then the smallest and ``num_random``
random ones on the largest one's detached soft predictions (in-place distillation), accumulating
gradients over the sandwich before one optimizer step. A recipe is a list of *phases*; a phase
restricts which dimensions are elastic (progressive shrinking: e.g. the maximal network alone
first, then every dimension) and carries its own warm-up + cosine learning-rate cycle. Channels are
sorted by importance (``supernet.sort_channels()``) at the start of phases that ask for it; that
reorders weights, so the optimizer's momentum is reset there.

Everything random is a function of ``(seed, epoch, step)``, and ``last.pt`` (written atomically
every epoch and every ``checkpoint.every_steps``) holds the model, optimizer, scheduler, progress,
RNG states and config: rerunning the same command on the same output directory continues exactly
where the killed run stopped. The result is ``<output_dir>/supernet.pt``. The config is typed by
its schema (:mod:`rlnas.supernet.config`); a resume compares the result-determining part of it
(:func:`fingerprint`), typed on both sides, so a run saved before a key had a default still resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import rlnas
from rlnas import machinelock
from rlnas.arch import Arch
from rlnas.data.classification import ClassificationData, build_classification_data
from rlnas.data.spec import resolve_path
from rlnas.errors import ConfigError
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet
from rlnas.supernet.a0 import (
    A0Error,
    build_a0,
    file_sha256,
    frozen_teacher,
    load_a0_weights,
    read_state,
    resolve_a0,
)
from rlnas.supernet.bn import recalibrate_bn
from rlnas.supernet.checkpoint import (
    FINAL_NAME,
    LAST_NAME,
    CheckpointError,
    atomic_save,
    load_file,
    rng_state,
    safe_load,
    save_supernet,
    set_rng_state,
)
from rlnas.supernet.config import RESUMABLE_KEYS, train_config
from rlnas.supernet.recipe import Phase, Recipe, phase_space, sandwich
from rlnas.supernet.scoring import torch_top1

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# one step


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on softened predictions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def sandwich_step(supernet: Supernet, x: Tensor, archs: list[tuple[str, Arch]], recipe: Recipe,
                  optimizer: torch.optim.Optimizer, autocast: Callable[[], AbstractContextManager],
                  loss_fn: Callable[[Any, Any], Tensor], teacher: Any = None) -> dict[str, float]:
    """Forward/backward every subnet of the sandwich (gradients accumulate), then one optimizer
    step. Returns the mean loss per subnet kind.

    :param loss_fn: ``(output, teacher) -> loss`` of one subnet, from its fp32 output (a tensor or
        a tuple of tensors) and the teacher's detached output.
    :param teacher: an external teacher's output for ``x`` (a frozen a0), given to every subnet;
        None: in-place distillation, the first (largest) subnet's output teaches the others and
        that subnet gets None.
    """
    sums: dict[str, list[float]] = {}
    for kind, arch in archs:
        supernet.set_active(arch)
        with autocast():
            output = supernet(x)
        output = _map_tensors(output, Tensor.float)
        loss = loss_fn(output, teacher)
        if teacher is None:
            teacher = _map_tensors(output, Tensor.detach)
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


def train_step(supernet: Supernet, x: Tensor, y: Tensor, archs: list[tuple[str, Arch]], recipe: Recipe,
               optimizer: torch.optim.Optimizer, autocast: Callable[[], AbstractContextManager],
               teacher: nn.Module | None = None) -> dict[str, float]:
    """:func:`sandwich_step` for classification. In-place (no ``teacher``): the largest subnet
    learns the labels (label smoothing), the others ``kd_alpha * distillation + (1 - kd_alpha) *
    labels``. With a frozen ``teacher`` (a0), every subnet, the largest included, learns that mix
    from the teacher's predictions."""
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad(), autocast():
            teacher_logits = teacher(x).float()

    def loss_fn(logits: Tensor, teacher: Tensor | None) -> Tensor:
        if teacher is None:
            return F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        loss = recipe.kd_alpha * kd_loss(logits, teacher, recipe.kd_temperature)
        if recipe.kd_alpha < 1:
            loss = loss + (1 - recipe.kd_alpha) * F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        return loss

    return sandwich_step(supernet, x, archs, recipe, optimizer, autocast, loss_fn, teacher_logits)


def _map_tensors(output: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to a model output: a tensor, or each tensor of a tuple (e.g. SSD ``(loc, conf)``)."""
    return tuple(fn(t) for t in output) if isinstance(output, tuple) else fn(output)


def zero_init_residual(model: nn.Module) -> int:
    """Zero the last BN scale of every residual bottleneck (modules with ``bn3``), so each block
    starts as the identity (Goyal et al.; BigNAS trains big and small subnets stably this way).
    Returns how many were zeroed."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            bn = getattr(module, "bn3", None)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.weight is not None:
                bn.weight.zero_()
                count += 1
    return count


def load_pretrained(supernet: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Load a torchvision-format state dict into the maximal network; a classifier (or any
    tensor) of another shape is skipped. Returns the keys not loaded."""
    if hasattr(supernet, "load_torchvision_weights"):
        return supernet.load_torchvision_weights(state)
    own = supernet.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ValueError("the pretrained state dict shares no tensor (name and shape) with the supernet")
    supernet.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """:func:`sgd` with the recipe's settings."""
    return sgd(model, recipe.lr, recipe.weight_decay, recipe.momentum, recipe.nesterov)


def sgd(model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
        nesterov: bool = True) -> torch.optim.SGD:
    """SGD with weight decay on conv/linear weights only (not on BN parameters or biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def cpu_has_bf16() -> bool:
    """True where bf16 matmuls are native (AVX512-BF16 or AMX); elsewhere they are emulated and
    far slower than fp32 (measured: 5 vs 121 img/s for ResNet-50 training on this AVX2 host)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_factory(precision: str, device: torch.device | None = None
                     ) -> tuple[str, Callable[[], AbstractContextManager]]:
    """The precision actually used and a context-manager factory for the forward passes on
    ``device`` (default CPU); ``auto`` is bf16 where the device computes it natively."""
    kind = device.type if device is not None else "cpu"
    use = precision
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if kind == "cuda" else cpu_has_bf16()
        use = "bf16" if native else "fp32"
    if use == "bf16":
        return use, lambda: torch.autocast(kind, dtype=torch.bfloat16)
    return use, nullcontext


def resolve_device(name: str, allowed: tuple[str, ...] = ("cpu", "cuda")) -> torch.device:
    """``auto``: a CUDA GPU where torch sees one (and ``allowed`` has it), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if "cuda" in allowed and torch.cuda.is_available() else "cpu")
    if name not in allowed:
        raise ConfigError(f"accelerator={name!r}: this trainer runs on {', '.join(('auto', *allowed))}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("accelerator=cuda but torch sees no CUDA GPU; use accelerator=auto or accelerator=cpu")
    return torch.device(name)


def to_device(value: Any, device: torch.device) -> Any:
    """A batch's tensors on ``device``: a tensor, or the tensors inside lists, tuples and dicts
    (a detector's per-image targets)."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# evaluation during training


@torch.no_grad()
def evaluate_subnet(supernet: Supernet, arch: Arch, data: ClassificationData, val_images: int | None,
                    recal_images: int, batch_size: int = 250, channels_last: bool = True) -> float:
    """Top-1 of ``arch`` on (a seeded subset of) the validation split after BN recalibration on
    ``recal_images`` training images; runs on an extracted copy, the supernet is untouched."""
    model = supernet.extract(arch).cpu()  # evaluation batches live on the CPU
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    recalibrate_bn(model, data.recal_batches(recal_images, 1, batch_size), channels_last)
    images, labels = data.val_images(val_images)
    return torch_top1(model.eval(), data.batches(images, batch_size), labels, channels_last)


# ---------------------------------------------------------------------------------------------
# the training loop


@dataclass
class Progress:
    """Where training stands (saved in ``last.pt``)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    sorted_phases: list[int] = field(default_factory=list)
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class SupernetTrainer:
    """Trains one supernet per :class:`Recipe`; see the module docstring.

    Public hooks a task overrides (the detection trainer does): :meth:`build_data`,
    :meth:`init_weights`, :meth:`step` (one optimizer step over a sandwich) and
    :meth:`evaluate_arch` (validation metrics of one subnet); the loop, phases, checkpoints, resume
    and logging stay here.

    :param cfg: the ``train_supernet`` config, composed or plain (typed here: :func:`train_config`).
    :param on_step: called with the trainer after every optimizer step and after any checkpoint of
        that step (tests use it to simulate a kill).
    """

    #: where this task's training can run (``device=auto`` picks the first the host has)
    DEVICES: tuple[str, ...] = ("cpu", "cuda")

    def __init__(self, cfg: DictConfig | Mapping[str, Any], on_step: Callable[[SupernetTrainer], None] | None = None) -> None:
        self.cfg = cfg = train_config(cfg)
        self.on_step = on_step
        self.recipe = Recipe.from_config(cfg.recipe)
        self.out = Path(cfg.output_dir)
        self.seed = int(cfg.seed)
        torch.set_num_threads(int(cfg.threads))
        self.resolution = int(cfg.resolution)
        self.data = self.build_data()
        kwargs = {**_plain(cfg.model.get("kwargs") or {}), "num_classes": self.data.num_classes}
        self.model_kwargs = kwargs
        _seed_everything(self.seed)  # the initial weights come from the global RNG
        self.device = resolve_device(str(cfg.accelerator), self.DEVICES)
        self.supernet = create_supernet(cfg.model.name, **kwargs).to(self.device)
        self.precision, self.autocast = autocast_factory(self.recipe.precision, self.device)
        if self.recipe.channels_last:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.supernet, self.recipe)
        self.steps_per_epoch = self.data.steps_per_epoch(self.recipe.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: self.recipe.lr_factor(s, self.steps_per_epoch))
        self.progress = Progress()
        self.writer: Any = None
        self.last_losses: dict[str, float] = {}
        self.a0_path = resolve_a0(cfg.a0.checkpoint)
        if self.recipe.teacher == "a0" and self.a0_path is None:
            raise A0Error(f"recipe {self.recipe.name!r} distils from a0 (recipe.teacher=a0) but no "
                          "a0.checkpoint is set")
        self.teacher: nn.Module | None = None

    # -- setup ------------------------------------------------------------------------------

    def build_data(self) -> ClassificationData:
        return build_classification_data(self.dataset_config(), self.resolution)

    def dataset_config(self) -> dict[str, Any]:
        """The ``dataset`` config as a dict, limited to the recipe's ``train_images`` if set."""
        ds = _plain(self.cfg.dataset)
        if self.recipe.train_images is not None:
            ds["train_limit"] = int(self.recipe.train_images)
        return ds

    def options(self, section: str) -> dict[str, Any]:
        """A run-option section (``checkpoint``, ``eval``, ``log``) of the config (its defaults:
        :class:`~rlnas.supernet.config.TrainOptions`)."""
        return _plain(self.cfg[section])

    def fingerprint(self) -> dict[str, Any]:
        """The config that determines the result: a resume must match it."""
        return fingerprint(self.cfg)

    def init_weights(self) -> None:
        init = self.cfg.init
        if self.a0_path is not None:
            load_a0_weights(self.supernet, read_state(self.a0_path), str(self.a0_path))
            log.info("maximal network initialised from a0 %s", self.a0_path)
        elif init.checkpoint:
            path = resolve_path(init.checkpoint)
            if not path.is_file():
                raise CheckpointError(f"init.checkpoint={init.checkpoint!r}: {path} does not exist")
            state = safe_load(path, CheckpointError, "init.checkpoint")
            log.info("initialised from %s (not loaded: %s)", path, load_pretrained(self.supernet, state))
        elif init.torchvision:
            import torchvision

            weights = torchvision.models.get_model_weights(self.cfg.model.name).DEFAULT
            skipped = load_pretrained(self.supernet, weights.get_state_dict(progress=True))
            log.info("initialised from torchvision %s (not loaded: %s)", weights, skipped)
        elif self.recipe.zero_init_residual:
            zero_init_residual(self.supernet)

    def _resume(self) -> bool:
        path = self.out / LAST_NAME
        if not path.is_file():
            return False
        state = load_file(path)
        diff = _diff(fingerprint(state.get("fingerprint", {})), self.fingerprint())
        if diff:
            raise CheckpointError(f"{path} belongs to a run with another config ({'; '.join(diff[:5])}); "
                                  "use another output_dir or the same config")
        self.supernet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d step %d (global step %d)", path, self.progress.epoch,
                 self.progress.step_in_epoch, self.progress.global_step)
        return True

    def save_last(self) -> None:
        """Write ``last.pt`` atomically."""
        state = {"model": self.supernet.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "progress": dataclasses.asdict(self.progress),
                 "rng": rng_state(), "config": _plain(self.cfg), "fingerprint": self.fingerprint()}
        atomic_save(state, self.out / LAST_NAME)

    # -- run --------------------------------------------------------------------------------

    def run(self) -> Path:
        """Train (or continue) to the end of the recipe; returns the path of ``supernet.pt``."""
        final = self.out / FINAL_NAME
        self.out.mkdir(parents=True, exist_ok=True)
        if not self._resume():
            self.init_weights()
        if self.progress.done and final.is_file():
            log.info("%s is complete", final)
            return final
        if self.recipe.teacher == "a0":
            self.teacher = frozen_teacher(build_a0(self.cfg.model.name, self.model_kwargs, self.a0_path),
                                          self.recipe.channels_last).to(self.device)
        self._open_writer()
        try:
            while self.progress.epoch < self.recipe.epochs and not self._out_of_time():
                self._run_epoch()
            return self._finish()
        finally:
            if self.writer is not None:
                self.writer.close()

    def _run_epoch(self) -> None:
        p = self.progress
        phase_idx = self.recipe.phase_at(p.epoch)
        phase = self.recipe.phases[phase_idx]
        self._maybe_sort(phase_idx, phase)
        space = phase_space(self.supernet.space, phase)
        num_random = self.recipe.num_random if phase.num_random is None else phase.num_random
        self.supernet.train()
        for x, y in self._batches(phase):
            x, y = to_device(x, self.device), to_device(y, self.device)
            if self.recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            start = time.perf_counter()
            archs = sandwich(space, num_random, np.random.default_rng([self.seed, p.global_step]))
            lr = self.optimizer.param_groups[0]["lr"]
            with machinelock.shared(machinelock.DEFAULT_PATH) as waited:  # a timing run here waits for the step
                self.last_losses = self.step(x, y, archs)
            self.scheduler.step()
            seconds = time.perf_counter() - start - waited.seconds  # training time: a timing run's turn excluded
            p.global_step += 1
            p.step_in_epoch += 1
            p.elapsed += seconds
            self._log_step(lr, len(x) / seconds, len(archs))
            every = int(self.options("checkpoint")["every_steps"] or 0)
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

    def step(self, x: Tensor, y: Any, archs: list[tuple[str, Arch]]) -> dict[str, float]:
        """One optimizer step on the batch ``(x, y)`` (``y``: whatever ``data.train_batches`` yields
        as targets) over the sandwich ``archs``; returns the mean loss per subnet kind."""
        return train_step(self.supernet, x, y, archs, self.recipe, self.optimizer, self.autocast, self.teacher)

    def _batches(self, phase: Phase) -> Iterator[tuple[Tensor, Any]]:
        p = self.progress
        batches = self.data.train_batches(self.recipe.batch_size, p.epoch, self.seed, p.step_in_epoch)
        if not self.options("log")["progress"]:
            return batches
        from tqdm import tqdm

        self._bar = tqdm(batches, total=self.steps_per_epoch, initial=p.step_in_epoch,
                         desc=f"epoch {p.epoch + 1}/{self.recipe.epochs} [{phase.name}]", unit="step",
                         mininterval=2.0, dynamic_ncols=True)
        return iter(self._bar)

    def _maybe_sort(self, phase_idx: int, phase: Phase) -> None:
        p = self.progress
        if not phase.sort_channels or phase_idx in p.sorted_phases:
            return
        with machinelock.shared(machinelock.DEFAULT_PATH):
            self.supernet.sort_channels()
        self.optimizer.state.clear()  # momentum buffers refer to the old channel order
        p.sorted_phases.append(phase_idx)
        log.info("sorted channels at the start of phase %r", phase.name)

    def _out_of_time(self) -> bool:
        limit = self.cfg.max_seconds
        return bool(limit) and self.progress.elapsed >= float(limit)

    # -- logging / evaluation ------------------------------------------------------------------

    def _open_writer(self) -> None:
        if not self.options("log")["tensorboard"]:
            return
        from torch.utils.tensorboard import SummaryWriter

        # events after the checkpoint (logged by a killed run) are dropped
        self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.progress.global_step + 1)

    def _log_step(self, lr: float, img_per_s: float, subnets: int) -> None:
        step = self.progress.global_step
        if self.writer is not None:
            for kind, value in self.last_losses.items():
                self.writer.add_scalar(f"train/loss_{kind}", value, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/img_per_s", img_per_s, step)
            self.writer.add_scalar("train/subnets_per_step", subnets, step)
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in self.last_losses.items()}, "lr": f"{lr:.3g}",
                             "img/s": f"{img_per_s:.0f}"}, refresh=False)

    def _end_of_epoch(self, phase: Phase) -> None:
        ev = self.options("eval")
        record: dict[str, Any] = {"epoch": self.progress.epoch, "phase": phase.name,
                                  "global_step": self.progress.global_step, "elapsed": self.progress.elapsed,
                                  "losses": dict(self.last_losses)}
        if ev["every_epochs"] and self.progress.epoch % int(ev["every_epochs"]) == 0:
            record.update(self._evaluate(ev["val_images"], int(ev["recal_images"])))
        self.progress.history.append(record)
        if self.writer is not None:
            for k, value in record.items():  # val_acc_max, val_acc_min; a detector's val_map_* too
                if k.startswith("val_") and isinstance(value, float):
                    self.writer.add_scalar(f"train/{k}", value, self.progress.global_step)
            self.writer.flush()
        log.info("epoch %d (%s): %s", self.progress.epoch, phase.name,
                 {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()})

    def _evaluate(self, val_images: int | None, recal_images: int) -> dict[str, float]:
        """Validation metrics of the maximal subnet, and of the minimal one when the recipe trains
        any subnet but the maximal one (an a0's recipe does not: the minimal one means nothing)."""
        space = self.supernet.space
        kinds = [("max", space.max_arch())]
        if any(phase.elastic for phase in self.recipe.phases):
            kinds.append(("min", space.min_arch()))
        out = {}
        for kind, arch in kinds:
            with machinelock.shared(machinelock.DEFAULT_PATH):
                out.update({f"{k}_{kind}": v for k, v in self.evaluate_arch(arch, val_images, recal_images).items()})
        self.supernet.train()
        return out

    def evaluate_arch(self, arch: Arch, val_images: int | None, recal_images: int) -> dict[str, float]:
        """Validation metrics of one subnet (``val_acc``: the accuracy the search constrains); the
        keys get the subnet kind appended (``val_acc_max``)."""
        top1 = evaluate_subnet(self.supernet, arch, self.data, val_images, recal_images,
                               channels_last=self.recipe.channels_last)
        return {"val_acc": top1}

    def _finish(self) -> Path:
        ev = self.options("eval")
        final_eval = self._evaluate(ev["final_val_images"], int(ev["recal_images"]))
        meta = {"family": self.cfg.model.name, "kwargs": self.model_kwargs, "resolution": self.resolution,
                "num_classes": self.data.num_classes, "task": self.supernet.task,
                "dataset": self.data.identity(), "dataset_config": _plain(self.cfg.dataset),
                "a0": None if self.a0_path is None else {"checkpoint": str(self.a0_path),
                                                         "sha256": file_sha256(self.a0_path)},
                "recipe": _plain(self.cfg.recipe), "seed": self.seed, "precision": self.precision,
                "device": str(self.device),
                "epochs": self.progress.epoch, "steps": self.progress.global_step,
                "train_seconds": self.progress.elapsed, "completed": self.progress.epoch >= self.recipe.epochs,
                "final": final_eval, "history": self.progress.history,
                "versions": {"torch": torch.__version__, "rlnas": rlnas.__version__}}
        self.supernet.set_active(self.supernet.space.max_arch())
        checkpoint_id = save_supernet(self.out / FINAL_NAME, self.supernet, meta)
        self.progress.done = bool(meta["completed"])
        self.save_last()
        log.info("saved %s (checkpoint_id %s): %s", self.out / FINAL_NAME, checkpoint_id, final_eval)
        return self.out / FINAL_NAME


def train_supernet(cfg: DictConfig | Mapping[str, Any],
                   on_step: Callable[[SupernetTrainer], None] | None = None) -> Path:
    """Train the supernet a ``train_supernet`` config describes into ``cfg.output_dir`` (resuming
    from ``last.pt`` there if present; returning at once if the run is complete).

    :returns: the path of ``supernet.pt``.
    """
    return SupernetTrainer(cfg, on_step).run()


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The ``train_supernet`` config with Hydra overrides, typed by its schema, without running
    Hydra's app (for callers such as experiments and tests)."""
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name="train_supernet", overrides=list(overrides or []))


def fingerprint(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ``train_supernet`` config that determines the result (the keys a resume may
    change and ``dataset.cache_dir`` aside), typed by the schema: a fingerprint saved as plain data
    by an older rlnas, without a key that has a default now, equals the same config's today."""
    cfg = train_config(cfg)
    kept = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in RESUMABLE_KEYS])
    full = _plain(kept)
    (full.get("dataset") or {}).pop("cache_dir", None)
    return full


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _plain(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out

