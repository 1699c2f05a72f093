"""Wall-clock seconds of named stages: the one stage timer of the oracles and the pipeline.

Two ways to time, on one :class:`StageTimer`:

- ``with timer("quantize"): ...`` times a block and adds its seconds to ``timer.seconds["quantize"]``
  (a stage run twice adds up); ``timer.current`` names the stage running or last started, so a
  caller that catches an exception can say where it happened;
- ``timer.lap("setup")`` gives ``seconds["setup"]`` the time since the previous lap (or since the
  timer was made): consecutive stages of a script without a ``with`` around each.

Standard library only, so every layer of rlnas may import it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Seconds per named stage, in the order the stages first ran.

    :ivar seconds: stage name -> wall seconds (summed over every run of that stage).
    :ivar current: the stage running, or the last one started ("" before any).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = ""
        self._started = self._last_lap = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (its seconds count even when it raises)."""
        self.current = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self._add(name, time.perf_counter() - start)

    def lap(self, name: str) -> float:
        """Close stage ``name`` now: the seconds since the previous lap (or the timer's start) are
        added to it and returned."""
        now = time.perf_counter()
        elapsed, self._last_lap = now - self._last_lap, now
        self.current = name
        self._add(name, elapsed)
        return elapsed

    def total(self) -> float:
        """Wall seconds since the timer was made (stages and what ran between them)."""
        return time.perf_counter() - self._started

    def describe(self) -> str:
        """One line in minutes, e.g. ``"12.3 min = setup 0.5 + search 11.8"``."""
        total = sum(self.seconds.values())
        return f"{total / 60:.1f} min = " + " + ".join(f"{name} {s / 60:.1f}" for name, s in self.seconds.items())

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
