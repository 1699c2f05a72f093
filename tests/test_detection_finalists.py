"""The finalists stage of a detection search (issue 21): per-image records of a detector (its
matches, packed small and exact), the bound test of the task (mAP@.5's paired bootstrap), the
detection fine-tuning of a finalist from a0 (resumable), and a tiny detection search end to end
through finalists, confirmation and export. ssd_tiny at 32 px on tiny generated scenes."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from helpers import head_convolutions
from omegaconf import OmegaConf

import rlnas
from rlnas.api import compose_search, search
from rlnas.data.detection import build_detection_data
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.data.scenes import SceneSpec, annotation_path, build_scenes
from rlnas.detection.boxes import postprocess
from rlnas.finalists import FinalistsConfig, judge, per_image_of, save_int8_ir
from rlnas.runsetup import RunSetup, build_setup
from rlnas.spaces import create_supernet
from rlnas.stats import (
    BootstrapBoundTest,
    bound_test,
    detection_map,
    map_bound_test,
    map_interval,
    match_detections,
    pack_bits,
)
from rlnas.supernet.checkpoint import save_supernet
from rlnas.supernet.finetune import FineTune
from rlnas.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import seed_row  # noqa: E402

COUNTS = {"train": 8, "val": 6, "holdout": 6}
SPEC = SceneSpec(size=64, min_side=16, max_side=48)
CLASSES = 3
#: the search's latency timing: short
TIMING = {"warmup_iters": 2, "block_iters": 3, "block_skip": 1, "min_rounds": 2, "min_iters": 6, "min_time_s": 0.05,
          "max_time_s": 5.0}


class Killed(Exception):
    """Stands for SIGKILL after a fine-tuning step."""


def _dataset(root: Path) -> dict:
    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "scenes.yaml")
    cfg.root, cfg.num_classes = str(root), CLASSES
    return OmegaConf.to_container(cfg, resolve=True)


def _label_with_own_detections(model: torch.nn.Module, data, root: Path, split: str, boxes: int = 12) -> int:
    """Replace ``split``'s boxes by ``model``'s ``boxes`` most confident FP32 detections over its
    scenes (an untrained ssd_tiny finds nothing real): a0's FP32 mAP@.5 is then high there, and
    other networks' is not. Returns the number of boxes written."""
    path = annotation_path(root, split)
    coco = json.loads(path.read_text())
    found = []
    with torch.no_grad():
        for (images, targets), img in zip(data.loader(split, 1), coco["images"], strict=True):
            assert int(targets[0]["image_id"]) == img["id"]
            det = postprocess(*model(images), model.priors)[0]
            for box, label, score in zip((det["boxes"] * SPEC.size).tolist(), det["labels"].tolist(),
                                         det["scores"].tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                if w > 1 and h > 1:
                    found.append((score, img["id"], label, [box[0], box[1], w, h]))
    found = sorted(found, key=lambda f: -f[0])[:boxes]
    coco["annotations"] = [{"id": k + 1, "image_id": image_id, "category_id": label, "bbox": bbox, "iscrowd": 0,
                            "area": bbox[2] * bbox[3]} for k, (_, image_id, label, bbox) in enumerate(found)]
    path.write_text(json.dumps(coco))
    return len(found)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Tiny scenes (64 px, 3 classes), an ssd_tiny supernet with non-trivial BN statistics saved as
    a supernet checkpoint, its maximal network saved as a0.pt, and the validation and held-out
    scenes labelled with a0's own detections."""
    root = tmp_path_factory.mktemp("detection_finalists")
    photos = write_synthetic_imagefolder(root / "photos", {"train": 4, "val": 4}, num_classes=CLASSES, size=32)
    build_scenes(photos, root / "scenes", COUNTS, SPEC, seed=0, workers=1, progress=False)
    torch.manual_seed(0)
    supernet = create_supernet("ssd_tiny", num_classes=CLASSES, resolution=32)
    supernet.train()
    with torch.no_grad():
        for _ in range(3):
            supernet(torch.randn(4, 3, 32, 32))
    supernet.eval()
    save_supernet(root / "supernet.pt", supernet, {"family": "ssd_tiny",
                                                    "kwargs": {"resolution": 32, "num_classes": CLASSES}})
    a0 = supernet.extract(supernet.space.max_arch()).eval()
    torch.save(a0.state_dict(), root / "a0.pt")
    data = build_detection_data(_dataset(root / "scenes"), 32)
    for split in ("val", "holdout"):
        assert _label_with_own_detections(a0, data, root / "scenes", split) >= 6
    return {"root": root, "scenes": root / "scenes", "supernet": supernet, "a0": a0}


# ----------------------------------------------------------------------------- judge: the task's test


def _detections(rng: np.random.Generator, targets: list[dict], noise: float, extra: int = 4) -> list[dict]:
    """Every object found with its box jittered by ``noise`` px (score falling with the error) and
    ``extra`` random false positives per image."""
    preds = []
    for t in targets:
        gt = t["boxes"].numpy()
        err = rng.normal(0, noise, gt.shape)
        fp = rng.uniform(0, 200, (extra, 2))
        boxes = np.concatenate([gt + err, np.concatenate([fp, fp + 30], axis=1)])
        scores = np.concatenate([1 / (1 + np.abs(err).mean(1)), rng.uniform(0, 0.5, extra)])
        labels = t["labels"].tolist() + rng.integers(1, CLASSES + 1, extra).tolist()
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                      "scores": torch.tensor(scores, dtype=torch.float32)})
    return preds


