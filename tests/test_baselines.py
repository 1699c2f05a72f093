"""experiments/baselines.py: torchvision baselines (ResNet-18, MobileNetV2) scored, quantized and
timed beside a real (tiny) search's a0 and finalist, in one confirmation; a rerun reuses the
stored confirmation."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import openvino
import pytest
import torch
import torchvision
from helpers import search_data_overrides, tiny_a0

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import baselines  # noqa: E402
import seed_row  # noqa: E402

SHORT = ["--timing", "min_rounds=3", "--timing", "min_time_s=0", "--timing", "max_time_s=5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny search (random agent, budget 3) with one finalist (not fine-tuned), exported."""
    root = tmp_path_factory.mktemp("baselines")
    overrides = ["experiment=tiny", "device=host", "logging.progress=false", "logging.tensorboard=false",
                 "accuracy.fp32_images=0", "agent=random", "budget=3", "finalists.k=1", "finalists.epochs=0",
                 "finalists.confirm_passes=1", f"a0.checkpoint={tiny_a0(root / 'a0.pt')}",
                 f"supernet.dir={root / 'supernets'}", f"cache_dir={root / 'cache'}", f"run_dir={root / 'run'}",
                 *search_data_overrides(root)]
    proc = subprocess.run([str(Path(sys.executable).parent / "rlnas-search"), *overrides], cwd=root,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Untrained torchvision ResNet-18 and MobileNetV2 state dicts for 10 classes; MobileNetV2's
    with the ``a0.json`` that experiments/train_a0.py writes beside it."""
    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    resnet = root / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), resnet)
    (root / "mnv2").mkdir()
    mobilenet = root / "mnv2" / "a0.pt"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), mobilenet)
    (root / "mnv2" / "a0.json").write_text(json.dumps({"family": "mobilenet_v2", "resolution": 32, "epochs": 1,
                                                       "model_kwargs": {"stem": "imagenet"}}))
    return {"resnet18": resnet, "mobilenet_v2": mobilenet}


@pytest.mark.slow
def test_baselines_are_timed_beside_a0_and_the_finalists(run: Path, trained: dict[str, Path], tmp_path: Path,
                                                         capsys) -> None:
    out = tmp_path / "out"
    argv = ["--run", str(run), "--baseline", str(trained["resnet18"]), "--baseline", str(trained["mobilenet_v2"]),
            "--passes", "1", *SHORT, "--out", str(out)]
    assert baselines.main(argv) == 0
    first = json.loads((out / "baselines.json").read_text())
    rows = {r["name"]: r for r in first["rows"]}
    assert list(rows) == ["a0", "f0", "resnet18", "mobilenet_v2"]
    assert rows["f0"]["kind"] == "finalist (chosen)" and rows["resnet18"]["kind"] == "baseline"
    assert rows["a0"]["ratio"] == pytest.approx(1.0)
    for r in rows.values():
        low, high = r["holdout_int8_interval"]
        assert 0 <= low <= r["holdout_int8"] <= high <= 1 and r["holdout_images"] > 0
        assert r["latency_ms"] > 0 and r["ratio"] > 0 and r["speedup"] == pytest.approx(1 / r["ratio"])
        assert Path(r["ir"]).is_file()
    for name in ("resnet18", "mobilenet_v2"):
        assert Path(rows[name]["ir"]) == out / name / "model.xml"
        assert rows[name]["holdout_bound"]["images"] == rows[name]["holdout_images"]
    assert rows["mobilenet_v2"]["kwargs"] == {"stem": "imagenet"} and rows["mobilenet_v2"]["trained"]["epochs"] == 1
    assert rows["resnet18"]["kwargs"] == {"stem": "imagenet"}  # conf/model/resnet18.yaml's
    assert first["confirmation"]["passes"] == 1 and first["confirmation"]["cached"] == [False]
    assert set(first["confirmation"]["ratio"]) == set(rows)
    assert first["summary"]["profile"]["name"] == "host"
    printed = capsys.readouterr().out
    assert (out / "baselines.png").stat().st_size > 1000
    assert "INT8 held-out top-1 [95% CI]" in printed and "mobilenet_v2" in printed and "ratio to a0" in printed

    # the same again: scores and the confirmation come from the run's store, the IRs are kept
    written = {name: (out / name / "model.xml").stat().st_mtime_ns for name in ("resnet18", "mobilenet_v2")}
    assert baselines.main(argv) == 0
    assert written == {name: (out / name / "model.xml").stat().st_mtime_ns for name in written}
    again = json.loads((out / "baselines.json").read_text())
    assert again["confirmation"]["cached"] == [True]
    assert [r["ratio"] for r in again["rows"]] == [r["ratio"] for r in first["rows"]]

    # the same networks against ResNet-18: its FP32 scores are the bound's, its time the ratios' unit
    assert baselines.main([*argv, "--reference", "resnet18"]) == 0
    versus = json.loads((out / "baselines.json").read_text())
    by_name = {r["name"]: r for r in versus["rows"]}
    assert versus["summary"]["reference"] == "resnet18" and versus["confirmation"]["cached"] == [True]
    assert by_name["resnet18"]["ratio"] == pytest.approx(1.0)
    p10 = versus["confirmation"]["runs"][0]["round_p10"]  # each model's p10 time in each round, ms
    for name, r in by_name.items():  # round by round against ResNet-18, both models' spread in the CI
        per_round = [t / ref for t, ref in zip(p10[name], p10["resnet18"], strict=True)]
        assert len(per_round) == first["confirmation"]["rounds"]
        assert r["ratio"] == pytest.approx(statistics.median(per_round))
        low, high = r["ratio_ci"]
        assert low <= r["ratio"] <= high and (high > low or len(set(per_round)) == 1)
        assert r["latency_ms"] == rows[name]["latency_ms"]
        assert r["holdout_bound"]["margin"] == pytest.approx(
            r["holdout_int8"] - versus["summary"]["tau"] * rows["resnet18"]["holdout_fp32"]
        )
    assert "ratio to resnet18" in capsys.readouterr().out
    assert baselines.main([*argv, "--reference", "vgg11"]) == 2
    assert "--reference 'vgg11': not a0 nor a baseline (resnet18, mobilenet_v2)" in capsys.readouterr().err


@pytest.mark.slow
def test_against_a0_the_finalists_keep_their_runs_bound_tests(run: Path) -> None:
    finals = baselines.load_finalists(run)
    a0_row, finalist_row = finals["a0"], finals["finalists"][0]["after"]
    baseline_row = {k: v for k, v in finalist_row.items() if not k.endswith("_bound")}  # scored, not judged
    finalist_row["val_bound"] = "the run's test"
    exported_row = {"holdout_int8": 0.5, "images": {"holdout": 1}, "bits": {}}  # what score_ir gives
    entries = [{"name": "a0", "kind": "a0", "row": a0_row}, {"name": "f0", "kind": "finalist", "row": finalist_row},
               {"name": "mine", "kind": "baseline", "row": baseline_row},
               {"name": "exported", "kind": "exported", "row": exported_row}]
    tau = float(finals["tau"])
    baselines.judge_entries(entries, "a0", tau, 0.9)
    assert finalist_row["val_bound"] == "the run's test"
    held_int8, held_fp32 = baseline_row["holdout_int8"], a0_row["holdout_fp32"]
    assert baseline_row["holdout_bound"]["margin"] == pytest.approx(held_int8 - tau * held_fp32)

    baselines.judge_entries(entries, "mine", tau, 0.9)  # another reference: every row against its FP32
    assert finalist_row["val_bound"]["margin"] == pytest.approx(
        finalist_row["val_int8"] - tau * baseline_row["val_fp32"])
    assert a0_row["holdout_bound"]["margin"] == pytest.approx(a0_row["holdout_int8"] - tau * baseline_row["holdout_fp32"])
    assert "holdout_bound" not in exported_row


@pytest.mark.slow
def test_a_baseline_of_another_resolution_is_one_line(run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a0.json").write_text(json.dumps({"family": "mobilenet_v2", "resolution": 128}))
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), tmp_path / "a0.pt")
    assert baselines.main(["--run", str(run), "--baseline", str(tmp_path / "a0.pt")]) == 2
    assert "trained at 128 px, the run at 32 px" in capsys.readouterr().err


def test_a_baseline_names_its_family(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    found = baselines.parse_baseline(str(path))  # a torchvision ResNet tells from its tensors
    assert (found.name, found.family, found.kwargs, found.record) == ("resnet18", "resnet18", {"stem": "imagenet"}, {})
    named = baselines.unique_names([found, baselines.parse_baseline(f"resnet18={path}")])
    assert [b.name for b in named] == ["resnet18", "resnet18-2"]
    with pytest.raises(baselines.BaselineError, match="unknown family 'vgg11'"):
        baselines.parse_baseline(f"vgg11={path}")
    with pytest.raises(baselines.BaselineError, match="does not exist"):
        baselines.parse_baseline(str(tmp_path / "absent.pt"))


@pytest.mark.slow
def test_seed_row_of_a_classification_run(run: Path, tmp_path: Path, capsys) -> None:
    """experiments/seed_row.py on the tiny search: held-out top-1 of a0 as FP32 IR (= a0 in PyTorch),
    FP16 IR and INT8 and of the export; speed-ups from the same rounds; the export's throughput."""
    assert seed_row.main([str(run), "--out", str(tmp_path), "--passes", "1", *SHORT]) == 0
    row = json.loads((tmp_path / "seed_row.json").read_text())
    nets = row["networks"]
    assert row["metric"] == "top-1" and row["postprocess"] is None  # a classifier: nothing after the IR
    assert nets["a0_fp32"]["holdout"]["top1"] == pytest.approx(row["a0_pytorch_fp32"]["holdout"], abs=1e-6)
    assert nets["a0_fp16"]["ir_bytes"] < nets["a0_fp32"]["ir_bytes"]
    assert nets["a0"]["ir"] == str(run / "finalists" / "a0" / "model.xml")
    ops = {name: {op.get_type_name() for op in openvino.Core().read_model(net["ir"]).get_ops()} for name, net in nets.items()}
    assert "FakeQuantize" not in ops["a0_fp32"] | ops["a0_fp16"] and "FakeQuantize" in ops["a0"] & ops["exported"]
    p10 = row["confirmation"]["runs"][0]["round_p10"]
    for name, s in row["speedup_of_exported_over"].items():
        quotients = [t / ref for t, ref in zip(p10["exported"], p10[name], strict=True)]
        assert s["speedup"] == pytest.approx(1 / statistics.median(quotients))
    report = json.loads((run / "export" / "report.json").read_text())
    assert row["throughput"]["speedup_over_a0_int8"] == pytest.approx(1 / report["throughput"]["ratio"]["exported"])
    printed = capsys.readouterr().out
    assert "top-1 held-out" in printed and "throughput mode" in printed and "decoding" not in printed


def test_another_reference_is_compared_round_by_round_in_every_pass() -> None:
    """relative_to: per pass the median over rounds of the model's p10 over the reference's and its
    bootstrap CI; over the passes their median and the CIs' envelope; a0-ratios are not divided."""
    passes = [{"round_p10": {"a0": [4.0, 4.4, 4.0, 4.2], "r18": [2.0, 2.0, 2.4, 2.1], "f0": [1.0, 1.2, 1.0, 1.05]}},
              {"round_p10": {"a0": [4.0, 4.0, 4.0], "r18": [2.0, 2.2, 1.8], "f0": [1.1, 1.1, 0.9]}},
              {"round_p10": {"a0": [4.1, 4.0, 4.0], "r18": [2.0, 2.0, 2.0], "f0": [1.0, 1.0, 1.0]}}]
    confirmation = {"reference": "a0", "ratio": {"a0": 1.0, "r18": 0.5, "f0": 0.25}, "runs": passes}
    versus = baselines.relative_to(confirmation, "r18")
    per_pass = [statistics.median([f / r for f, r in zip(p["round_p10"]["f0"], p["round_p10"]["r18"], strict=True)])
                for p in passes]
    assert versus["ratio_by_pass"]["f0"] == pytest.approx(per_pass)  # 0.5, 0.5, 0.5 (pass 2: 0.55, 0.5, 0.5)
    assert versus["ratio"]["f0"] == pytest.approx(statistics.median(per_pass))
    assert versus["ratio"]["r18"] == 1.0 and versus["ratio_ci"]["r18"] == [1.0, 1.0]
    low, high = versus["ratio_ci"]["f0"]
    assert low <= min(per_pass) and high >= max(per_pass) and high > low  # the passes' envelope
    assert versus["ratio"]["a0"] == pytest.approx(statistics.median(
        [statistics.median([a / r for a, r in zip(p["round_p10"]["a0"], p["round_p10"]["r18"], strict=True)])
         for p in passes]))
    assert versus["reference"] == "r18" and versus["timed_with"] == "a0" and versus["reference_ratio_to_timed_with"] == 0.5
    with pytest.raises(baselines.BaselineError, match="per-round times"):
        baselines.relative_to({**confirmation, "runs": [{"round_p10": {}}]}, "r18")
