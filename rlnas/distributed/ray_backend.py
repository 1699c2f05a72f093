"""Ray as the distributed backend (``backend=ray``): latency measured on the target machines,
accuracy evaluated on any node with CPUs, results written by the driver alone.

- **Latency.** One :class:`DeviceActor` per device profile, scheduled on a node that advertises
  the custom resource ``rlnas/<profile>`` (``ray start --address=<head>
  --resources='{"rlnas/kabylake_avx2": 1}'`` on the target machine). The actor holds one unit of
  it, so a node runs at most one measurement at a time, and it runs the same timing worker as the
  local backend there (ISA cap, a0 interleaved, the machine-wide lock, which the accuracy actors
  on that node respect). A candidate's INT8 IR is built on the driver and travels to the node
  through Ray's object store (a0's reference IR once); the driver looks up and writes the
  measurement store, keyed by the node's CPU model.
- **Accuracy.** ``accuracy_workers`` :class:`AccuracyActor` s on any nodes with CPUs: the supernet
  checkpoint travels through the object store; the images are built on the node from the dataset
  config (the dataset must be present there at ``dataset.root``). The driver computes the cache
  key, looks the store up, and writes what the actor returns.
- **Faults.** A node that dies mid-measurement loses nothing already measured: the request is
  retried (``retries`` times) on another node of the same device, or ends as a failed
  measurement with the reason, which is not cached (a later run retries it).
- **Safety.** The embedded Ray (no ``address``) always uses Ray's token authentication, with a
  random token of its own unless the user gave one (:func:`token_auth_env`), and no dashboard:
  a client without the token cannot connect, let alone run code. A cluster of the user's needs
  the same (``RAY_AUTH_MODE=token`` on every node and the driver): ``docs/ray.md``.

Only :class:`RayBackend` is meant to be built by users, from ``conf/backend/ray.yaml``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from queue import Queue
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from rlnas.arch import Arch
from rlnas.distributed import RAY_INSTALL, RayNotInstalled, require_ray
from rlnas.oracles.accuracy import AccuracyOracle, AccuracyResult
from rlnas.oracles.device import (
    RELEVANT_FLAGS,
    DeviceProfile,
    DeviceProfileError,
    host_cpu_flags,
    host_cpu_model,
)
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.worker_client import DEFAULT_LOCK_PATH, WorkerClient, WorkerCrashed, WorkerError
from rlnas.ovtools import ir_content_key
from rlnas.supernet import load_supernet
from rlnas.supernet.checkpoint import atomic_save, load_file
from rlnas.supernet.finetune import FineTune, FineTuneOptions
from rlnas.tasks import build_data, get_task

try:  # the optional extra: without it, one line saying how to install it
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
except ImportError as err:
    require_ray()  # not installed at all
    raise RayNotInstalled(f"backend=ray needs Ray, which cannot be imported ({err}): {RAY_INSTALL}") from err
require_ray(ray.__version__)

log = logging.getLogger(__name__)

#: Prefix of the custom resource a node advertises for a device profile.
RESOURCE_PREFIX = "rlnas/"
#: IRs kept in the object store by the driver (the most recently used; a0's is used every time).
KEPT_IRS = 4
#: Where a node keeps the IRs and checkpoints it received (by content hash).
NODE_DIR = Path(tempfile.gettempdir()) / "rlnas-ray"
#: Ray's switch for token authentication and its two ways of taking the token: the value, or a
#: file holding it (https://docs.ray.io/en/latest/ray-security/token-auth.html).
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def device_resource(profile: str) -> str:
    """The custom resource a node advertises to measure on ``profile``: ``rlnas/<profile>``."""
    return RESOURCE_PREFIX + profile


def node_info() -> dict[str, Any]:
    """Who this process runs on: Ray node id, host name, CPU model and the flags that matter."""
    flags = host_cpu_flags()
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "cpu": host_cpu_model(), "flags": sorted(f for f in RELEVANT_FLAGS if f in flags)}


class NodeLost(WorkerCrashed):
    """The node measuring (or scoring) died and no other node of its device took over."""

    transient = True  # not a property of the candidate: never cached as its result


class DeviceUnavailable(NodeLost):
    """The device actor could not start on a node advertising the device (e.g. it lacks the ISA)."""


# -- token authentication of the embedded Ray --------------------------------------------------------


def token_auth_env() -> dict[str, str | None]:
    """Turn Ray's token authentication on for a cluster this process is about to start:
    ``RAY_AUTH_MODE=token`` and, unless the user gave a token (``RAY_AUTH_TOKEN``, or a file in
    ``RAY_AUTH_TOKEN_PATH``), a fresh random one in ``RAY_AUTH_TOKEN``, 256 bits, this cluster's
    only. Ray's servers are this process's children and read it from its environment; a client
    without it cannot connect. The token is never logged. Returns what the environment held
    before, for :func:`restore_env`."""
    saved = {name: os.environ.get(name) for name in (AUTH_MODE_ENV, TOKEN_ENV)}
    os.environ[AUTH_MODE_ENV] = "token"
    if not (os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_PATH_ENV)):
        os.environ[TOKEN_ENV] = secrets.token_hex(32)
    _reload_ray_auth()
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    """Put back what :func:`token_auth_env` changed (after the embedded Ray stopped)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make this process's Ray read the authentication mode and token again (it caches both when
    first asked): what Ray itself does when it turns token authentication on."""
    from ray._raylet import AuthenticationTokenLoader, Config  # Ray-internal; present since 2.52

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# -- the backend ------------------------------------------------------------------------------------


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
        """Connect to the cluster (or start the embedded one advertising ``devices``, with token
        authentication: see :func:`token_auth_env`)."""
        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
        if self.address:
            ray.init(address=self.address, **quiet)
        else:
            self._saved_env = token_auth_env()
            try:
                ray.init(address="local", num_cpus=self.num_cpus, resources={device_resource(d): 1 for d in devices},
                         dashboard_host="127.0.0.1", **quiet)
            except BaseException:
                restore_env(self._saved_env)
                self._saved_env = None
                raise
        self._owned = True
        log.info("Ray: %s, resources %s", self.address or "embedded (token authentication)",
                 ray.cluster_resources())

    def stop(self) -> None:
        """Disconnect (and stop the embedded Ray) if this backend started it."""
        if self._owned and ray.is_initialized():
            ray.shutdown()
        if self._saved_env is not None:  # the embedded Ray's token goes with it
            restore_env(self._saved_env)
            self._saved_env = None
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


# -- latency -----------------------------------------------------------------------------------------


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1)
class DeviceActor:
    """On a node advertising the device: the local timing worker (ISA cap in its environment) on
    IRs received through the object store."""

    def __init__(self, profile: dict[str, Any]) -> None:
        DeviceProfile(**{**profile, "cpus": tuple(profile.get("cpus") or ())}).validate()  # this node's flags
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        env = {"ONEDNN_MAX_CPU_ISA": profile["isa"]} if profile.get("isa") else {}
        self.worker = WorkerClient(env, log_path=NODE_DIR / f"worker-{profile['name']}.log")
        self.info = {**node_info(), "hello": self.worker.ensure_started()}

    def describe(self) -> dict[str, Any]:
        return self.info

    def request(self, msg: dict[str, Any], files: dict[str, ray.ObjectRef], timeout_s: float) -> dict[str, Any]:
        """Write the IRs this node lacks, point the request at them, run it on the local worker."""
        local = {}
        for digest, ref in files.items():
            xml = NODE_DIR / f"{digest}.xml"
            if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
                xml_bytes, bin_bytes = ray.get(ref)
                _write_atomic(xml.with_suffix(".bin"), bin_bytes)
                _write_atomic(xml, xml_bytes)
            local[digest] = str(xml)
        msg = {**_with_paths(msg, local), **({"lock_path": DEFAULT_LOCK_PATH} if msg.get("lock_path") else {})}
        reply = self.worker.request(msg, timeout_s)  # under this node's timing lock
        reply["node"] = {k: v for k, v in self.info.items() if k != "hello"}
        return reply


class RemoteTimingWorker:
    """The driver's side of a :class:`DeviceActor`: what :class:`LatencyOracle` calls its worker
    (``request``, ``hello``, ``close``), with the IRs shipped and lost nodes replaced."""

    def __init__(self, profile: DeviceProfile, retries: int, node_wait_s: float) -> None:
        self.profile, self.retries, self.node_wait_s = profile, retries, node_wait_s
        self.resource = device_resource(profile.name)
        self.hello: dict[str, Any] = {}
        self.node: dict[str, Any] = {}
        self._actor: Any = None
        self._refs: OrderedDict[str, ray.ObjectRef] = OrderedDict()  # digest -> (xml, bin) in the object store
        self._digests: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The node measuring now (started on first use)."""
        with self._lock:
            self._ensure_actor()
            return self.node

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        msg, files = self._ship(msg)
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            with self._lock:
                actor = self._ensure_actor()
            try:
                return ray.get(actor.request.remote(msg, files, timeout_s), timeout=timeout_s + 60)
            except RayTaskError as err:  # the worker on the node refused or failed the request
                raise WorkerError(str(err.cause if err.cause is not None else err)) from None
            except (RayActorError, GetTimeoutError) as err:
                last = err
                log.warning("%s: the node measuring died or hung (attempt %d of %d): %s", self.resource,
                            attempt + 1, self.retries + 1, type(err).__name__)
                with self._lock:
                    self._drop(actor)
        raise NodeLost(f"{self.resource}: the node measuring was lost {self.retries + 1} times "
                       f"({type(last).__name__}); no node of the device finished the request")

    def close(self) -> None:
        with self._lock:
            if self._actor is not None:
                self._drop(self._actor)

    def _ensure_actor(self) -> Any:
        if self._actor is None:
            self._wait_for_node()
            actor = DeviceActor.options(resources={self.resource: 1}).remote(self.profile.to_dict())
            try:
                self.node = ray.get(actor.describe.remote(), timeout=self.node_wait_s)
            except RayActorError as err:  # __init__ failed on the node, e.g. it lacks the ISA
                raise DeviceUnavailable(f"{self.resource}: the device actor could not start on its node: {err}") from None
            except GetTimeoutError:
                ray.kill(actor)
                raise NodeLost(f"{self.resource}: no node took the device actor in {self.node_wait_s:.0f} s") from None
            self.hello, self._actor = self.node["hello"], actor
            log.info("measuring %s on %s (%s)", self.profile.name, self.node["hostname"], self.node["cpu"])
        return self._actor

    def _drop(self, actor: Any) -> None:
        ray.kill(actor, no_restart=True)
        if self._actor is actor:
            self._actor = None

    def _wait_for_node(self) -> None:
        deadline = time.monotonic() + self.node_wait_s
        while not any(n["Alive"] and n["Resources"].get(self.resource) for n in ray.nodes()):
            if time.monotonic() > deadline:
                raise NodeLost(f"no live Ray node advertises {self.resource}: on the target machine run "
                               f"`ray start --address=<head>:6379 --resources='{{\"{self.resource}\": 1}}'`")
            time.sleep(0.5)

    def _digest(self, xml: Path) -> str:
        """Content digest of an IR, cached by path, size and modification time."""
        stat = xml.with_suffix(".bin").stat()
        ident = (str(xml), stat.st_size, stat.st_mtime_ns)
        if ident not in self._digests:
            self._digests[ident] = ir_content_key(xml).removeprefix("ir:")[:32]
        return self._digests[ident]

    def _ship(self, msg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, ray.ObjectRef]]:
        """Replace every IR path of ``msg`` by its content digest; put new IRs in the object store."""
        files: dict[str, ray.ObjectRef] = {}

        def digest_of(path: str) -> str:
            xml = Path(path)
            digest = self._digest(xml)
            if digest not in self._refs:
                self._refs[digest] = ray.put((xml.read_bytes(), xml.with_suffix(".bin").read_bytes()))
                while len(self._refs) > KEPT_IRS:  # a0's IR stays (used every time), candidates go
                    self._refs.popitem(last=False)
            self._refs.move_to_end(digest)
            files[digest] = self._refs[digest]
            return digest

        return _map_paths(msg, digest_of), files