def _targets(rng: np.random.Generator, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xy = rng.uniform(0, 200, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 80, (k, 2))], axis=1)
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                    "labels": torch.tensor(rng.integers(1, CLASSES + 1, k))})
    return out


def test_judge_uses_the_tasks_bound_test() -> None:
    """A detection row (packed matches, as accuracy_row keeps them) is judged by map_bound_test with
    alpha split over the finalists on validation images and alone on held-out ones, its held-out
    interval the bootstrap one; a classification row by bound_test and Wilson's, as before."""
    pipeline = get_task("detection").pipeline
    rng = np.random.default_rng(0)
    truth = {"val": _targets(rng, 80), "holdout": _targets(rng, 60)}
    a0_matches = {s: match_detections(_detections(rng, t, 4.0), t) for s, t in truth.items()}
    int8_matches = {s: match_detections(_detections(rng, t, 5.0), t) for s, t in truth.items()}
    images = {s: len(t) for s, t in truth.items()}
    a0_row = {"task": "detection", "images": images,
              "matches": {f"{s}_fp32": pipeline.pack_per_image(m) for s, m in a0_matches.items()}}
    row = {"task": "detection", "images": images,
           "matches": {f"{s}_int8": pipeline.pack_per_image(m) for s, m in int8_matches.items()}}
    json.dumps(row)  # what finalists.json holds
    judge(row, a0_row, 0.9, 0.9, 3)
    val = map_bound_test(int8_matches["val"], a0_matches["val"], 0.9, 0.9, 3)
    held = map_bound_test(int8_matches["holdout"], a0_matches["holdout"], 0.9, 0.9, 1)
    assert isinstance(val, BootstrapBoundTest)
    assert row["val_bound"] == asdict(val) | {"holds": val.holds}
    assert row["holdout_bound"] == asdict(held) | {"holds": held.holds}
    assert row["val_bound"]["comparisons"] == 3 and row["val_bound"]["resamples"] == 1000
    assert row["holdout_int8_interval"] == list(map_interval(int8_matches["holdout"]))
    low, high = row["holdout_int8_interval"]
    assert low < detection_map(int8_matches["holdout"]) < high
    unpacked = per_image_of(row, "val", "int8")
    assert detection_map(unpacked) == detection_map(int8_matches["val"])

    a0_correct = rng.random(200) < 0.9
    correct = a0_correct & (rng.random(200) > 0.01)
    images = {"val": 200, "holdout": 200}
    classifier = {"images": images, "bits": {"val_int8": pack_bits(correct), "holdout_int8": pack_bits(correct)}}
    judge(classifier, {"images": images, "bits": {"val_fp32": pack_bits(a0_correct),
                                                  "holdout_fp32": pack_bits(a0_correct)}}, 0.99, 0.9, 2)
    top1 = bound_test(correct, a0_correct, 0.99, 0.9, 2)
    assert classifier["val_bound"] == asdict(top1) | {"holds": top1.holds} and "resamples" not in classifier["val_bound"]
    with pytest.raises(ValueError, match="judged against"):
        judge(row, classifier, 0.9, 0.9, 1)
    del row["matches"]["holdout_int8"]
    with pytest.raises(ValueError, match="no per-image record of holdout int8"):
        judge(row, a0_row, 0.9, 0.9, 1)


