"""A run's evaluations.jsonl when it is damaged: a cut-short last line is an interrupted write
(dropped with a warning, cut off the file, and the search goes on from the records before it); a
damaged line before the last is corruption, and the run stops with one line naming the file, the
line and how to go on. Surrogate oracles on the real tiny supernet: instant, no store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rlnas.errors import UserError
from rlnas.oracles.surrogate import Surrogate, SurrogateAccuracyOracle, SurrogateLatencyOracle
from rlnas.search.agents import RandomSearch
from rlnas.search.evaluator import Evaluator
from rlnas.search.history import HistoryCorrupt, HistoryMismatch, read_history

RES, BUDGET = 32, 3


@pytest.fixture(scope="module")
def surrogate(supernet, make_table):
    return Surrogate(make_table(supernet), supernet, RES)


def evaluator(supernet, surrogate, history: Path) -> Evaluator:
    accuracy = SurrogateAccuracyOracle(surrogate)
    return Evaluator(supernet, SurrogateLatencyOracle(surrogate), accuracy, (1, 3, RES, RES), budget=BUDGET,
                     reference=accuracy.evaluate_model(None, "a0"), history_path=history)


@pytest.fixture
def log(supernet, surrogate, tmp_path: Path) -> Path:
    """The log of a finished run: the baseline and BUDGET candidates, one line each."""
    path = tmp_path / "evaluations.jsonl"
    RandomSearch().run(evaluator(supernet, surrogate, path), budget=BUDGET, seed=0)
    assert len(path.read_text().splitlines()) == 1 + BUDGET
    return path


def test_a_cut_short_last_line_is_an_interrupted_write(supernet, surrogate, log: Path, caplog) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # killed while writing the last record
    with caplog.at_level(logging.WARNING, logger="rlnas.search.history"):
        assert len(read_history(log)) == BUDGET  # reading alone changes nothing
        assert log.read_bytes().endswith(lines[-1][:40])
        resumed = evaluator(supernet, surrogate, log)
    assert resumed.unique_evaluations == BUDGET - 1 and not resumed.budget_exhausted
    assert f"{log}:{1 + BUDGET}: the last record is cut short (an interrupted write): dropped" in caplog.text
    assert log.read_bytes() == b"".join(lines[:-1])  # cut off: the next record starts a line of its own
    RandomSearch().run(resumed, budget=BUDGET, seed=0)  # the dropped candidate is asked (measured) again
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["baseline"] + ["candidate"] * BUDGET
    assert records[-1]["measurement"]["arch"] == json.loads(lines[-1])["measurement"]["arch"]


@pytest.mark.parametrize("damage", ["garbage", "cut short", "not a record"])
def test_a_damaged_line_in_the_middle_stops_the_run_in_one_line(supernet, surrogate, log: Path, damage: str) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    lines[2] = {"garbage": b"\x00\xff{{not json\n",
                "cut short": lines[2][:50] + lines[3],  # a cut-short record that a later one was appended to
                "not a record": b'{"kind": "candidate"}\n'}[damage]
    log.write_bytes(before := b"".join(lines))
    for read in (read_history, lambda path: evaluator(supernet, surrogate, path)):
        with pytest.raises(HistoryCorrupt) as info:
            read(log)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{log}:3: damaged record in the run log")
        assert "not an interrupted write" in message
        assert f"move {log.name} away to start this run's log afresh" in message and "delete line 3" in message
        assert log.read_bytes() == before  # nothing dropped or rewritten
    # a user's error (one line, exit 2), and a log the run's setup cannot resume, like another setup's
    assert isinstance(info.value, UserError) and isinstance(info.value, HistoryMismatch)