class RemoteLatencyOracle(LatencyOracle):
    """:class:`LatencyOracle` whose timing runs on a node advertising the device (the IR is built
    here, one at a time, under the shared machine lock so that it never overlaps a timing run on
    this machine). Cache keys carry the measuring node's CPU model."""

    def __init__(self, *args: Any, retries: int = 2, node_wait_s: float = 120.0, **kwargs: Any) -> None:
        super().__init__(*args, check_host=False, **kwargs)
        self.worker = RemoteTimingWorker(self.profile, retries, node_wait_s)  # type: ignore[assignment]
        self._build_lock = threading.Lock()

    def timing_cpu(self) -> str:
        """The CPU model of the node measuring now (started on first use)."""
        return self.worker.describe()["cpu"]

    def stored_key(self, key: dict[str, Any], result: Any) -> dict[str, Any]:
        """A retried request may have run on another node of the device: key it by that one's CPU."""
        cpu = (result.host or {}).get("cpu")
        return {**key, "cpu": cpu} if cpu else key

    def prepare_ir(self, *args: Any, **kwargs: Any) -> Any:
        with self._build_lock:  # one IR build at a time on the driver (it holds the machine lock shared)
            return super().prepare_ir(*args, **kwargs)

    def host(self, reply: dict[str, Any] | None = None) -> dict[str, Any]:
        node = (reply or {}).get("node") or self.worker.node
        return {k: node.get(k) for k in ("cpu", "flags", "hostname", "node_id")}


