"""Finalist fine-tuning on any node with CPUs (a GPU where it was given one): a
:class:`FineTuneActor` runs the fine-tuning, the driver's :class:`RemoteFineTune` keeps its
checkpoints and resumes it on another node when one is lost (``retries`` times).
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from rlnas.distributed.cluster import NodeLost, node_dataset, node_info, ray
from rlnas.supernet.checkpoint import atomic_save, load_file
from rlnas.supernet.finetune import FineTune, FineTuneOptions
from rlnas.tasks import build_data, get_task

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0)
class FineTuneActor:
    """On any node with CPUs (a GPU where it was given one): one finalist's
    :class:`~rlnas.supernet.finetune.FineTune`, its images built here from the dataset config.
    The driver pulls :meth:`state` after every chunk of steps and keeps the checkpoints."""

    def __init__(self, networks: bytes, dataset: dict[str, Any], resolution: int, options: dict[str, Any],
                 name: str, seed: int, threads: int) -> None:
        torch.set_num_threads(int(threads))
        # whole modules, pickled by this run's driver (RemoteFineTune) and handed over by Ray, which
        # unpickles every actor argument anyway: in-process data of this run, never a file read
        student, teacher = torch.load(io.BytesIO(networks), map_location="cpu", weights_only=False)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        data = build_data(OmegaConf.create(dataset), int(resolution))
        tuning = FineTuneOptions(**{**options, "progress": False})
        self.tune = FineTune(student, teacher, data, None, tuning, name, seed, device=device,
                             loss_fn=get_task(dataset.get("task")).distill(student, tuning))
        self.info = {**node_info(), "device": device}

    def describe(self) -> dict[str, Any]:
        return {**self.info, "total": self.tune.total, "step": self.tune.step}

    def load_state(self, state: dict[str, Any]) -> bool:
        return self.tune.load_state(state)

    def advance(self, steps: int) -> list[float]:
        return self.tune.advance(int(steps))  # each step holds the node's machine lock shared

    def state(self) -> dict[str, Any]:
        return self.tune.state()


class RemoteFineTune:
    """Drives a :class:`FineTuneActor`: resumes it from the driver's ``<out_dir>/finetune.pt``,
    runs ``checkpoint_every`` steps at a time, writes each checkpoint here (atomically) and logs
    the losses under ``finetune/<name>/``. A node lost mid-way: a new actor resumes from the last
    checkpoint (``retries`` times)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, dataset: Any, resolution: int, out_dir: Path,
                 options: FineTuneOptions, name: str, seed: int, writer: Any = None, threads: int = 1,
                 gpus: float = 0.0, retries: int = 2, resources: dict[str, float] | None = None) -> None:
        buffer = io.BytesIO()
        torch.save((student.cpu(), teacher.cpu()), buffer)
        dataset = node_dataset(dataset)
        self.args = (ray.put(buffer.getvalue()), dataset, int(resolution), asdict(options), name, int(seed), int(threads))
        self.student, self.options, self.name, self.writer = student, options, name, writer
        self.path = Path(out_dir) / "finetune.pt"
        self.threads, self.gpus, self.retries = int(threads), float(gpus), int(retries)
        self.resources = dict(resources or {})
        self.nodes: list[str] = []  # the node of each actor started (a lost node: one more)

    def run(self) -> nn.Module:
        """Fine-tune to the end on a node; returns the student (here) with the tuned weights."""
        for attempt in range(self.retries + 1):
            actor = FineTuneActor.options(num_cpus=self.threads, num_gpus=self.gpus,
                                          resources=self.resources).remote(*self.args)
            try:
                state = self._drive(actor)
            except ray.exceptions.RayActorError as err:
                log.warning("fine-tune %s: node lost (attempt %d of %d): %s", self.name, attempt + 1,
                            self.retries + 1, type(err).__name__)
                continue
            finally:
                ray.kill(actor, no_restart=True)
            self.student.load_state_dict(state["model"])
            return self.student.eval()
        raise NodeLost(f"fine-tune {self.name}: the node fine-tuning it was lost {self.retries + 1} times")

    def _drive(self, actor: Any) -> dict[str, Any]:
        info = ray.get(actor.describe.remote())
        self.nodes.append(info["node_id"])
        if self.path.is_file() and ray.get(actor.load_state.remote(load_file(self.path))):
            info = ray.get(actor.describe.remote())
            log.info("fine-tune %s resumed at step %d of %d on %s", self.name, info["step"], info["total"],
                     info["hostname"])
        step, total = info["step"], info["total"]
        bar = tqdm(total=total, initial=step, desc=f"fine-tune {self.name} ({info['hostname']})", unit="step",
                   disable=not self.options.progress, mininterval=2.0, dynamic_ncols=True)
        state = ray.get(actor.state.remote())
        while step < total:
            losses = ray.get(actor.advance.remote(self.options.checkpoint_every - step % self.options.checkpoint_every))
            state = ray.get(actor.state.remote())
            atomic_save(state, self.path)  # the driver alone writes: a killed run resumes from here
            for i, loss in enumerate(losses, start=step + 1):
                if self.writer is not None:
                    self.writer.add_scalar(f"finetune/{self.name}/loss", loss, i)
            bar.update(len(losses))
            step = state["step"]
        bar.close()
        return state
