"""The Ray cluster of ``backend=ray``: Ray imported behind the install check, the embedded
cluster's start (token authentication, loopback address only), and what every actor kind shares
(the node's identity and directory, the lost-node error, the dataset config sent to a node).

Ray is imported here alone: the other modules of this package take ``ray`` from here, so that
importing any of them without Ray raises :class:`~rlnas.distributed.RayNotInstalled`, one line
naming the install command, instead of a bare ImportError.

**Safety of the embedded Ray** (no ``address``): it always uses Ray's token authentication, with
a random token of its own unless the user gave one (:func:`token_auth_env`), no dashboard, and
every one of its servers (GCS, raylet, object manager, workers, agents, metrics) listens on the
loopback address alone (:func:`loopback_node`): nothing on the network can reach it, and a local
client without the token cannot connect. A cluster of the user's needs the token too
(``RAY_AUTH_MODE=token`` on every node and the driver): ``docs/ray.md``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlnas.distributed import RAY_INSTALL, RayNotInstalled, require_ray
from rlnas.oracles.device import RELEVANT_FLAGS, host_cpu_flags, host_cpu_model
from rlnas.oracles.worker_client import WorkerCrashed

try:  # the optional extra: without it, one line saying how to install it
    import ray
    import ray._private.ray_constants as ray_constants  # Ray-internal: see loopback_node
except ImportError as err:
    require_ray()  # not installed at all
    raise RayNotInstalled(f"backend=ray needs Ray, which cannot be imported ({err}): {RAY_INSTALL}") from err
require_ray(ray.__version__)

__all__ = ["AUTH_MODE_ENV", "LOOPBACK_ENV", "NODE_DIR", "RESOURCE_PREFIX", "TOKEN_ENV", "TOKEN_PATH_ENV",
           "NodeLost", "device_resource", "loopback_node", "node_dataset", "node_info", "ray", "restore_env",
           "start_embedded", "stop_embedded", "token_auth_env", "write_atomic"]

#: Prefix of the custom resource a node advertises for a device profile.
RESOURCE_PREFIX = "rlnas/"
#: Where a node keeps the IRs and checkpoints it received (by content hash).
NODE_DIR = Path(tempfile.gettempdir()) / "rlnas-ray"
#: Ray's switch for token authentication and its two ways of taking the token: the value, or a
#: file holding it (https://docs.ray.io/en/latest/ray-security/token-auth.html).
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
#: Ray's switch between a cluster of machines (1, Linux's default) and one machine on the loopback
#: address (0, the default on macOS and Windows); read into ``ray_constants.ENABLE_RAY_CLUSTER``.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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


def node_dataset(dataset: Any) -> dict[str, Any]:
    """The dataset config as plain data for a node, its root absolute (a node has no driver cwd)."""
    dataset = OmegaConf.to_container(dataset, resolve=True) if OmegaConf.is_config(dataset) else dict(dataset)
    if dataset.get("root") and not Path(dataset["root"]).is_absolute():
        dataset["root"] = str(Path(dataset["root"]).absolute())
    return dataset


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# -- the embedded Ray ---------------------------------------------------------------------------------


def start_embedded(num_cpus: int | None, resources: dict[str, float],
                   **options: Any) -> dict[str, str | None]:
    """Start a local Ray for this run only: token authentication (:func:`token_auth_env`), every
    server on the loopback address (:func:`loopback_node`), the dashboard's host ``127.0.0.1``.
    ``options``: the rest of ``ray.init``'s. Returns what :func:`stop_embedded` puts back.

    :raises RuntimeError: the node address Ray chose is not a loopback address (the cluster is
        stopped again: it would listen on the network).
    """
    saved = token_auth_env()
    try:
        with loopback_node():
            ray.init(address="local", num_cpus=num_cpus, resources=resources, dashboard_host="127.0.0.1",
                     **options)
        _check_loopback(ray.util.get_node_ip_address())
    except BaseException:
        stop_embedded(saved)
        raise
    return saved


def stop_embedded(saved: dict[str, str | None]) -> None:
    """Stop the embedded Ray (if it runs) and put back what :func:`token_auth_env` changed."""
    if ray.is_initialized():
        ray.shutdown()
    restore_env(saved)


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Within it, a Ray started here takes the loopback address as its node address, and then
    every server of it listens on the loopback address alone (Ray 2.60: the GCS, raylet, object
    manager and worker gRPC servers bind ``127.0.0.1`` when the node address is ``127.0.0.1``,
    else ``0.0.0.0``; the agents and metrics endpoints follow the node address too).

    Asking for it in ``ray.init(_node_ip_address="127.0.0.1")`` does not work: Ray replaces a
    loopback node address by the machine's own (``services.resolve_ip_for_localhost``) unless it
    runs in its one-machine mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS and
    Windows. Ray reads that variable once, when it is imported, into
    ``ray_constants.ENABLE_RAY_CLUSTER``: both are set here for the start alone (the processes Ray
    starts inherit the variable) and put back after, so that a later connection to a cluster of
    machines from this process is unaffected."""
    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        restore_env({LOOPBACK_ENV: saved_env}, reload_auth=False)


def _check_loopback(address: str) -> None:
    if not ipaddress.ip_address(address).is_loopback:
        raise RuntimeError(f"the embedded Ray took {address} as its node address, not a loopback address: "
                           "its servers would listen on the network, so it was stopped (docs/ray.md)")


# -- token authentication of the embedded Ray -----------------------------------------------------------


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


def restore_env(saved: dict[str, str | None], reload_auth: bool = True) -> None:
    """Put back the environment variables of ``saved`` (None: unset); by default, have Ray read
    its authentication settings again (after :func:`token_auth_env`)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if reload_auth:
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make this process's Ray read the authentication mode and token again (it caches both when
    first asked): what Ray itself does when it turns token authentication on."""
    from ray._raylet import AuthenticationTokenLoader, Config  # Ray-internal; present since 2.52

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
