"""A run's log: one JSON line per measurement (``kind``, the Evaluator's ``context``, the
:class:`~rlnas.search.measurement.Measurement`), appended as each is made and read back to resume.

A damaged last line is an interrupted write (dropped, cut off the file); a damaged line before it
stops the run (:class:`HistoryCorrupt`); a log of another setup is refused (:class:`HistoryMismatch`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rlnas.errors import UserError
from rlnas.search.measurement import Measurement

log = logging.getLogger(__name__)


class HistoryMismatch(ValueError):
    """A run log written by another setup than this evaluator's; the message says how to go on."""


class HistoryCorrupt(HistoryMismatch, UserError):
    """A run log with a damaged record before its last line: not an interrupted write (that can
    only cut the last line short), so records may be lost; the run stops rather than go on without
    them, and the one-line message names the file and line and how to go on. (A
    :class:`HistoryMismatch`, so that a run's setup handles both alike.)"""


def append_record(path: Path, kind: str, context: dict[str, Any], m: Measurement) -> None:
    """Append one record (``kind`` ``baseline`` or ``candidate``, the run's ``context``, the
    measurement) as one line, in one ``write`` on an ``O_APPEND`` descriptor, synced: a kill leaves
    at most the last line cut short (which the next load drops)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps({"kind": kind, "context": context, "measurement": m.to_dict()}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def load_history(path: Path, context: dict[str, Any]) -> list[tuple[str, Measurement]]:
    """The records of a run's log to resume from, as ``(kind, measurement)``: every record must
    have been written with ``context`` (else :class:`HistoryMismatch` naming what differs); an
    interrupted last line is dropped and cut off the file, so that the next record starts a line."""
    expected = json.loads(json.dumps(context))
    records, intact = _parse_history(path)
    for _, recorded, _ in records:
        if recorded != expected:
            differ = sorted(k for k in set(recorded or {}) | set(expected)
                            if (recorded or {}).get(k) != expected.get(k))
            raise HistoryMismatch(
                f"{path} was written by a run with another {', '.join(differ)} than this one; "
                "use a new run directory (run_dir=...) for a different setup, or the old settings")
    if intact is not None:
        os.truncate(path, intact)
    return [(kind, m) for kind, _, m in records]


def read_history(path: str | os.PathLike) -> list[tuple[str, dict[str, Any], Measurement]]:
    """Records of a run's JSONL log as ``(kind, context, measurement)``, kind ``baseline`` or
    ``candidate``. A damaged last line is an interrupted write: skipped with a warning. A damaged
    line before it raises :class:`HistoryCorrupt` naming the file and line."""
    return _parse_history(Path(path))[0]


def _parse_history(path: Path) -> tuple[list[tuple[str, dict[str, Any], Measurement]], int | None]:
    """The records of ``path``, and where an interrupted last line starts (the file's intact
    length; None when the last line is whole). Blank lines are skipped."""
    data = path.read_bytes()
    lines, start = [], 0
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():
            lines.append((lineno, start, raw))
        start += len(raw) + 1
    out = []
    for i, (lineno, offset, raw) in enumerate(lines):
        try:
            rec = json.loads(raw.decode())
            out.append((rec["kind"], rec.get("context"), Measurement.from_dict(rec["measurement"])))
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # ValueError: also bad JSON, bad UTF-8
            if i < len(lines) - 1:
                raise HistoryCorrupt(
                    f"{path}:{lineno}: damaged record in the run log ({type(err).__name__}), not its last line, so "
                    f"not an interrupted write; to go on, move {path.name} away to start this run's log afresh "
                    f"(measurements stay in the shared store: nothing is timed again) or delete line {lineno} "
                    "(its measurement is then read from the store again)") from err
            log.warning("%s:%d: the last record is cut short (an interrupted write): dropped, that candidate "
                        "is measured again (from the store if its measurement completed)", path, lineno)
            return out, offset
    return out, None
