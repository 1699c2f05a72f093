"""Ray as the distributed backend (``backend=ray``): latency measured on the target machines,
accuracy evaluated on any node with CPUs, results written by the driver alone.

:class:`RayBackend` connects the run to Ray (or starts an embedded, local Ray:
:mod:`rlnas.distributed.cluster`) and builds the remote oracles, one module per actor kind:

- **Latency** (:mod:`rlnas.distributed.device_actor`): one device actor per device profile, on a
  node advertising ``rlnas/<profile>``, runs the local timing worker there; IRs are built on the
  driver and shipped through the object store.
- **Accuracy** (:mod:`rlnas.distributed.accuracy_actor`): ``accuracy_workers`` actors on any nodes
  with CPUs score candidates; the driver keeps the cache key and the store.
- **Fine-tuning** (:mod:`rlnas.distributed.finetune_actor`): one finalist per actor; the driver
  keeps the checkpoints and resumes on another node when one is lost.
- **Faults.** A lost node loses nothing already measured: the request is retried (``retries``
  times) on another node, or ends as a failed measurement with the reason, which is not cached.
- **Safety.** The embedded Ray listens on the loopback address alone and uses token
  authentication (a random token of its own unless the user gave one), without a dashboard. A
  cluster of the user's needs the token too: ``docs/ray.md``.

Only :class:`RayBackend` is meant to be built by users, from ``conf/backend/ray.yaml``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from rlnas.distributed.accuracy_actor import RemoteAccuracyOracle
from rlnas.distributed.cluster import NodeLost, device_resource, ray, start_embedded, stop_embedded
from rlnas.distributed.device_actor import RemoteLatencyOracle
from rlnas.distributed.finetune_actor import RemoteFineTune
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.oracles.device import DeviceProfileError
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.worker_client import WorkerError
from rlnas.supernet.finetune import FineTuneOptions

log = logging.getLogger(__name__)


class RayBackend:
    """Connects the run to Ray and builds its remote oracles.

    :param address: ``auto`` (the cluster this machine belongs to), ``<head>:6379``, or None: an
        embedded local Ray that starts and stops with the run (this machine then advertises the
        run's device, so it measures there).
    :param accuracy_workers: accuracy actors (each holds one supernet copy and the images).
    :param accuracy_threads: torch/OpenVINO threads per accuracy actor (and in the accuracy cache
        key); size them so that a node's cores are not oversubscribed.
    :param parallelism: evaluations in flight at once (the evaluator's).
    :param retries: times a request whose node died is sent again to a node of the same device.
    :param node_wait_s: how long to wait for a node that advertises the device.
    :param num_cpus: CPUs of the embedded Ray (None: all of this machine's).
    :param finetune_gpus: GPUs per finalist fine-tuning actor (0: CPUs only; e.g. 1 on a cluster
        with GPU nodes, where the fine-tuning then runs on CUDA). ``accuracy_workers`` finalists
        are fine-tuned at once, ``accuracy_threads`` CPUs each.
    :param finetune_resources: custom Ray resources a fine-tuning actor needs, to keep it on the
        nodes that advertise them (e.g. ``{"rlnas/trainer": 1}`` on the training servers; ``{}``:
        any node with the CPUs).
    """

    def __init__(self, address: str | None = None, accuracy_workers: int = 1, accuracy_threads: int = 1,
                 parallelism: int = 2, retries: int = 2, node_wait_s: float = 120.0,
                 num_cpus: int | None = None, finetune_gpus: float = 0.0,
                 finetune_resources: dict[str, float] | None = None) -> None:
        if accuracy_workers < 1 or accuracy_threads < 1 or parallelism < 1 or retries < 0:
            raise ValueError("backend=ray needs accuracy_workers, accuracy_threads and parallelism >= 1, "
                             f"retries >= 0 (got {accuracy_workers}, {accuracy_threads}, {parallelism}, {retries})")
        self.address = address or None
        self.accuracy_workers, self.accuracy_threads = int(accuracy_workers), int(accuracy_threads)
        self.parallelism, self.retries = int(parallelism), int(retries)
        self.node_wait_s, self.num_cpus = float(node_wait_s), num_cpus
        if finetune_gpus < 0:
            raise ValueError(f"backend.finetune_gpus must be >= 0, got {finetune_gpus}")
        self.finetune_gpus = float(finetune_gpus)
        self.finetune_resources = {str(k): float(v) for k, v in (finetune_resources or {}).items()}
        self._owned = False
        self._saved_env: dict[str, str | None] | None = None

    def start(self, devices: list[str]) -> None:
        """Connect to the cluster (or start the embedded one advertising ``devices``, on the
        loopback address with token authentication: see
        :func:`~rlnas.distributed.cluster.start_embedded`)."""
        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
        if self.address:
            ray.init(address=self.address, **quiet)
        else:
            self._saved_env = start_embedded(self.num_cpus, {device_resource(d): 1 for d in devices}, **quiet)
        self._owned = True
        log.info("Ray: %s, resources %s", self.address or "embedded (loopback address, token authentication)",
                 ray.cluster_resources())

    def stop(self) -> None:
        """Disconnect (and stop the embedded Ray) if this backend started it."""
        if self._saved_env is not None:  # the embedded Ray's token goes with it
            stop_embedded(self._saved_env)
            self._saved_env = None
        elif self._owned and ray.is_initialized():
            ray.shutdown()
        self._owned = False

    def latency_oracle(self, build: Callable[..., LatencyOracle], **kwargs: Any) -> RemoteLatencyOracle:
        """The latency oracle of the config (``build``: its partial) measuring on the device's
        nodes; DeviceProfileError at once when no node can measure on the device."""
        oracle = RemoteLatencyOracle(**{**build.keywords, **kwargs}, retries=self.retries,  # type: ignore[attr-defined]
                                     node_wait_s=self.node_wait_s)
        try:
            oracle.worker.describe()
        except (WorkerError, NodeLost) as err:
            raise DeviceProfileError(str(err)) from None
        return oracle

    def accuracy_oracle(self, build: Callable[..., AccuracyOracle], dataset: Any, resolution: int,
                        **kwargs: Any) -> RemoteAccuracyOracle:
        """The accuracy oracle of the config (``build``: its partial) scoring on accuracy actors."""
        options = {**build.keywords, **kwargs, "threads": self.accuracy_threads}  # type: ignore[attr-defined]
        return RemoteAccuracyOracle(workers=self.accuracy_workers, retries=self.retries, dataset=dataset,
                                    resolution=resolution, **options)

    def fine_tune(self, student: nn.Module, teacher: nn.Module, dataset: Any, resolution: int, out_dir: Path,
                  options: FineTuneOptions, name: str, seed: int = 0, writer: Any = None) -> nn.Module:
        """One finalist fine-tuned on a node (:class:`RemoteFineTune`); returns it with its weights."""
        have = ray.cluster_resources()
        missing = {k: v for k, v in self.finetune_resources.items() if have.get(k, 0) < v}
        if missing:  # the actor would wait for such a node forever
            raise RuntimeError(f"backend.finetune_resources {missing}: no node of the cluster advertises them "
                               f"(it has {sorted(k for k in have if not k.startswith('node:'))})")
        return RemoteFineTune(student, teacher, dataset, resolution, out_dir, options, name, seed, writer,
                              threads=self.accuracy_threads, gpus=self.finetune_gpus, retries=self.retries,
                              resources=self.finetune_resources).run()