# ----------------------------------------------------------------------------- fine-tuning a finalist


def _finetune(student, teacher, data, out: Path, on_step=None):
    options = FinalistsConfig(epochs=2.0, batch_size=4, checkpoint_every=1, lr=0.01, progress=False).tuning()
    student = copy.deepcopy(student)
    loss = get_task("detection").distill(student, options)
    return FineTune(student, teacher, data, out, options, "f0", seed=3, on_step=on_step, loss_fn=loss).run()


def test_detection_finalist_finetune_mixes_multibox_and_resumes(world: dict, tmp_path: Path) -> None:
    """A detection finalist's fine-tuning: kd_alpha x the detection trainer's distillation from the
    frozen a0 + (1 - kd_alpha) x MultiBox; a run killed after a step resumes to the weights of an
    uninterrupted one."""
    supernet, a0 = world["supernet"], world["a0"]
    data = build_detection_data(_dataset(world["scenes"]), 32)
    student = supernet.extract(supernet.space.min_arch()).eval()
    x, targets = next(iter(data.loader("calib", 4)))
    distill = get_task("detection").distill
    options = FinalistsConfig().tuning()
    with torch.no_grad():
        out, taught = student(x), a0(x)
        pure = distill(student, FinalistsConfig(kd_alpha=1.0).tuning())(out, taught, targets)
        multibox = distill(student, FinalistsConfig(kd_alpha=0.0).tuning())(out, taught, targets)
        mixed = distill(student, options)(out, taught, targets)
    assert options.kd_alpha == 0.8 and pure > 0 and multibox > 0
    assert mixed.item() == pytest.approx(0.8 * pure.item() + 0.2 * multibox.item(), rel=1e-5)

    reference = _finetune(student, a0, data, tmp_path / "whole").state_dict()
    assert any(not torch.equal(reference[k], v) for k, v in student.state_dict().items())  # it trained

    def kill(step: int) -> None:
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        _finetune(student, a0, data, tmp_path / "killed", on_step=kill)
    assert (tmp_path / "killed" / "finetune.pt").is_file()
    resumed = _finetune(student, a0, data, tmp_path / "killed").state_dict()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key


# ----------------------------------------------------------------------------- heads kept in FP32



def _setup(world: dict, cache: Path, *extra: str) -> RunSetup:
    """The run setup of an ssd_tiny search on the world's scenes, supernet and a0, from the composed
    and checked config (as rlnas-search builds it; nothing is trained)."""
    root = world["root"]
    return build_setup(compose_search(
        "model=ssd_tiny", "dataset=scenes", f"dataset.root={world['scenes']}", f"dataset.num_classes={CLASSES}",
        "device=host", "threads=1", f"a0.checkpoint={root / 'a0.pt'}", f"supernet.checkpoint={root / 'supernet.pt'}",
        f"cache_dir={cache}", f"run_dir={cache.parent / 'run'}", "accuracy.recal_images=4", "accuracy.calib_images=4",
        "accuracy.batch_size=4", "latency.quantization.random_subset_size=2",
        *[f"latency.timing.{k}={v}" for k, v in TIMING.items()], *extra))


def _int8_irs(setup: RunSetup, tmp_path: Path, tag: str) -> tuple[dict[str, Path], dict]:
    """The minimal subnet timed by the setup's latency oracle (a0 interleaved): the IRs that built,
    the candidate's and a0's (the reference), and the IR the finalists (and the export) save of
    a0; the measurement's cache key."""
    arch = setup.supernet.space.min_arch()
    result = setup.latency.measure(lambda: setup.supernet.extract(arch).eval(), setup.input_shape,
                                   model_key=f"{setup.model_id}:min")
    assert result.ok and not result.cached, result.reason
    irs = {"timed candidate": Path(result.ir_path),
           "timed a0": setup.latency.ir_path(f"{setup.model_id}:{setup.a0.key}", setup.input_shape, "int8"),
           "saved a0": save_int8_ir(setup, setup.a0.model, tmp_path / tag / "a0.xml", 4)}
    return irs, setup.latency.cache_key(result.model_key, setup.input_shape, "int8")


