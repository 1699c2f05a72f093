"""End to end through the real ``rlnas-search`` app (experiment=tiny): trains a tiny supernet for
a few steps, searches with real OpenVINO/NNCF oracles and MaskablePPO, resumes a run with a larger
budget without repeating a measurement, exports, and the exported IR runs in OpenVINO and
benchmark_app. Also the error messages of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rlnas
from rlnas.oracles.evaluator import read_history
from rlnas.oracles.store import MeasurementStore

pytestmark = pytest.mark.slow
REPO = rlnas.CONF_DIR.parent


def _image_folder(root: Path) -> Path:
    """10 classes of random 32x32 PNGs in train/ and test/ (used when data/cifar10 is absent)."""
    from torchvision.io import write_png

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 26), ("test", 13)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen), str(folder / f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    # fp32_images=0: candidates skip the FP32 pass (acc_fp32 None), as the full experiments do
    overrides = ["experiment=tiny", f"cache_dir={root / 'cache'}", "device=host", "logging.progress=false",
                 "accuracy.fp32_images=0"]
    if not (REPO / "data" / "cifar10" / "train").is_dir():
        overrides.append(f"dataset.root={_image_folder(root / 'images')}")
    return root, overrides


def search(ws, *args: str) -> subprocess.CompletedProcess:
    root, overrides = ws
    return subprocess.run([sys.executable, "-m", "rlnas.search", *overrides, *args], cwd=root,
                          capture_output=True, text=True, timeout=900)


def measured_at(cache: Path) -> dict[str, float]:
    """When each architecture's latency was measured (the export's timing of its IR excluded)."""
    items = MeasurementStore(cache / "measurements.sqlite").items("latency")
    return {k["model"]: r["measured_at"] for k, r in items if not k["model"].startswith("ir:")}


def test_search_resume_and_export(ws):
    root, _ = ws
    run = root / "run"
    first = search(ws, "budget=2", "export.enabled=false", f"run_dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "unique evaluations: 2 / budget 2" in first.stdout
    store = MeasurementStore(root / "cache" / "measurements.sqlite")
    assert len(store.records("latency")) == 3 and len(store.records("accuracy")) == 3  # a0 + 2
    before = measured_at(root / "cache")
    assert (run / "agent" / "ppo.zip").exists()

    # resume with a larger budget: the 2 measurements are reused, 1 new one made, then export
    second = search(ws, "budget=3", f"run_dir={run}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "unique evaluations: 3 / budget 3" in second.stdout and "resuming" in (run / "app.log").read_text()
    after = measured_at(root / "cache")
    assert len(after) == 4 and all(after[k] == t for k, t in before.items())  # nothing re-measured
    history = read_history(run / "evaluations.jsonl")
    kinds = [k for k, _, _ in history]
    assert kinds.count("baseline") == 1 and kinds.count("candidate") == 3
    assert len({m.arch for k, _, m in history if k == "candidate"}) == 3

    _check_tensorboard(run / "tb")
    _check_export(run / "export")


def _check_tensorboard(tb: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("search/reward", "search/unique_evaluations", "search/constraint_violations",
                "oracle/cache_hit_rate", "oracle/latency/total_seconds"):
        assert tag in scalars, sorted(scalars)
    assert "search/pareto_front" in acc.Tags()["images"]
    assert any(t.startswith("config/") for t in acc.Tags()["tensors"])  # text summaries


def _check_export(out: Path) -> None:
    import openvino as ov

    from rlnas.export import load_exported

    report = json.loads((out / "report.json").read_text())
    for name in ("arch.json", "model.pt", "model.onnx", "model.xml", "model.bin", "report.md"):
        assert (out / name).is_file(), name
    found, base = report["found"], report["baseline"]
    assert found["ir_size_bytes"] > 0 and found["params"] <= base["params"] and found["latency_ms"] > 0
    assert found["exported_ir_acc_int8"] is not None and found["exported_ir_ratio"] > 0

    model = load_exported(out / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    core = ov.Core()
    onnx_out = core.compile_model(core.read_model(out / "model.onnx"), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())[0]
    np.testing.assert_allclose(onnx_out, ref, rtol=1e-3, atol=1e-3)
    ir = core.compile_model(core.read_model(out / "model.xml"), "CPU")
    logits = ir(x[:1].numpy())[0]
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
    bench = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    res = subprocess.run([bench, "-m", str(out / "model.xml"), "-d", "CPU", "-t", "1", "-hint", "latency"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Throughput" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


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
