"""The embedded Ray of ``backend=ray`` is safe by default: none of its processes listens on an
address other than the loopback one; a client without its token (or with a wrong one) cannot
connect to it, let alone run a task, while one with the token can; the token is never logged and
goes away with the cluster. And Ray is an optional extra: without it every module but the Ray
backend's imports, and ``backend=ray`` is one line naming the install command."""

from __future__ import annotations

import configparser
import contextlib
import ipaddress
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray

import rlnas
from rlnas.distributed import RAY_INSTALL, RayNotInstalled, require_ray
from rlnas.distributed.cluster import AUTH_MODE_ENV, LOOPBACK_ENV, TOKEN_ENV, TOKEN_PATH_ENV, ray_constants
from rlnas.distributed.ray_backend import RayBackend

pytestmark = pytest.mark.timeout(300)

#: A Ray client: connect to the address given, run one task, print its result.
CLIENT = """
import sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, include_dashboard=False)
print("RESULT", ray.get(ray.remote(lambda: 6 * 7).remote(), timeout=60))
"""


def client(address: str, home: Path, **auth: str) -> subprocess.CompletedProcess:
    """Run :data:`CLIENT` with only the Ray authentication settings given (its own empty home, so
    no ``~/.ray/auth_token`` either); one connection attempt, not Ray's twenty. The client runs in
    Ray's one-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): otherwise Ray replaces the
    ``127.0.0.1`` of the address by the machine's own address, where nothing listens."""
    env = {k: v for k, v in os.environ.items() if k not in (AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV)}
    env.update(HOME=str(home), RAY_NUM_REDIS_GET_RETRIES="1", **{LOOPBACK_ENV: "0"}, **auth)
    return subprocess.run([sys.executable, "-c", CLIENT, address], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(autouse=True)
def no_auth_settings(monkeypatch, tmp_path):
    """No Ray authentication or network settings of the caller's, and a home without ``~/.ray``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, LOOPBACK_ENV):
        monkeypatch.delenv(name, raising=False)
    assert not ray.is_initialized()


@contextlib.contextmanager
def embedded_ray():
    """An embedded Ray started by :class:`RayBackend` (``backend=ray``, no address): its gcs address."""
    backend = RayBackend(num_cpus=1)
    backend.start(["auth_test"])
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        backend.stop()
    assert not ray.is_initialized()


def listening(process: psutil.Process) -> list[tuple[str, str, int]]:
    """``(process name, address, port)`` of each TCP socket ``process`` listens on."""
    try:
        return [(process.name(), c.laddr.ip, c.laddr.port) for c in process.net_connections("inet")
                if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:  # ended since it was listed: it listens on nothing
        return []


def is_loopback(address: str) -> bool:
    """``127.0.0.1``, ``::1`` and ``::ffff:127.0.0.1`` (an IPv4 loopback bound by a dual-stack socket)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return (ip.ipv4_mapped or ip).is_loopback if isinstance(ip, ipaddress.IPv6Address) else ip.is_loopback


def test_embedded_ray_listens_on_the_loopback_address_only():
    me = psutil.Process()
    others = {p.pid for p in me.children(recursive=True)}
    own = set(listening(me))
    with embedded_ray() as address:
        assert LOOPBACK_ENV not in os.environ and ray_constants.ENABLE_RAY_CLUSTER  # only for the start
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process runs, with its own server
        started = [p for p in me.children(recursive=True) if p.pid not in others]
        found = [s for p in started for s in listening(p)] + sorted(set(listening(me)) - own)  # + the driver's
        (node,) = ray.nodes()
    names = {name for name, _, _ in found}
    assert {"gcs_server", "raylet"} <= names, found
    ports = {port for _, _, port in found}
    assert int(address.rsplit(":", 1)[1]) in ports and node["NodeManagerPort"] in ports, (address, node, found)
    assert not [s for s in found if not is_loopback(s[1])], found
    assert address.rsplit(":", 1)[0] == node["NodeManagerAddress"] == "127.0.0.1"


def refused(result: subprocess.CompletedProcess) -> bool:
    return result.returncode != 0 and "InvalidAuthToken" in result.stderr and "RESULT" not in result.stdout


def test_embedded_ray_refuses_a_client_without_its_token(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with embedded_ray() as address:
        token = os.environ[TOKEN_ENV]  # generated for this cluster
        assert os.environ[AUTH_MODE_ENV] == "token" and len(token) == 64
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # the run itself uses it
        assert refused(client(address, tmp_path))
        assert refused(client(address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64))
        ok = client(address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        assert ok.returncode == 0 and "RESULT 42" in ok.stdout, ok.stderr[-2000:]
    assert token not in caplog.text
    assert AUTH_MODE_ENV not in os.environ and TOKEN_ENV not in os.environ  # gone with the cluster
    assert not (tmp_path / "home" / ".ray").exists()  # and never written to a file


def test_a_users_token_is_used_and_auth_cannot_be_switched_off(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("1f" * 32)
    monkeypatch.setenv(TOKEN_PATH_ENV, str(token_file))
    monkeypatch.setenv(AUTH_MODE_ENV, "disabled")
    with embedded_ray() as address:
        assert os.environ[AUTH_MODE_ENV] == "token" and TOKEN_ENV not in os.environ  # none generated
        assert refused(client(address, tmp_path))
        ok = client(address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        assert ok.returncode == 0 and "RESULT 42" in ok.stdout, ok.stderr[-2000:]
    assert os.environ[AUTH_MODE_ENV] == "disabled" and os.environ[TOKEN_PATH_ENV] == str(token_file)


def test_ray_is_an_optional_extra():
    cfg = configparser.ConfigParser()
    cfg.read(rlnas.REPO_DIR / "setup.cfg")
    extras = {name: value.split() for name, value in cfg["options.extras_require"].items()}
    assert "ray[default]>=2.52" in extras["ray"] and "ray[default]>=2.52" in extras["dev"]
    assert not [r for r in cfg["options"]["install_requires"].split() if r.startswith("ray")]
    require_ray("2.52.0")
    with pytest.raises(RayNotInstalled, match=r"ray>=2\.52 .*pip install 'rlnas\[ray\]'"):
        require_ray("2.40.1")


#: Without Ray: every rlnas module but the Ray backend's (``rlnas.distributed.*``) imports, and
#: importing any of those is the one line; ``backend=ray`` is the one line.
WITHOUT_RAY = """
import importlib, pkgutil, sys
sys.modules["ray"] = None  # as if not installed: `import ray` fails, find_spec finds nothing
import rlnas
from rlnas.distributed import RayNotInstalled
for info in pkgutil.walk_packages(rlnas.__path__, "rlnas."):
    if not info.name.startswith("rlnas.distributed."):
        importlib.import_module(info.name)
        continue
    try:
        importlib.import_module(info.name)
    except RayNotInstalled:
        continue
    raise SystemExit(f"{info.name} imported without Ray")
sys.argv = ["rlnas-search", "experiment=tiny", "backend=ray", "run_dir=" + sys.argv[1]]
from rlnas.cli import search
search()
"""


def test_without_ray_backend_ray_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(tmp_path / "run")], capture_output=True,
                            text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == f"rlnas-search: backend=ray needs Ray, which is not installed: {RAY_INSTALL}"