# -- accuracy ----------------------------------------------------------------------------------------


@ray.remote(max_restarts=0)
class AccuracyActor:
    """On any node with CPUs: the supernet (from checkpoint bytes) and the images (built here from
    the dataset config) behind an :class:`AccuracyOracle` without a store."""

    def __init__(self, checkpoint: bytes, digest: str, options: dict[str, Any], dataset: dict[str, Any],
                 resolution: int) -> None:
        torch.set_num_threads(int(options["threads"]))
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        path = NODE_DIR / f"supernet-{digest}.pt"
        if not path.is_file():
            _write_atomic(path, checkpoint)
        supernet, meta = load_supernet(path)
        data = build_data(OmegaConf.create(dataset), int(resolution))
        self.oracle = AccuracyOracle(supernet, data, None, meta["checkpoint_id"],
                                     pipeline=get_task(supernet.task).pipeline, **options)
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
        dataset = _node_dataset(dataset)
        self._actor_args = (ray.put(blob), hashlib.sha256(blob).hexdigest()[:16], self._actor_options(), dataset,
                            int(resolution))
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
            except (RayActorError, GetTimeoutError) as err:
                ray.kill(actor, no_restart=True)  # frees its CPUs for the replacement
                actor = self._new_actor()
                if getattr(err, "actor_init_failed", False):  # e.g. the node lacks the dataset
                    return AccuracyResult("failed", f"accuracy: the accuracy actor could not start on its node: {err}",
                                          transient=True)
                log.warning("accuracy actor lost while scoring %s (attempt %d of %d): %s", arch.short(),
                            attempt + 1, self.retries + 1, type(err).__name__)
                continue
            except RayTaskError as err:
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


