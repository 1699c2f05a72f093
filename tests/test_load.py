"""Several searches at once on one machine, sharing one cache directory: three real
``rlnas-search experiment=tiny`` processes (seeded aging evolution from one-edit neighbours of
a0, so their architectures overlap) measure into one store. Afterwards the store is intact and
holds each measurement once, every run's log is complete, and the machine lock kept every
timing alone: the timed sections recorded with the latency records never overlap."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import search_data_overrides, tiny_a0
from torch import nn

from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.ratios import TimingConfig
from rlnas.oracles.store import MeasurementStore, canonical_json, key_hash

pytestmark = pytest.mark.slow
SEEDS, BUDGET = (0, 1, 2), 4  # seeds whose first BUDGET one-edit neighbours of a0 overlap (checked below)
BIN = Path(sys.executable).parent

#: trains the run's supernet once, as rlnas-search would find or train it, without searching
TRAIN = """
import sys
from rlnas.api import compose_search
from rlnas.runsetup import find_or_train_supernet, load_a0
from rlnas.tasks import build_data
cfg = compose_search(*sys.argv[1:])
data = build_data(cfg.dataset, int(cfg.resolution))
print(find_or_train_supernet(cfg, int(data.num_classes), load_a0(cfg, int(data.num_classes)))[1]["checkpoint_id"])
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The supernet trained once, then three searches started together on one cache directory
    and one machine lock (a file of the test's own, so other tests' timings never wait for them)."""
    root = tmp_path_factory.mktemp("load")
    lock = root / "machine.lock"
    overrides = ["experiment=tiny", f"supernet.dir={root / 'supernets'}", "device=host", "logging.progress=false",
                 "logging.tensorboard=false", "accuracy.fp32_images=0", f"a0.checkpoint={tiny_a0(root / 'a0.pt')}",
                 "agent=evolution", "agent.init=a0", f"budget={BUDGET}", "export.enabled=false", "finalists.k=0",
                 f"+latency.lock_path={lock}", f"+accuracy.lock_path={lock}", f"cache_dir={root / 'cache'}",
                 *search_data_overrides(root)]
    trained = subprocess.run([sys.executable, "-c", TRAIN, *overrides], cwd=root, capture_output=True, text=True,
                             timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dirs = [root / f"run{seed}" for seed in SEEDS]
    logs = [open(root / f"search{seed}.log", "w") for seed in SEEDS]  # noqa: SIM115 (closed below)
    procs = [subprocess.Popen([str(BIN / "rlnas-search"), *overrides, f"run_dir={run}", f"seed={seed}"], cwd=root,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
             for seed, run, log in zip(SEEDS, run_dirs, logs, strict=True)]
    try:
        for proc in procs:
            proc.wait(timeout=1500)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for seed, proc in zip(SEEDS, procs, strict=True):
        assert proc.returncode == 0, (root / f"search{seed}.log").read_text()[-3000:]
    return root / "cache", run_dirs


def test_shared_store_is_intact_and_holds_each_measurement_once(runs) -> None:
    cache, _ = runs
    with sqlite3.connect(cache / "measurements.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT kind, key_hash FROM measurements GROUP BY kind, key_hash HAVING COUNT(*) > 1"
                          ).fetchall() == []
        rows = db.execute("SELECT kind, key_hash, key_json, record_json FROM measurements").fetchall()
    assert {kind for kind, *_ in rows} >= {"latency", "accuracy"}
    for _, digest, key_json, record_json in rows:  # every row whole: its key hashes to its hash, its record decodes
        assert key_hash(json.loads(key_json)) == digest and canonical_json(json.loads(key_json)) == key_json
        assert isinstance(json.loads(record_json), dict)


def test_every_run_log_is_complete_and_the_runs_overlapped(runs) -> None:
    _, run_dirs = runs
    networks = []
    for run in run_dirs:
        lines = (run / "evaluations.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]  # each line valid JSON
        assert [r["kind"] for r in records] == ["baseline"] + ["candidate"] * BUDGET
        archs = [canonical_json(r["measurement"]["arch"]) for r in records[1:]]
        assert len(set(archs)) == BUDGET and all(r["measurement"]["status"] == "ok" for r in records)
        networks.append({r["measurement"]["ir_path"] for r in records[1:]})
    # the runs measured some of the same networks (and all of them the maximal subnet)
    assert len(set.union(*networks)) < sum(len(n) for n in networks)


def test_the_machine_lock_kept_every_timing_alone(runs) -> None:
    cache, _ = runs
    records = MeasurementStore(cache / "measurements.sqlite").records("latency")
    assert len(records) >= 1 + BUDGET and all(r["status"] == "ok" for r in records)
    spans = sorted((r["timed_from"], r["timed_to"]) for r in records)
    assert all(start < end for start, end in spans)
    overlapping = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]
    assert not overlapping, f"timed sections overlap: {overlapping}"


def test_no_network_was_timed_twice(runs) -> None:
    cache, run_dirs = runs
    logged: dict[str, set[float]] = {}  # per network (its IR), the latencies the runs were answered
    for run in run_dirs:
        for line in (run / "evaluations.jsonl").read_text().splitlines():
            m = json.loads(line)["measurement"]
            logged.setdefault(m["ir_path"], set()).add(m["latency_ms"])
    stored = {r["ir_path"]: r["latency_ms"] for r in MeasurementStore(cache / "measurements.sqlite").records("latency")}
    assert {ir: sorted(times) for ir, times in logged.items() if times != {stored[ir]}} == {}


def test_a_timing_records_its_locked_section_and_a_cache_hit_keeps_it(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    fast = TimingConfig(warmup_iters=2, block_iters=5, block_skip=1, min_rounds=2, min_iters=10, min_time_s=0.05,
                        max_time_s=5.0, target_rel_error=None)
    before = time.time()
    with LatencyOracle("host", cache_dir=tmp_path, timing=fast, lock_path=str(tmp_path / "lock"), timeout_s=120) as o:
        first = o.measure(model, (1, 3, 8, 8), "fp32", model_key="load-tiny")
        again = o.measure(model, (1, 3, 8, 8), "fp32", model_key="load-tiny")
        confirmed = o.confirm({"a": first.ir_path, "b": first.ir_path}, "a", timing=fast)
    after = time.time()
    assert first.ok and not first.cached and again.cached, first.reason
    assert before <= first.measured_at <= first.timed_from < first.timed_to <= confirmed.timed_from
    assert confirmed.timed_from < confirmed.timed_to <= after
    assert first.timed_to - first.timed_from == pytest.approx(first.stage_seconds["measure"], abs=0.05)
    assert (again.timed_from, again.timed_to) == (first.timed_from, first.timed_to)  # the measurement's own
    stored = MeasurementStore(tmp_path / "measurements.sqlite").records("latency")
    assert [(r["timed_from"], r["timed_to"]) for r in stored] == [(first.timed_from, first.timed_to)]
