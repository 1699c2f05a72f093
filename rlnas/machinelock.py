"""The machine-wide readers-writer lock that keeps timing alone on a machine.

Timing takes it exclusively; heavy compute that may run beside it on the same machine takes it
shared (accuracy evaluations, IR builds of the Ray backend, and every optimizer step of supernet
training and fine-tuning, so that a long training yields to a timing run between two steps): many
computations run together but never while a latency is measured. Writers are preferred: a timing run that waits
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: the machine-wide lock every timing run takes unless told otherwise
DEFAULT_PATH = os.path.join(tempfile.gettempdir(), "rlnas-latency.lock")
#: set by the CLI for its command: the lock path a parent process holds shared for it
HELD_ENV = "RLNAS_MACHINE_LOCK_HELD"


_HELD = threading.local()  # per thread: shared holds by path (a nested shared hold is free)


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


def _canonical(path: str | None) -> str | None:
    """One spelling per lock file (relative paths, symlinks), so that holds are recognised."""
    return os.path.realpath(path) if path else None


def _held_here(path: str) -> bool:
    """Whether this thread, or the parent that runs this process under the CLI, holds ``path``."""
    return bool(_HELD.__dict__.get("counts", {}).get(path)) or os.environ.get(HELD_ENV) == path


@contextlib.contextmanager
def exclusive(path: str | None) -> Iterator[Waited]:
    """Hold the lock alone (timing); no lock without a path. Yields how long it took to get.
    Raises RuntimeError where the lock is already held for this thread or process: waiting for
    it there would wait for itself (and, holding the turnstile, stop every rlnas computation).
    Shared holds nested in it are free (this thread holds the machine alone already)."""
    path = _canonical(path)
    if path and _held_here(path):
        raise RuntimeError(f"the machine lock {path} is already held here (shared, or by the parent "
                           f"command `python -m rlnas.machinelock`): timing under it would wait for itself")
    with _hold(path, fcntl.LOCK_EX) as waited, _mark_held(path):
        yield waited


@contextlib.contextmanager
def _mark_held(path: str | None) -> Iterator[None]:
    held = _HELD.__dict__.setdefault("counts", {})
    if path:
        held[path] = held.get(path, 0) + 1
    try:
        yield
    finally:
        if path:
            held[path] -= 1


@contextlib.contextmanager
def shared(path: str | None) -> Iterator[Waited]:
    """Hold the lock together with other computations, never during a timing run. Re-entrant in
    a thread (an inner hold would otherwise queue behind a waiting timing run that waits for the
    outer one), and free in a command the CLI runs holding it (``HELD_ENV``)."""
    path = _canonical(path)
    if not path or _held_here(path):
        with _mark_held(path):
            yield Waited()
        return
    with _hold(path, fcntl.LOCK_SH) as waited, _mark_held(path):
        yield waited


def main(argv: list[str] | None = None) -> int:
    """``python -m rlnas.machinelock [--exclusive] [--path P] -- CMD ...``: run CMD holding
    the machine lock (shared by default), so that heavy work started beside a search never runs
    during one of its timings. rlnas computations in CMD hold it through their parent; a timing
    run in CMD under the same lock fails (it would wait for itself)."""
    parser = argparse.ArgumentParser(prog="python -m rlnas.machinelock", description=main.__doc__)
    parser.add_argument("--exclusive", action="store_true", help="hold it alone (as a timing run does)")
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"lock file (default {DEFAULT_PATH})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    path = _canonical(args.path)
    with (exclusive if args.exclusive else shared)(path):  # CMD's own rlnas computations: held by us
        return subprocess.call(command, env={**os.environ, HELD_ENV: path})


if __name__ == "__main__":
    raise SystemExit(main())
