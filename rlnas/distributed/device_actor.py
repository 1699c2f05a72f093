"""Latency on the target machines: one :class:`DeviceActor` per device profile, scheduled on a
node that advertises the custom resource ``rlnas/<profile>`` (``ray start --address=<head>
--resources='{"rlnas/kabylake_avx2": 1}'`` on the target machine).

The actor holds one unit of that resource, so a node runs at most one measurement at a time, and
it runs the same timing worker as the local backend there (ISA cap, a0 interleaved, the
machine-wide lock, which the accuracy actors on that node respect). A candidate's INT8 IR is built
on the driver and travels to the node through Ray's object store (a0's reference IR once); the
driver looks up and writes the measurement store, keyed by the node's CPU model. A node that dies
mid-measurement loses nothing already measured: the request is retried (``retries`` times) on
another node of the same device, or ends as a failed measurement with the reason, which is not
cached (a later run retries it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlnas.distributed.cluster import NODE_DIR, NodeLost, device_resource, node_info, ray, write_atomic
from rlnas.oracles.device import DeviceProfile
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.worker_client import DEFAULT_LOCK_PATH, WorkerClient, WorkerError
from rlnas.ovtools import ir_content_key

log = logging.getLogger(__name__)

#: IRs kept in the object store by the driver (the most recently used; a0's is used every time).
KEPT_IRS = 4


class DeviceUnavailable(NodeLost):
    """The device actor could not start on a node advertising the device (e.g. it lacks the ISA)."""


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
                write_atomic(xml.with_suffix(".bin"), bin_bytes)
                write_atomic(xml, xml_bytes)
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
            except ray.exceptions.RayTaskError as err:  # the worker on the node refused or failed the request
                raise WorkerError(str(err.cause if err.cause is not None else err)) from None
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
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
            except ray.exceptions.RayActorError as err:  # __init__ failed on the node, e.g. it lacks the ISA
                raise DeviceUnavailable(f"{self.resource}: the device actor could not start on its node: {err}") from None
            except ray.exceptions.GetTimeoutError:
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