# -- fine-tuning -------------------------------------------------------------------------------------


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
        self.tune = FineTune(student, teacher, data, None, FineTuneOptions(**{**options, "progress": False}),
                             name, seed, device=device)
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
        dataset = _node_dataset(dataset)
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
            except RayActorError as err:
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


# -- helpers -----------------------------------------------------------------------------------------


def _map_paths(msg: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """``msg`` with the ``path`` of every model entry (``cand``, ``ref``, ``models``) mapped by ``fn``."""
    out = dict(msg)
    for name in ("cand", "ref"):
        if out.get(name):
            out[name] = {**out[name], "path": fn(out[name]["path"])}
    if isinstance(out.get("models"), dict):
        out["models"] = {k: ({**v, "path": fn(v["path"])} if isinstance(v, dict) else fn(v))
                         for k, v in out["models"].items()}
    if out.get("path"):
        out["path"] = fn(out["path"])
    return out


def _with_paths(msg: dict[str, Any], local: dict[str, str]) -> dict[str, Any]:
    return _map_paths(msg, lambda digest: local[digest])


def _node_dataset(dataset: Any) -> dict[str, Any]:
    """The dataset config as plain data for a node, its root absolute (a node has no driver cwd)."""
    dataset = OmegaConf.to_container(dataset, resolve=True) if OmegaConf.is_config(dataset) else dict(dataset)
    if dataset.get("root") and not Path(dataset["root"]).is_absolute():
        dataset["root"] = str(Path(dataset["root"]).absolute())
    return dataset


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
