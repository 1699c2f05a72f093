"""The measurement store under load: 4 writer processes x 500 records into one SQLite file, with
distinct and shared keys, one writer killed (SIGKILL) at a seeded moment and restarted to
finish. Afterwards the file passes ``PRAGMA integrity_check``, every record a writer reported
committed is there exactly once, and nothing is half-written."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from rlnas.oracles.store import MeasurementStore, canonical_json, key_hash

WRITERS, RECORDS, SHARED_EVERY, SEED = 4, 500, 5, 22
KINDS = ("latency", "accuracy")


def key_of(writer: int, i: int) -> tuple[str, dict]:
    """Every ``SHARED_EVERY``-th record goes under a key all writers write; the others are the writer's own."""
    kind = KINDS[i % 2]
    return (kind, {"shared": i}) if i % SHARED_EVERY == 0 else (kind, {"writer": writer, "i": i})


def record_of(writer: int, i: int) -> dict:
    """A record of 100 B to 20 kB (a large one spans several database pages) with its own digest."""
    size = int(np.random.default_rng([SEED, writer, i]).integers(100, 20_000))
    payload = f"{writer}-{i}-" + "x" * size
    return {"writer": writer, "i": i, "payload": payload, "sha256": hashlib.sha256(payload.encode()).hexdigest()}


def write(path: str, writer: int, start: int, conn: Connection) -> None:
    """Put records ``start..RECORDS-1``, reporting each index once its transaction has committed;
    then say "end" and exit when told (so a writer to be killed is never done before the kill)."""
    store = MeasurementStore(path)
    for i in range(start, RECORDS):
        kind, key = key_of(writer, i)
        store.put(kind, key, record_of(writer, i))
        conn.send(i)
    conn.send("end")
    conn.recv()


def start_writer(ctx, path: Path, writer: int, start: int) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    ours, theirs = ctx.Pipe()  # one pipe each: a killed writer can damage only its own
    proc = ctx.Process(target=write, args=(str(path), writer, start, theirs), daemon=True)
    proc.start()
    theirs.close()  # the child holds the only other end: its death is an EOF here
    return proc, ours


def test_writers_one_killed_and_restarted_leave_every_committed_record_once(tmp_path: Path) -> None:
    path = tmp_path / "measurements.sqlite"
    rng = np.random.default_rng(SEED)
    victim, kill_after = int(rng.integers(WRITERS)), int(rng.integers(20, RECORDS - 20))
    ctx = multiprocessing.get_context("spawn")
    committed: dict[int, set[int]] = {w: set() for w in range(WRITERS)}
    procs, conns = {}, {}
    for w in range(WRITERS):
        procs[w], conns[w] = start_writer(ctx, path, w, 0)
    done, killed, restarted = set(), False, False
    while len(done) < WRITERS:
        for conn in wait(list(conns.values())):
            w = next(k for k, c in conns.items() if c is conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the killed writer's pipe, drained (a message cut short ends it)
                assert w == victim and killed and not restarted, f"writer {w} died: exit code {procs[w].exitcode}"
                procs[w].join()
                assert procs[w].exitcode == -signal.SIGKILL
                conn.close()
                procs[w], conns[w] = start_writer(ctx, path, w, max(committed[w]) + 1)
                restarted = True
                continue
            if msg == "end":  # the victim is killed before it says so: its reports come in order
                conn.send("exit")
                done.add(w)
                conns.pop(w).close()
                procs[w].join()
                assert procs[w].exitcode == 0
                continue
            committed[w].add(msg)
            if w == victim and not killed and len(committed[w]) == kill_after:
                os.kill(procs[w].pid, signal.SIGKILL)  # mid-work: it goes on writing until the signal lands
                killed = True
    assert killed and restarted and all(committed[w] == set(range(RECORDS)) for w in range(WRITERS))

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT kind, key_hash FROM measurements GROUP BY kind, key_hash HAVING COUNT(*) > 1"
                          ).fetchall() == []
        rows = db.execute("SELECT kind, key_hash, key_json, record_json FROM measurements").fetchall()
    # nothing half-written: every row's key hashes to its hash, every record is whole and consistent
    for _, digest, key_json, record_json in rows:
        assert key_hash(json.loads(key_json)) == digest and canonical_json(json.loads(key_json)) == key_json
        rec = json.loads(record_json)
        assert hashlib.sha256(rec["payload"].encode()).hexdigest() == rec["sha256"]
        assert rec == record_of(rec["writer"], rec["i"])
    # every reported record is there exactly once: one row per key, holding one writer's version
    expected = {key_of(w, i)[0] + canonical_json(key_of(w, i)[1]) for w in range(WRITERS) for i in range(RECORDS)}
    assert len(rows) == len(expected) == WRITERS * RECORDS - (WRITERS - 1) * (RECORDS // SHARED_EVERY)
    store = MeasurementStore(path)
    for w in range(WRITERS):
        for i in range(RECORDS):
            kind, key = key_of(w, i)
            rec = store.get(kind, key)
            if "shared" in key:
                assert rec == record_of(rec["writer"], i)  # the last writer's, whole
            else:
                assert rec == record_of(w, i)


def measure_once(path: str, who: int, conn: Connection) -> None:
    """Say "claiming", then measure the shared key under its claim unless it is already stored;
    report whether this process measured it."""
    store = MeasurementStore(path)
    conn.send("claiming")
    with store.claim("latency", {"model": "shared"}):
        measured = store.get("latency", {"model": "shared"}) is None
        if measured:
            store.put("latency", {"model": "shared"}, {"by": who})
    conn.send(measured)


def test_a_claimed_key_is_measured_by_one_process_only(tmp_path: Path) -> None:
    path = tmp_path / "measurements.sqlite"
    store = MeasurementStore(path)
    ctx = multiprocessing.get_context("spawn")
    with store.claim("latency", {"model": "shared"}):  # held here until every process is on its way to wait
        procs, conns = [], []
        for who in range(WRITERS):
            ours, theirs = ctx.Pipe()
            procs.append(ctx.Process(target=measure_once, args=(str(path), who, theirs), daemon=True))
            procs[-1].start()
            theirs.close()
            conns.append(ours)
        assert [conn.recv() for conn in conns] == ["claiming"] * WRITERS
        with store.claim("latency", {"model": "other"}):  # another key is free meanwhile
            store.put("latency", {"model": "other"}, {"by": "parent"})
    measured = [conn.recv() for conn in conns]
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    assert measured.count(True) == 1 and store.get("latency", {"model": "shared"}) == {"by": measured.index(True)}
    assert list(path.with_name(path.name + ".claims").iterdir()) == []  # each claim removed its lock file


def test_claims_stay_exclusive_while_their_lock_files_come_and_go(tmp_path: Path) -> None:
    """Threads claim one key over and over: each release unlinks the lock file a waiter may
    already have opened, and never do two threads hold the claim at once."""
    store = MeasurementStore(tmp_path / "measurements.sqlite")
    holders: list[int] = []
    overlaps: list[list[int]] = []

    def hammer(who: int) -> None:
        for _ in range(200):
            with store.claim("latency", {"model": "shared"}):
                holders.append(who)
                time.sleep(0)  # let another thread run while this one holds the claim
                if holders != [who]:
                    overlaps.append(list(holders))
                holders.remove(who)

    threads = [threading.Thread(target=hammer, args=(who,)) for who in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert list((tmp_path / "measurements.sqlite.claims").iterdir()) == []