@pytest.mark.slow
def test_fp32_heads_are_the_same_in_the_accuracy_and_the_latency_oracle(world: dict, tmp_path: Path) -> None:
    """``detection.fp32_heads=[conf,loc]`` in the composed config: the run setup gives both accuracy
    oracles (validation, held-out) a DetectionPipeline keeping both heads in FP32 and the latency
    oracle the same FP32 scope, so every INT8 IR it times (the candidate's and a0's, its reference)
    leaves the 12 head convolutions unquantized, like the IR the finalists and the export save; the
    accuracy and latency cache keys and the run log's context say so. Without the key every head is
    quantized everywhere, and the same store does not answer one with the other's measurement."""
    cache, measured = tmp_path / "cache", {}
    for kept, extra in ((True, ["detection.fp32_heads=[conf,loc]"]), (False, [])):
        setup = _setup(world, cache, *extra)
        try:
            heads = ("loc", "conf") if kept else ()
            assert setup.accuracy.pipeline.fp32_heads == heads and setup.holdout.pipeline.fp32_heads == heads
            assert setup.latency.fp32_scope == setup.accuracy.pipeline.fp32_scope()
            assert (setup.latency.fp32_scope is not None) is kept
            arch = setup.supernet.space.min_arch()
            assert setup.accuracy.cache_key(arch).get("fp32_heads") == (list(heads) or None)
            assert setup.context.get("fp32_heads") == (list(heads) or None)
            irs, measured[kept] = _int8_irs(setup, tmp_path, str(kept))
            for name, xml in irs.items():
                convs = head_convolutions(ov.Core().read_model(xml))
                assert len(convs) == 12, (name, sorted(convs))
                assert all(fp32 is kept for fp32 in convs.values()), (kept, name, convs)
        finally:
            setup.close()
    assert measured[True] == {**measured[False], "fp32_heads": ["loc", "conf"]}


# ----------------------------------------------------------------------------- the search, end to end


def _search(world: dict, run: Path, cache: Path, *extra: str) -> dict:
    """rlnas-search (in process) on ssd_tiny: random agent, budget 2, finalists.k=2 fine-tuned one
    epoch (two steps), confirmed in two short passes, exported."""
    root = world["root"]
    confirm = {"min_rounds": 3, "min_time_s": 0.2, "max_time_s": 5.0}
    return search(
        "model=ssd_tiny", "dataset=scenes", f"dataset.root={world['scenes']}", f"dataset.num_classes={CLASSES}",
        "device=host", "agent=random", "budget=2", "threads=1", f"a0.checkpoint={root / 'a0.pt'}",
        f"supernet.checkpoint={root / 'supernet.pt'}", f"cache_dir={cache}", f"run_dir={run}",
        "accuracy.recal_images=4", "accuracy.calib_images=4", "accuracy.batch_size=4",
        "latency.quantization.random_subset_size=2", *[f"latency.timing.{k}={v}" for k, v in TIMING.items()],
        "finalists.k=2", "finalists.margin=1.0", "finalists.epochs=1", "finalists.batch_size=4",
        "finalists.checkpoint_every=1", "finalists.calib_images=4", "finalists.confirm_passes=2",
        *[f"finalists.confirm_timing.{k}={v}" for k, v in confirm.items()],
        "export.calib_images=4", "logging.progress=false", "logging.tensorboard=false", *extra)


