"""MeasurementStore: round trips, canonical keys, WAL, and two processes writing at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

from rlnas.oracles.store import MeasurementStore, key_hash


def test_put_get_roundtrip(tmp_path):
    store = MeasurementStore(tmp_path / "sub" / "m.sqlite")
    key = {"model": "a", "shape": [1, 3, 32, 32], "profile": {"name": "host", "threads": 2}}
    assert store.get("latency", key) is None
    store.put("latency", key, {"latency_ms": 1.5, "kernels": {"jit_avx2_I8": 3}})
    assert store.get("latency", key) == {"latency_ms": 1.5, "kernels": {"jit_avx2_I8": 3}}
    reordered = {"profile": {"threads": 2, "name": "host"}, "shape": [1, 3, 32, 32], "model": "a"}
    assert store.get("latency", reordered) is not None
    assert store.get("accuracy", key) is None
    store.put("latency", key, {"latency_ms": 2.0})
    assert store.get("latency", key) == {"latency_ms": 2.0}
    assert len(store) == 1


def test_keys_differ_when_any_field_differs():
    base = {"model": "a", "precision": "int8", "shape": [1, 3, 32, 32]}
    assert key_hash(base) != key_hash({**base, "precision": "fp32"})
    assert key_hash(base) != key_hash({**base, "shape": [1, 3, 64, 64]})


def test_records_and_delete(tmp_path):
    store = MeasurementStore(tmp_path / "m.sqlite")
    for i in range(3):
        store.put("latency", {"i": i}, {"v": i})
    store.put("accuracy", {"i": 0}, {"acc": 0.5})
    assert [r["v"] for r in store.records("latency")] == [0, 1, 2]
    assert store.items("accuracy") == [({"i": 0}, {"acc": 0.5})]
    assert store.kinds() == ["accuracy", "latency"]
    assert store.delete("latency", {"i": 1}) and not store.delete("latency", {"i": 1})
    assert len(store.records("latency")) == 2


def test_wal_mode(tmp_path):
    path = tmp_path / "m.sqlite"
    MeasurementStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, worker: int, count: int) -> None:
    store = MeasurementStore(path)
    for i in range(count):
        store.put("latency", {"worker": worker, "i": i}, {"value": worker * 1000 + i})
        store.put("latency", {"shared": i % 5}, {"worker": worker})
        store.get("latency", {"worker": 1 - worker, "i": i})


def test_two_processes_write_concurrently(tmp_path):
    path = str(tmp_path / "m.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = MeasurementStore(path)
    for w in (0, 1):
        for i in range(150):
            assert store.get("latency", {"worker": w, "i": i}) == {"value": w * 1000 + i}
    assert len(store) == 300 + 5
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
