"""The machine-wide readers-writer lock, across real processes: timing alone, computations
together, a waiting timing run served before new computations, and nested shared holds in one
thread that do not deadlock behind a waiting timing run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from rlnas import machinelock


def hold(path: Path, seconds: float, exclusive: bool = False) -> subprocess.Popen:
    """Another process holding the lock for ``seconds`` (through the module's CLI)."""
    flag = ["--exclusive"] if exclusive else []
    proc = subprocess.Popen([sys.executable, "-m", "rlnas.machinelock", *flag, "--path", str(path), "--",
                             sys.executable, "-c", f"import time; print('held', flush=True); time.sleep({seconds})"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # it holds the lock now
    return proc


def test_timing_waits_for_computations_and_they_wait_for_it(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    computing = hold(lock, 1.5)
    with machinelock.shared(str(lock)) as waited:  # computations run together
        assert waited.seconds < 0.5
    with machinelock.exclusive(str(lock)) as waited:  # a timing run waits for the computation
        assert waited.seconds > 1.0  # held 1.5 s by the other process
    timing = hold(lock, 1.5, exclusive=True)
    with machinelock.shared(str(lock)) as waited:  # and a computation waits for the timing run
        assert waited.seconds > 1.0
    computing.wait()
    timing.wait()


def test_a_waiting_timing_run_goes_before_new_computations(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    order: list[str] = []
    computing = hold(lock, 1.5)

    def timing() -> None:
        with machinelock.exclusive(str(lock)):
            order.append("timing")
            time.sleep(0.5)

    thread = threading.Thread(target=timing)
    thread.start()
    time.sleep(0.5)  # the timing run waits in the turnstile now
    later = subprocess.run([sys.executable, "-m", "rlnas.machinelock", "--path", str(lock), "--",
                            sys.executable, "-c", "print('computed')"], capture_output=True, text=True, timeout=30)
    order.append(later.stdout.strip())
    thread.join(30)
    computing.wait()
    assert order == ["timing", "computed"]


def test_nested_shared_holds_do_not_queue_behind_a_waiting_timing_run(tmp_path: Path) -> None:
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
        time.sleep(0.3)  # the timing run waits for this hold, in the turnstile
        other.start()
        other.join(1.0)
        assert not done.is_set()  # another thread's hold queues behind the timing run ...
        with machinelock.shared(lock) as inner:  # ... this thread's nested one does not
            assert inner.seconds == 0.0
    waiting.join(10)
    other.join(10)
    assert done.is_set() and not waiting.is_alive()