@pytest.fixture(scope="module")
def detection_run(world: dict, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The tiny detection search's run directory, its measurement store and its summary."""
    tmp = tmp_path_factory.mktemp("detection_search")
    run, cache = tmp / "run", tmp / "cache"
    return run, cache, _search(world, run, cache)


@pytest.mark.slow
def test_detection_search_with_finalists_end_to_end(detection_run: tuple[Path, Path, dict]) -> None:
    """rlnas-search on ssd_tiny (random agent, budget 2, finalists.k=2): both finalists are
    fine-tuned from a0 with the detection distillation, scored in mAP with their matches on
    validation and held-out scenes, judged by mAP@.5's paired bootstrap on both splits, confirmed
    alongside a0 in two passes; the export ships the chosen finalist's scored and confirmed IR."""
    import openvino as ov

    from rlnas.export import load_exported

    run, _, summary = detection_run
    finals = json.loads((run / "finalists" / "finalists.json").read_text())
    rows = finals["finalists"]
    assert len(rows) == 2 and finals["task"] == "detection" and finals["metric"] == "mAP@.5"
    assert "bootstrap" in finals["bound_test"]
    a0_row = finals["a0"]
    assert a0_row["task"] == "detection" and a0_row["images"] == {"val": 6, "holdout": 6}
    assert a0_row["val_fp32"] > 0.5  # the scenes are labelled with a0's own detections
    pipeline = get_task("detection").pipeline
    for name, row in [("a0", a0_row)] + [(f["name"], f["after"]) for f in rows]:
        assert set(row["matches"]) == {"val_fp32", "val_int8", "holdout_fp32", "holdout_int8"}, name
        for key, packed in row["matches"].items():  # the records are the scored networks' detections
            split, precision = key.split("_")
            matches = pipeline.unpack_per_image(packed, 6)
            assert detection_map(matches) == pytest.approx(row[f"{split}_{precision}"], abs=1e-6), (name, key)
    for f in rows:
        after = f["after"]
        assert (run / "finalists" / f["name"] / "finetune.pt").is_file()  # fine-tuned, resumable
        assert all(0 <= after[k] <= 1 for k in ("val_fp32", "val_int8", "holdout_fp32", "holdout_int8"))
        assert after["val_bound"]["comparisons"] == 2 and after["holdout_bound"]["comparisons"] == 1
        assert after["val_bound"]["resamples"] == after["holdout_bound"]["resamples"] == 1000
        assert after["val_bound"]["images"] == after["holdout_bound"]["images"] == 6
        low, high = after["holdout_int8_interval"]
        assert low <= after["holdout_int8"] <= high or low == high
        assert f["confirmed_ratio"] > 0 and len(f["confirmed_passes"]) == 2
    conf = finals["confirmation"]
    assert conf["reference"] == "a0" and conf["passes"] == 2 and set(conf["ratio"]) == {"a0", "f0", "f1"}

    report = summary["export"]
    out = Path(report["out_dir"])
    chosen = next(f for f in rows if f["name"] == finals["chosen"])
    assert report["metric"] == "mAP@.5" and report["found"]["confirmed_ratio"] == chosen["confirmed_ratio"]
    assert report["found"]["acc_int8"] == chosen["after"]["val_int8"]
    assert report["found"]["exported_ir_acc_int8"] == pytest.approx(chosen["after"]["val_int8"], abs=1e-6)
    assert any(n.startswith(f"finalist {chosen['name']} of 2") for n in report["notes"])
    saved = (out / "report.json").read_text()  # the records stay in finalists.json only
    assert '"matches"' not in saved and json.loads(saved)["finalists"]["chosen"] == finals["chosen"]
    markdown = (out / "report.md").read_text()
    assert "paired bootstrap" in markdown and "Finalists" in markdown
    model = load_exported(out / "model.pt")  # the fine-tuned finalist's weights
    tuned = torch.load(chosen["weights_path"], weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tuned.items())
    core = ov.Core()
    exported = core.read_model(out / "model.xml")
    assert [o.get_any_name() for o in exported.outputs] == ["loc", "conf"]
    assert list(exported.input(0).get_shape()) == [1, 3, 32, 32]
    x = torch.randn(1, 3, 32, 32).numpy()
    ours, theirs = (core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                    for m in (exported, core.read_model(chosen["ir_path"])))
    for name in ("loc", "conf"):  # the IR that was scored and confirmed (compiled again: float rounding)
        np.testing.assert_allclose(ours(x)[ours.output(name)], theirs(x)[theirs.output(name)], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_detection_finalists_quantized_with_accuracy_control(world: dict, detection_run: tuple[Path, Path, dict],
                                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The run's finalists again (a copy of the run and its store), quantized by NNCF's accuracy
    control on the validation scenes: each row's INT8 mAP and INT8 matches are that model's (the
    plain quantization's kept as ptq_*), it is judged on them, and the export ships its IR; the
    fine-tuning resumes from its checkpoints."""
    run, cache, _ = detection_run
    shutil.copytree(run, tmp_path / "run")
    shutil.copytree(cache, tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="rlnas.supernet.finetune"):
        summary = _search(world, tmp_path / "run", tmp_path / "cache", "finalists.quantization=accuracy_control",
                          "finalists.max_drop=0.5")
    assert "fine-tune f0 resumed at step 2 of 2" in caplog.text and "fine-tune f1 resumed at step 2 of 2" in caplog.text
    finals = json.loads((tmp_path / "run" / "finalists" / "finalists.json").read_text())
    assert finals["config"]["quantization"] == "accuracy_control" and len(finals["finalists"]) == 2
    pipeline = get_task("detection").pipeline
    for f in finals["finalists"]:
        after = f["after"]
        assert {"ptq_val_int8", "ptq_holdout_int8"} <= set(after) and "bits" not in after
        for split in ("val", "holdout"):
            matches = pipeline.unpack_per_image(after["matches"][f"{split}_int8"], 6)
            assert detection_map(matches) == pytest.approx(after[f"{split}_int8"], abs=1e-6), (f["name"], split)
        assert after["val_bound"]["resamples"] == 1000 and after["holdout_bound"]["comparisons"] == 1
    chosen = next(f for f in finals["finalists"] if f["name"] == finals["chosen"])
    found = summary["export"]["found"]
    assert found["exported_ir_acc_int8"] == pytest.approx(chosen["after"]["val_int8"], abs=1e-6)


@pytest.mark.slow
def test_seed_row_of_a_detection_run(detection_run: tuple[Path, Path, dict], tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    """experiments/seed_row.py on the tiny detection run: a0 as an FP32 IR, an FP16 IR and INT8 and
    the exported network, scored on the held-out scenes and timed in the same rounds; each speed-up
    is the per-round quotient's median; decoding and NMS are timed apart."""
    run, _, _ = detection_run
    argv = [str(run), "--out", str(tmp_path), "--passes", "1", "--postprocess-images", "4",
            *[a for t in ("min_rounds=3", "min_time_s=0", "max_time_s=5") for a in ("--timing", t)]]
    assert seed_row.main(argv) == 0
    row = json.loads((tmp_path / "seed_row.json").read_text())
    nets = row["networks"]
    assert list(nets) == ["a0_fp32", "a0_fp16", "a0", "exported"] and row["metric"] == "mAP@.5"
    assert nets["a0"]["ir"] == str(run / "finalists" / "a0" / "model.xml")  # the finalists' a0 IR
    assert nets["a0_fp16"]["ir_bytes"] < nets["a0_fp32"]["ir_bytes"]  # FP16-compressed weights
    quantized = {name: "FakeQuantize" in {op.get_type_name() for op in ov.Core().read_model(net["ir"]).get_ops()}
                 for name, net in nets.items()}
    assert quantized == {"a0_fp32": False, "a0_fp16": False, "a0": True, "exported": True}
    for name, net in nets.items():
        assert set(net["holdout"]) == {"map50", "map", "map75"} and 0 <= net["holdout"]["map"] <= net["holdout"]["map50"]
        assert net["latency_ms"] > 0, name
    # the FP32 IR scores what a0 scores in PyTorch (the scenes are labelled with a0's detections)
    assert nets["a0_fp32"]["holdout"]["map50"] == pytest.approx(row["a0_pytorch_fp32"]["holdout"], abs=1e-6)
    p10 = row["confirmation"]["runs"][0]["round_p10"]
    for name, s in row["speedup_of_exported_over"].items():
        quotients = [t / ref for t, ref in zip(p10["exported"], p10[name], strict=True)]
        assert s["speedup"] == pytest.approx(1 / statistics.median(quotients))
        assert s["ci"][0] <= s["speedup"] <= s["ci"][1]
    assert row["postprocess"]["images"] == 4 and row["postprocess"]["median_ms"] > 0
    printed = capsys.readouterr().out
    assert "a0, FP16 IR" in printed and "decoding + NMS" in printed and "mAP@[.5:.95] held-out" in printed
    # again: the float IRs are kept (their bytes key the stored timings), so the confirmation is read back
    written = {name: Path(nets[name]["ir"]).stat().st_mtime_ns for name in ("a0_fp32", "a0_fp16")}
    assert seed_row.main(argv) == 0
    again = json.loads((tmp_path / "seed_row.json").read_text())
    assert written == {name: Path(nets[name]["ir"]).stat().st_mtime_ns for name in written}
    assert again["confirmation"]["cached"] == [True] and again["speedup_of_exported_over"] == row["speedup_of_exported_over"]
