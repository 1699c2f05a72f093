"""Accuracy on any node with CPUs: ``accuracy_workers`` :class:`AccuracyActor` s, each holding
the supernet (its checkpoint travels through the object store) and the images, built on the node
from the dataset config (the dataset must be present there at ``dataset.root``). The driver
computes the cache key, looks the store up, and writes what an actor returns; a lost actor is
replaced and the request sent again (``retries`` times).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from queue import Queue
from typing import Any

import torch
from omegaconf import OmegaConf

from rlnas.arch import Arch
from rlnas.distributed.cluster import NODE_DIR, node_dataset, node_info, ray, write_atomic
from rlnas.oracles.accuracy import AccuracyOracle, AccuracyResult, TaskPipeline
from rlnas.supernet import load_supernet
from rlnas.tasks import build_data

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0)
class AccuracyActor:
    """On any node with CPUs: the supernet (from checkpoint bytes) and the images (built here from
    the dataset config) behind an :class:`AccuracyOracle` without a store, measuring with the
    driver's task pipeline (its settings, e.g. a detector's heads kept in FP32, are in the key)."""

    def __init__(self, checkpoint: bytes, digest: str, options: dict[str, Any], dataset: dict[str, Any],
                 resolution: int, pipeline: TaskPipeline) -> None:
        torch.set_num_threads(int(options["threads"]))
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        path = NODE_DIR / f"supernet-{digest}.pt"
        if not path.is_file():
            write_atomic(path, checkpoint)
        supernet, meta = load_supernet(path)
        data = build_data(OmegaConf.create(dataset), int(resolution))
        self.oracle = AccuracyOracle(supernet, data, None, meta["checkpoint_id"],
                                     pipeline=pipeline, **options)
        self.info = node_info()

    def evaluate(self, arch: dict[str, Any]) -> dict[str, Any]:
        result = self.oracle.evaluate(Arch.from_dict(arch))  # holds the node's machine lock shared
        result.details["node"] = self.info
        return result.to_dict()


class RemoteAccuracyOracle(AccuracyOracle):
    """:class:`AccuracyOracle` whose measurements run on :class:`AccuracyActor` s: the cache key,
    the store and a0's scoring (:meth:`evaluate_model`) stay on the driver."""

    def __init__(self, *args: Any, checkpoint_path: str | Path, dataset: Any, resolution: int, workers: int = 1,
                 retries: int = 2, timeout_s: float = 1800.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retries, self.timeout_s = int(retries), float(timeout_s)
        blob = Path(checkpoint_path).read_bytes()
        dataset = node_dataset(dataset)
        self._actor_args = (ray.put(blob), hashlib.sha256(blob).hexdigest()[:16], self._actor_options(), dataset,
                            int(resolution), self.pipeline)
        self._idle: Queue = Queue()
        for _ in range(int(workers)):
            self._idle.put(self._new_actor())

    def _actor_options(self) -> dict[str, Any]:
        return {"recal_images": self.recal_images, "calib_images": self.calib_images,
                "eval_images": self.eval_images, "batch_size": self.batch_size, "threads": self.threads,
                "fp32_images": self.fp32_images, "calib_batch_size": self.calib_batch_size,
                "inference_precision": self.inference_precision, "channels_last": self.channels_last,
                "split": self.split}

    def _new_actor(self) -> Any:
        return AccuracyActor.options(num_cpus=int(self.threads or 1)).remote(*self._actor_args)

    def _measure(self, arch: Arch) -> AccuracyResult:
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            actor = self._idle.get()
            try:
                record = ray.get(actor.evaluate.remote(arch.to_dict()), timeout=self.timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                ray.kill(actor, no_restart=True)  # frees its CPUs for the replacement
                actor = self._new_actor()
                if getattr(err, "actor_init_failed", False):  # e.g. the node lacks the dataset
                    return AccuracyResult("failed", f"accuracy: the accuracy actor could not start on its node: {err}",
                                          transient=True)
                log.warning("accuracy actor lost while scoring %s (attempt %d of %d): %s", arch.short(),
                            attempt + 1, self.retries + 1, type(err).__name__)
                continue
            except ray.exceptions.RayTaskError as err:
                return AccuracyResult("failed", f"accuracy: {err.cause if err.cause is not None else err}")
            finally:
                self._idle.put(actor)
            result = AccuracyResult.from_dict(record)
            result.stage_seconds["remote_total"] = time.perf_counter() - start
            return result
        return AccuracyResult("failed", f"accuracy: the node scoring it was lost {self.retries + 1} times",
                              transient=True)

    def close(self) -> None:
        """Stop the accuracy actors (their CPUs are free again)."""
        while not self._idle.empty():
            ray.kill(self._idle.get(), no_restart=True)
