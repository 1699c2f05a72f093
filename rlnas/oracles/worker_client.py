"""The client of the timing worker (:mod:`rlnas.oracles.worker`): starts ``python -m
rlnas.oracles.worker`` with a profile's environment, sends it one JSON request per line and reads
its replies, with a timeout per request; restarts it after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlnas import machinelock

#: Machine-wide lock taken around every timing run, so measurements never overlap.
DEFAULT_LOCK_PATH = machinelock.DEFAULT_PATH


class WorkerError(RuntimeError):
    """The worker answered with an error (it is still alive)."""


class WorkerCrashed(RuntimeError):
    """The worker process died; the client restarts it on the next request."""


class WorkerTimeout(RuntimeError):
    """A request took longer than its timeout; the worker was killed."""


@dataclass
class WorkerClient:
    """Owns one worker subprocess: starts it with ``env`` on top of ours, restarts it when dead.

    :param env: variables to set (e.g. ``ONEDNN_MAX_CPU_ISA``); :attr:`unset_env` are removed
        first so a cap in our own environment never leaks into an uncapped profile.
    :param log_path: the worker's stderr (OpenVINO/NNCF chatter, tracebacks); None = inherit.
    """

    env: dict[str, str]
    log_path: Path | None = None
    start_timeout_s: float = 120.0
    unset_env: tuple[str, ...] = ("ONEDNN_MAX_CPU_ISA",)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self.hello: dict[str, Any] = {}
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> dict[str, Any]:
        """Start the worker if it is not running; return its hello (pid, versions, ISA env)."""
        if self.alive():
            return self.hello
        if self._proc is not None:
            self.restarts += 1
            self._reap()
        env = {k: v for k, v in os.environ.items() if k not in self.unset_env}
        env.update(self.env)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with contextlib.ExitStack() as stack:
            stderr = None
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                stderr = stack.enter_context(open(self.log_path, "ab"))
            self._proc = subprocess.Popen([sys.executable, "-m", "rlnas.oracles.worker"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self._buffer = b""
        self.hello = self._read(self.start_timeout_s)
        return self.hello

    def ensure_started(self, ping_timeout_s: float = 30.0) -> dict[str, Any]:
        """Start the worker, or check with a ping that it is still there (a worker that died
        while idle must not fail the next request); restart it if not."""
        if self.alive():
            try:
                self._send({"op": "ping"}, ping_timeout_s)
            except (WorkerCrashed, WorkerTimeout):
                self.kill()
        return self.start()

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and wait for its reply; raises WorkerError/WorkerCrashed/WorkerTimeout."""
        self.ensure_started()
        return self._send(msg, timeout_s)

    def _send(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerCrashed(self._crash_reason()) from None
        reply = self._read(timeout_s)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "unknown worker error"))
        return reply

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerTimeout(f"worker request timed out after {timeout_s:g} s (worker killed)")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise WorkerCrashed(self._crash_reason())
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _crash_reason(self) -> str:
        code = self._proc.wait(timeout=10) if self._proc is not None else None
        reason = f"worker died (exit code {code})"
        if code is not None and code < 0:
            reason += f" by signal {signal.Signals(-code).name}"
        return reason + self._log_tail()

    def _log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return (": " + " | ".join(tail)) if tail else ""

    def kill(self) -> None:
        """Kill the worker now (it restarts on the next request)."""
        if self.alive():
            assert self._proc is not None
            self._proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    with contextlib.suppress(BrokenPipeError):  # a killed worker's pipe
                        stream.close()

    def close(self) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self.alive():
            with contextlib.suppress(WorkerError, WorkerCrashed, WorkerTimeout):
                self._send({"op": "shutdown"}, timeout_s=10)
        self.kill()
        self._proc = None
