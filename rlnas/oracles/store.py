"""A persistent measurement cache shared by processes: SQLite in WAL mode with a busy timeout.

Keys are dicts holding everything that changes a number; they are stored as canonical JSON and
looked up by its SHA-256. Each operation opens its own short-lived connection, so a store object
is safe to use after ``fork`` and from several threads. A record is written in one transaction:
a process killed at any moment leaves either the whole record or none (tests/test_store_stress.py).
:meth:`MeasurementStore.claim` lets processes sharing a store measure each key once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    kind TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    key_json TEXT NOT NULL,
    record_json TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (kind, key_hash)
)
"""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal dicts give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def key_hash(key: dict[str, Any]) -> str:
    """SHA-256 hex digest of a key dict's canonical JSON."""
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()


def _lock_linked(path: Path) -> int:
    """An fd holding an exclusive ``flock`` on the file that is at ``path`` now, created if absent.

    Holders remove the file before they release it, so a lock taken on a file already unlinked
    (or replaced by a newer one) guards nothing: such a lock is dropped and taken again on the
    file now at ``path``. Only the holder of the linked file's lock unlinks it, so whoever holds
    the lock on the file linked at ``path`` holds the claim alone."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            now, held = os.stat(path), os.fstat(fd)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class MeasurementStore:
    """Records of measurements by ``(kind, key dict)``, in one SQLite file safe across processes.

    :param path: database file; parent directories are created.
    :param busy_timeout_ms: how long a writer waits for another process's lock.
    """

    def __init__(self, path: str | Path, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    def get(self, kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The record stored under ``(kind, key)``, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT record_json FROM measurements WHERE kind=? AND key_hash=?",
                               (kind, key_hash(key))).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, kind: str, key: dict[str, Any], record: dict[str, Any]) -> None:
        """Store (or replace) the record under ``(kind, key)``."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?)",
                         (kind, key_hash(key), canonical_json(key), canonical_json(record), time.time()))
            conn.execute("COMMIT")

    @contextmanager
    def claim(self, kind: str, key: dict[str, Any]) -> Iterator[None]:
        """Hold ``(kind, key)`` while measuring it: another process (or thread) claiming the same
        key waits until this hold ends, then finds the record by :meth:`get` instead of measuring
        it again; other keys go on. The pattern: ``with store.claim(kind, key): record =
        store.get(kind, key); if record is None: measure, store.put(kind, key, ...)``. An
        exclusive ``flock`` on ``<store>.claims/<kind>-<key hash>`` (released if the holder dies);
        the holder removes that file when its hold ends, so no lock file outlives its claim
        (a holder that dies leaves it, and the next claim of the key reuses and removes it).
        Hold one claim at a time, and never claim while holding the machine lock: the holder of a
        claim may be waiting for it."""
        folder = self.path.with_name(self.path.name + ".claims")
        folder.mkdir(exist_ok=True)
        path = folder / f"{kind}-{key_hash(key)}"
        fd = _lock_linked(path)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: a waiter on this file sees it gone and starts over
            os.close(fd)  # releases the flock

    def delete(self, kind: str, key: dict[str, Any]) -> bool:
        """Remove one record; True if there was one."""
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM measurements WHERE kind=? AND key_hash=?", (kind, key_hash(key)))
            return cur.rowcount > 0

    def records(self, kind: str) -> list[dict[str, Any]]:
        """All records of ``kind``, oldest update first."""
        return [record for _, record in self.items(kind)]

    def items(self, kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """All ``(key, record)`` pairs of ``kind``, oldest update first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT key_json, record_json FROM measurements WHERE kind=? ORDER BY updated",
                                (kind,)).fetchall()
        return [(json.loads(k), json.loads(r)) for k, r in rows]

    def kinds(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT kind FROM measurements ORDER BY kind")]

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

    def __repr__(self) -> str:
        return f"MeasurementStore({str(self.path)!r})"


class StoredResult:
    """Base of the dataclass results that go to the store and run logs (latency, accuracy,
    confirmation, the Evaluator's Measurement): ``ok`` from ``status`` and a dict round trip
    that ignores keys a newer or older version wrote."""

    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})
