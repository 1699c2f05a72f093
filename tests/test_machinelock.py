"""The machine-wide readers-writer lock, across real processes: timing alone, computations
together, a waiting timing run served before new computations, nested holds in one thread that
do not deadlock, and the CLI whose command's own computations hold the lock through it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlnas import machinelock

pytestmark = pytest.mark.timeout(120)  # a broken lock hangs: fail instead


def hold(path: Path, seconds: float, exclusive: bool = False) -> subprocess.Popen:
    """Another process holding the lock for ``seconds`` (through the module's CLI)."""
    flag = ["--exclusive"] if exclusive else []
    proc = subprocess.Popen([sys.executable, "-m", "rlnas.machinelock", *flag, "--path", str(path), "--",
                             sys.executable, "-c", f"import time; print('held', flush=True); time.sleep({seconds})"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # it holds the lock now
    return proc


def hold_until_released(path: Path, exclusive: bool = False) -> subprocess.Popen:
    """Another process holding the lock until a line is written to its stdin (``release``)."""
    flag = ["--exclusive"] if exclusive else []
    proc = subprocess.Popen([sys.executable, "-m", "rlnas.machinelock", *flag, "--path", str(path), "--",
                             sys.executable, "-c", "import sys; print('held', flush=True); sys.stdin.readline()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # it holds the lock now
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.close()


def acquire_in_thread(path: Path, exclusive: bool, released: threading.Event) -> tuple[threading.Thread, list]:
    """Take the lock in a thread; it records whether ``released`` was set when it got the lock."""
    got: list[bool] = []

    def take() -> None:
        with (machinelock.exclusive if exclusive else machinelock.shared)(str(path)):
            got.append(released.is_set())

    thread = threading.Thread(target=take)
    thread.start()
    return thread, got


def wait_until_a_timing_run_waits(path: Path) -> None:
    """A waiting timing run holds the turnstile: poll it instead of sleeping a guess."""
    fd = os.open(f"{path}.turnstile", os.O_RDWR | os.O_CREAT)
    try:
        for _ in range(2000):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(0.01)
        raise AssertionError("no timing run waited for the lock")
    finally:
        os.close(fd)


def wait_until_a_computation_waits(path: Path) -> None:
    """A computation blocked on the lock is listed by the kernel as a waiter ("->") in /proc/locks."""
    inode = os.stat(path).st_ino
    for _ in range(2000):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields and "READ" in fields and fields[-3].endswith(f":{inode}"):
                return
        time.sleep(0.01)
    raise AssertionError("no computation waited for the lock")


def test_timing_waits_for_computations_and_they_wait_for_it(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    computing = hold_until_released(lock)
    with machinelock.shared(str(lock)):  # computations run together: got while the other one holds it
        assert computing.poll() is None
    released = threading.Event()
    timing, got = acquire_in_thread(lock, exclusive=True, released=released)
    wait_until_a_timing_run_waits(lock)  # a timing run waits for the computation ...
    released.set()
    release(computing)
    timing.join()
    assert got == [True] and computing.wait() == 0  # ... until it released the lock
    timing_run = hold_until_released(lock, exclusive=True)
    released.clear()
    computation, got = acquire_in_thread(lock, exclusive=False, released=released)
    wait_until_a_computation_waits(lock)  # and a computation waits for the timing run
    released.set()
    release(timing_run)
    computation.join()
    assert got == [True] and timing_run.wait() == 0


def test_a_waiting_timing_run_goes_before_new_computations(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    order: list[str] = []
    computing = hold(lock, 1.0)

    def timing() -> None:
        with machinelock.exclusive(str(lock)):
            order.append("timing")
            time.sleep(0.5)

    thread = threading.Thread(target=timing)
    thread.start()
    wait_until_a_timing_run_waits(lock)
    later = subprocess.run([sys.executable, "-m", "rlnas.machinelock", "--path", str(lock), "--",
                            sys.executable, "-c", "print('computed')"], capture_output=True, text=True, timeout=30)
    order.append(later.stdout.strip())
    thread.join(30)
    computing.wait()
    assert order == ["timing", "computed"]


def test_nested_holds_in_one_thread(tmp_path: Path) -> None:
    lock = str(tmp_path / "lock")
    done = threading.Event()

    def timing() -> None:
        with machinelock.exclusive(lock):
            pass

    def nested() -> None:
        with machinelock.shared(lock), machinelock.shared(lock):
            done.set()

    waiting, other = threading.Thread(target=timing), threading.Thread(target=nested)
    with machinelock.shared(lock):
        waiting.start()
        wait_until_a_timing_run_waits(tmp_path / "lock")
        other.start()
        other.join(1.0)
        assert not done.is_set()  # another thread's hold queues behind the timing run ...
        with machinelock.shared(os.path.relpath(lock)) as inner:  # ... this thread's nested one does not
            assert inner.seconds == 0.0
        with pytest.raises(RuntimeError, match="already held here"), machinelock.exclusive(lock):
            pass  # timing under its own shared hold would wait for itself
    waiting.join(10)
    other.join(10)
    assert done.is_set() and not waiting.is_alive()
    with machinelock.exclusive(lock), machinelock.shared(lock) as inner:  # a timing run's own computation
        assert inner.seconds == 0.0


def test_the_clis_command_holds_the_lock_through_its_parent(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    child = ("import sys; from rlnas import machinelock\n"
             f"with machinelock.shared({str(lock)!r}): pass\n"
             "try:\n"
             f"    machinelock.exclusive({str(lock)!r}).__enter__()\n"
             "except RuntimeError as err: print('refused:', err)\n")
    for flag in ([], ["--exclusive"]):
        run = subprocess.run([sys.executable, "-m", "rlnas.machinelock", *flag, "--path", str(lock), "--",
                              sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "refused: the machine lock" in run.stdout, run.stdout + run.stderr
