"""The machine-wide readers-writer lock that keeps timing alone on a machine.

Timing takes it exclusively; heavy compute that may run beside it on the same machine (accuracy
evaluations and IR builds of the Ray backend) takes it shared, so that many computations run
together but never while a latency is measured. Writers are preferred: a timing run that waits
holds a turnstile that new readers must pass, so a stream of computations cannot starve it.
``flock`` locks belong to open file descriptions, so this works across processes and threads
(older rlnas versions took ``filelock.FileLock`` on the same path: the same exclusive ``flock``,
so they interoperate). Standard library only: the timing worker
imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: the machine-wide lock every timing run takes unless told otherwise
DEFAULT_PATH = os.path.join(tempfile.gettempdir(), "rlnas-latency.lock")


@dataclass
class Waited:
    """How long the lock took to get (seconds), filled in when it is held."""

    seconds: float = 0.0


def _open(path: str) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextlib.contextmanager
def _flock(path: str, mode: int) -> Iterator[None]:
    fd = _open(path)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _hold(path: str | None, mode: int) -> Iterator[Waited]:
    waited, start = Waited(), time.perf_counter()
    if not path:
        yield waited
        return
    fd = _open(path)
    try:
        with _flock(path + ".turnstile", fcntl.LOCK_EX):
            if mode == fcntl.LOCK_EX:  # a writer waits inside the turnstile: new readers queue behind it
                fcntl.flock(fd, mode)
        if mode != fcntl.LOCK_EX:
            fcntl.flock(fd, mode)
        waited.seconds = time.perf_counter() - start
        yield waited
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def exclusive(path: str | None) -> contextlib.AbstractContextManager[Waited]:
    """Hold the lock alone (timing); no lock without a path. Yields how long it took to get."""
    return _hold(path, fcntl.LOCK_EX)


def shared(path: str | None) -> contextlib.AbstractContextManager[Waited]:
    """Hold the lock together with other computations, never during a timing run."""
    return _hold(path, fcntl.LOCK_SH)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlnas.oracles.machinelock [--exclusive] [--path P] -- CMD ...``: run CMD holding
    the machine lock (shared by default), so that heavy work started beside a search never runs
    during one of its timings. CMD must not time latency itself under the same lock (it would
    wait for itself)."""
    parser = argparse.ArgumentParser(prog="python -m rlnas.oracles.machinelock", description=main.__doc__)
    parser.add_argument("--exclusive", action="store_true", help="hold it alone (as a timing run does)")
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"lock file (default {DEFAULT_PATH})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    with (exclusive if args.exclusive else shared)(args.path):
        return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
