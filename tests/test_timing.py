"""The one stage timer (rlnas.timing): blocks add up per stage, laps split a run, a failure names its stage."""

from __future__ import annotations

import time

import pytest

from rlnas.timing import StageTimer


def test_blocks_add_up_and_a_failure_names_its_stage() -> None:
    timer = StageTimer()
    assert timer.current == "" and timer.seconds == {}
    for _ in range(2):
        with timer("convert"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError), timer("quantize"):
        raise RuntimeError("boom")
    assert list(timer.seconds) == ["convert", "quantize"] and timer.current == "quantize"
    assert timer.seconds["convert"] >= 0.02 and timer.seconds["quantize"] >= 0.0
    assert timer.total() >= sum(timer.seconds.values())


def test_laps_split_the_time_since_the_previous_lap() -> None:
    timer = StageTimer()
    time.sleep(0.01)
    setup = timer.lap("setup")
    search = timer.lap("search")
    assert setup >= 0.01 and timer.seconds == {"setup": setup, "search": search}
    assert timer.describe().startswith("0.0 min = setup 0.0 + search 0.0")
