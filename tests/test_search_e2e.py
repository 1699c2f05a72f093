"""End to end through the real ``rlnas-search`` app (experiment=tiny): trains a tiny supernet for
a few steps, searches with real OpenVINO/NNCF oracles and MaskablePPO, resumes a run with a larger
budget without repeating a measurement, exports, and the exported IR runs in OpenVINO and
benchmark_app. Also the error messages of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import search_data_overrides, tiny_a0

import rlnas
from rlnas.oracles.store import MeasurementStore
from rlnas.search.history import read_history

pytestmark = pytest.mark.slow
REPO = rlnas.REPO_DIR


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace of the module's tests: the overrides of every run (the supernet is trained
    once, in a directory of its own; each test chooses its measurement store)."""
    root = tmp_path_factory.mktemp("search")
    # fp32_images=0: candidates skip the FP32 pass (acc_fp32 None), as the full experiments do
    overrides = ["experiment=tiny", f"supernet.dir={root / 'supernets'}", "device=host", "logging.progress=false",
                 "accuracy.fp32_images=0", f"a0.checkpoint={tiny_a0(root / 'a0.pt')}", *search_data_overrides(root)]
    return root, overrides


def search(ws, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    """``rlnas-search`` with the workspace's overrides, measuring into ``cache`` (default: the
    workspace's shared store)."""
    root, overrides = ws
    return subprocess.run([str(Path(sys.executable).parent / "rlnas-search"), *overrides,
                           f"cache_dir={cache or root / 'cache'}", *args], cwd=root,
                          capture_output=True, text=True, timeout=900)


def measured_at(cache: Path) -> dict[str, float]:
    """When each architecture's latency was measured (the export's timing of its IR excluded)."""
    items = MeasurementStore(cache / "measurements.sqlite").items("latency")
    return {k["model"]: r["measured_at"] for k, r in items if not k["model"].startswith("ir:")}


@dataclass
class ResumedRun:
    """A run of budget 2 without export, then resumed with budget 3 and exported; its own
    measurement store, and what it held after each invocation."""

    run: Path
    cache: Path
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    counts_after_first: dict[str, int]
    agent_after_first: bool
    measured_after_first: dict[str, float]
    measured_after_second: dict[str, float]


@pytest.fixture(scope="module")
def resumed_run(ws) -> ResumedRun:
    root, _ = ws
    run, cache = root / "run", root / "run-cache"
    first = search(ws, "budget=2", "export.enabled=false", f"run_dir={run}", cache=cache)
    store = MeasurementStore(cache / "measurements.sqlite")
    counts = {kind: len(store.records(kind)) for kind in ("latency", "accuracy")}
    agent, measured = (run / "agent" / "ppo.zip").exists(), measured_at(cache)
    second = search(ws, "budget=3", f"run_dir={run}", cache=cache)
    return ResumedRun(run, cache, first, second, counts, agent, measured, measured_at(cache))


def test_search_resume_and_export(resumed_run):
    r = resumed_run
    run, first, second = r.run, r.first, r.second
    assert first.returncode == 0, first.stderr[-3000:]
    assert "unique evaluations: 2 / budget 2" in first.stdout
    # latency: the maximal subnet + 2; accuracy: also a0 as deployed
    assert r.counts_after_first == {"latency": 3, "accuracy": 4}
    assert r.agent_after_first

    # resume with a larger budget: the 2 measurements are reused, 1 new one made, then export
    assert second.returncode == 0, second.stderr[-3000:]
    assert "unique evaluations: 3 / budget 3" in second.stdout and "resuming" in (run / "search.log").read_text()
    before, after = r.measured_after_first, r.measured_after_second
    assert len(before) == 3 and len(after) == 4
    assert all(after[k] == t for k, t in before.items())  # nothing re-measured
    history = read_history(run / "evaluations.jsonl")
    kinds = [k for k, _, _ in history]
    assert kinds.count("baseline") == 1 and kinds.count("candidate") == 3
    assert len({m.arch for k, _, m in history if k == "candidate"}) == 3
    stages = json.loads((run / "search_result.json").read_text())["stage_seconds"]
    assert list(stages) == ["setup", "a0 and maximal subnet", "search", "finalists", "export"]
    assert stages["finalists"] > 0 and stages["export"] > 0 and "wall time (this invocation)" in second.stdout

    _check_tensorboard(run / "tb")
    _check_export(run / "export", r.cache)


def test_finalists_quantized_with_accuracy_control(ws, resumed_run, tmp_path):
    """The finalists of the resumed run again (a copy of it and of its store, so that the run
    stays as it was), quantized by nncf.quantize_with_accuracy_control (judged on validation
    images): the scores, the confirmed IR and the exported IR are that model's; the fine-tuning
    is resumed from its checkpoints, not repeated."""
    root, _ = ws
    assert resumed_run.second.returncode == 0, resumed_run.second.stderr[-3000:]
    run, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(resumed_run.run, run)
    shutil.copytree(resumed_run.cache, cache)
    again = search(ws, "budget=3", f"run_dir={run}", "finalists.quantization=accuracy_control",
                   "finalists.max_drop=0.05", cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((run / "export" / "report.json").read_text())
    finals = report["finalists"]
    assert finals["config"]["quantization"] == "accuracy_control"
    for row in finals["finalists"]:
        assert {"ptq_val_int8", "ptq_holdout_int8", "val_int8", "holdout_int8"} <= set(row["after"])
    chosen = next(f for f in finals["finalists"] if f["name"] == finals["chosen"])
    assert report["found"]["exported_ir_acc_int8"] == pytest.approx(chosen["after"]["val_int8"])
    bad = search(ws, f"run_dir={root / 'refused'}", "finalists.quantization=qat")
    assert bad.returncode == 2 and "finalists.quantization" in bad.stderr + bad.stdout


def _check_tensorboard(tb: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("search/reward", "search/unique_evaluations", "search/constraint_violations",
                "oracle/cache_hit_rate", "oracle/latency/total_seconds"):
        assert tag in scalars, sorted(scalars)
    assert "search/pareto_front" in acc.Tags()["images"]
    assert any(t.startswith("config/") for t in acc.Tags()["tensors"])  # text summaries


def _check_export(out: Path, cache: Path) -> None:
    import openvino as ov

    from rlnas.export import load_exported

    report = json.loads((out / "report.json").read_text())
    for name in ("arch.json", "model.pt", "model.onnx", "model.xml", "model.bin", "report.md"):
        assert (out / name).is_file(), name
    found, base = report["found"], report["baseline"]
    assert found["ir_size_bytes"] > 0 and found["params"] <= base["params"] and found["latency_ms"] > 0
    assert found["exported_ir_acc_int8"] is not None
    # the constraint uses the given a0 as deployed, on validation images, not the maximal subnet
    a0 = report["a0"]
    assert report["target"] == pytest.approx(0.99 * a0["val_fp32"])
    store = MeasurementStore(cache / "measurements.sqlite")
    scored = {k["split"]: r for k, r in store.items("accuracy") if str(k.get("model", "")).startswith("a0:")}
    assert scored["val"]["acc_fp32"] == a0["val_fp32"] and scored["holdout"]["acc_fp32"] == a0["holdout_fp32"]
    assert scored["val"]["details"]["eval_images"] + scored["holdout"]["details"]["eval_images"] == 128
    # finalists: fine-tuned, scored on held-out images too, confirmed in one interleaved measurement
    finals = report["finalists"]
    rows = finals["finalists"]
    assert rows and finals["chosen"] in {f["name"] for f in rows}
    conf = finals["confirmation"]
    assert conf["reference"] == "a0" and conf["rounds"] >= 5 and set(conf["ratio"]) == {"a0"} | {f["name"] for f in rows}
    assert conf["passes"] == 2 and len(conf["runs"]) == 2 and all(r["rounds"] >= 5 for r in conf["runs"])
    for f in rows:
        assert f["after"]["holdout_int8"] is not None and f["confirmed_ci"][0] <= f["confirmed_ratio"] <= f["confirmed_ci"][1]
        assert f["confirmed_ratio"] == pytest.approx(sum(f["confirmed_passes"]) / 2) and len(f["confirmed_passes"]) == 2
    assert found["confirmed_ratio"] == next(f for f in rows if f["name"] == finals["chosen"])["confirmed_ratio"]
    confirmed_ir = Path(next(f for f in rows if f["name"] == finals["chosen"])["ir_path"])
    # the very IR confirmed: its INT8 weights stay int8 (a re-save once folded them to FP32, 4x the size)
    assert (out / "model.bin").read_bytes() == confirmed_ir.with_suffix(".bin").read_bytes()
    assert "held-out images" in (out / "report.md").read_text()

    model = load_exported(out / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    core = ov.Core()
    onnx_out = core.compile_model(core.read_model(out / "model.onnx"), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())[0]
    np.testing.assert_allclose(onnx_out, ref, rtol=1e-3, atol=1e-3)
    ir = core.compile_model(core.read_model(out / "model.xml"), "CPU")
    assert ir.input(0).get_any_name() == "input" and ir.output(0).get_any_name() == "logits"
    logits = ir(x[:1].numpy())[0]
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
    # the IR with preprocessing inside: uint8 NHWC images give the float IR's output on normalised ones
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    image = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    normalised = ((image.float() / 255 - mean) / std).permute(0, 3, 1, 2).contiguous()
    uint8 = core.compile_model(core.read_model(out / "model_uint8.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    float_ir = core.compile_model(core.read_model(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(uint8(image.numpy())[0], float_ir(normalised.numpy())[0], rtol=0.05, atol=0.05)
    fps = report["throughput"]["fps"]
    assert set(fps) == {"a0", "exported"} and min(fps.values()) > 0, report["throughput"]
    bench = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    res = subprocess.run([bench, "-m", str(out / "model.xml"), "-d", "CPU", "-t", "1", "-load_config",
                          str(out / "benchmark_app_config.json"), "-nireq", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Throughput" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    assert "-load_config benchmark_app_config.json" in (out / "report.md").read_text()


def test_bad_input_messages(ws, tmp_path):
    unknown = search(ws, "no_such_option=1")
    assert unknown.returncode != 0 and "no_such_option" in unknown.stderr
    missing = search(ws, f"supernet.checkpoint={tmp_path / 'nope.pt'}", f"run_dir={tmp_path / 'r'}")
    assert missing.returncode == 2 and "rlnas-train-supernet" in missing.stderr + missing.stdout
    no_data = search(ws, f"dataset.root={tmp_path / 'no_images'}", f"run_dir={tmp_path / 'r2'}")
    out = no_data.stdout + no_data.stderr
    assert no_data.returncode == 2 and "not found" in out and "dataset.root=" in out
    export = subprocess.run([sys.executable, "-m", "rlnas.export", f"run={tmp_path / 'absent'}"],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 2 and "rlnas-search run_dir=" in export.stderr
    (tmp_path / "empty").mkdir()
    export = subprocess.run([sys.executable, "-m", "rlnas.export", f"run={tmp_path / 'empty'}"],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 2 and "not an rlnas-search run directory" in export.stderr


def test_surrogate_backend(ws):
    """The surrogate benchmark from real measurements: `surrogate_benchmark.py build` measures a
    seeded random sample, then `rlnas-search oracle=surrogate` runs 30 evaluations through the
    same Evaluator without timing or scoring anything."""
    root, overrides = ws
    table = root / "bench" / "table.json"
    build = subprocess.run([sys.executable, str(REPO / "experiments" / "surrogate_benchmark.py"), "build",
                            "--experiment", "tiny", "--sample", "random:5", "--out", str(root / "bench"), "--",
                            *[o for o in overrides if not o.startswith("experiment=")], f"cache_dir={root / 'cache'}"],
                           cwd=root, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    rows = json.loads(table.read_text())["rows"]
    assert len(rows) == 5 and all(r["latency_ratio"] > 0 and 0 <= r["acc_int8"] <= 1 for r in rows)
    before = MeasurementStore(root / "cache" / "measurements.sqlite")
    counts = {kind: len(before.records(kind)) for kind in ("latency", "accuracy")}
    run = root / "surrogate_run"
    result = search(ws, "oracle=surrogate", f"oracle.table={table}", "agent=evolution", "budget=30",
                    f"run_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unique evaluations: 30 / budget 30" in result.stdout
    history = [m for k, _, m in read_history(run / "evaluations.jsonl") if k == "candidate"]
    assert len(history) == 30 and all(m.ok and m.latency_ratio > 0 for m in history)
    after = MeasurementStore(root / "cache" / "measurements.sqlite")
    assert {kind: len(after.records(kind)) for kind in ("latency", "accuracy")} == counts  # nothing measured
    other = search(ws, "oracle=surrogate", f"oracle.table={table}", "device=kabylake_avx2", f"run_dir={root / 'r3'}")
    assert other.returncode == 2 and "another device" in other.stdout + other.stderr


def test_search_with_the_throughput_metric(ws, tmp_path):
    """``latency.metric=throughput``: the search's ratios, the finalists' confirmation and the
    export's speed-up time OpenVINO's throughput mode; the records, the run log, the progress bar
    and the report say so. Its own store: no record of another metric can answer it."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = search(ws, "budget=2", "finalists.k=1", "finalists.confirm_passes=1", "++latency.metric=throughput",
                    "logging.progress=true", f"run_dir={run}", cache=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "throughput, unconfirmed" in result.stderr  # the progress bar names the metric
    assert "INT8 time per image in throughput mode" in (run / "search.log").read_text()  # and the baseline's line
    latency = MeasurementStore(cache / "measurements.sqlite").items("latency")
    assert latency and all(k["metric"] == "throughput" and r["metric"] == "throughput" for k, r in latency)
    history = read_history(run / "evaluations.jsonl")
    assert len(history) == 3 and all(ctx["latency_metric"] == "throughput" for _, ctx, _ in history)
    assert all(m.latency_metric == "throughput" and m.latency_ratio > 0 for _, _, m in history)
    report = json.loads((run / "export" / "report.json").read_text())
    assert report["latency_metric"] == "throughput" and report["speedup"] > 0
    assert [r["metric"] for r in report["finalists"]["confirmation"]["runs"]] == ["throughput"]
    assert set(report["throughput"]["fps"]) == {"a0", "exported"} and min(report["throughput"]["fps"].values()) > 0
    config = json.loads((run / "export" / "benchmark_app_config.json").read_text())["CPU"]
    assert config["PERFORMANCE_HINT"] == "THROUGHPUT" and "NUM_STREAMS" not in config
    markdown = (run / "export" / "report.md").read_text()
    assert "time per image in throughput mode" in markdown and "latency.metric=throughput" in markdown


def test_export_command_rewrites_a_finished_run(resumed_run):
    """The console command ``rlnas-export run=<dir> <override>`` (a Hydra app composing the run's
    saved config inside itself) writes the artefacts again, with the override applied."""
    run = resumed_run.run
    assert resumed_run.second.returncode == 0, resumed_run.second.stderr[-3000:]
    before = json.loads((run / "export" / "report.json").read_text())
    (run / "export" / "report.json").unlink()
    proc = subprocess.run([str(Path(sys.executable).parent / "rlnas-export"), f"run={run}", "export.verify_images=0"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "GlobalHydra" not in proc.stderr
    after = json.loads((run / "export" / "report.json").read_text())
    assert after["found"]["arch"] == before["found"]["arch"]
    assert after["found"]["exported_ir_acc_int8"] is None and before["found"]["exported_ir_acc_int8"] is not None


def test_a_finished_finalists_stage_is_reused_not_timed_again(ws, resumed_run, tmp_path):
    """Rerunning a finished run (a copy) keeps its finalists' record as it was: the same
    confirmation, not a second timing of the same IRs with another speed-up."""
    assert resumed_run.second.returncode == 0, resumed_run.second.stderr[-3000:]
    run, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(resumed_run.run, run)
    shutil.copytree(resumed_run.cache, cache)
    record = run / "finalists" / "finalists.json"
    before = record.read_bytes()
    again = search(ws, "budget=3", f"run_dir={run}", cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert record.read_bytes() == before
    assert "finalists: reusing" in (run / "search.log").read_text()
    report = json.loads((run / "export" / "report.json").read_text())
    assert report["finalists"]["confirmation"] == json.loads(before)["confirmation"]
