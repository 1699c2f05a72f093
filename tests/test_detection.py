"""SSD detection: boxes, loss, COCO mAP, data loaders, the ssd_tiny family and its INT8 export."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from rlnas.api import compose_search
from rlnas.data.detection import DetectionDataset, build_detection_data, read_coco, read_yolo
from rlnas.detection.boxes import (
    PostProcess,
    boxes_per_location,
    decode,
    default_boxes,
    encode,
    match,
    postprocess,
)
from rlnas.detection.evaluate import head_scope
from rlnas.detection.loss import MultiBoxLoss
from rlnas.detection.metrics import DetectionMAP
from rlnas.detection.pipeline import DetectionOptions, DetectionPipeline
from rlnas.detection.train import detection_train_step
from rlnas.errors import ConfigError
from rlnas.oracles.device import DeviceProfile
from rlnas.oracles.irbuild import FP32Scope
from rlnas.oracles.latency import PROTOCOL_VERSION, LatencyOracle
from rlnas.oracles.store import key_hash
from rlnas.rules import FieldError
from rlnas.runsetup import build_latency_oracle, detection_options, load_profile, run_pipeline
from rlnas.spaces import create_supernet
from rlnas.supernet.a0 import A0Error, frozen_teacher
from rlnas.supernet.checkpoint import load_supernet
from rlnas.supernet.finetune import FineTune, FineTuneOptions
from rlnas.supernet.train import compose_config
from rlnas.tasks import get_task, task_pipeline

REPO = Path(__file__).resolve().parent.parent
COCO128 = REPO / "data" / "coco128"


# ----------------------------------------------------------------------------- boxes


def test_default_boxes_count_and_range() -> None:
    ratios = [[2, 3], [2]]
    priors = default_boxes([3, 1], ratios, clip=False)
    assert boxes_per_location(ratios) == [6, 4]
    assert priors.shape == (3 * 3 * 6 + 1 * 4, 4)
    assert torch.allclose(priors[0], torch.tensor([1 / 6, 1 / 6, 0.2, 0.2]))
    # second box of a location: scale sqrt(s_k * s_{k+1}) with s = 0.2, 0.95
    assert priors[1, 2].item() == pytest.approx(math.sqrt(0.2 * 0.95))


def test_encode_decode_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 0.6
    boxes = torch.cat([xy, xy + 0.05 + torch.rand(50, 2, generator=gen) * 0.35], dim=1)
    priors = torch.cat([torch.rand(50, 2, generator=gen), 0.05 + torch.rand(50, 2, generator=gen) * 0.5], dim=1)
    assert torch.allclose(decode(encode(boxes, priors), priors), boxes, atol=1e-5)


def test_match_forces_best_prior_and_background() -> None:
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.3, 0.3, 0.1, 0.1]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    loc_t, labels = match(gt, torch.tensor([7]), priors)
    assert labels.tolist() == [7, 0, 0]
    assert torch.allclose(loc_t[0], torch.zeros(4), atol=1e-5)


def test_nms_hand_made_case() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]])
    probs = torch.tensor([[0.05, 0.90, 0.05], [0.10, 0.60, 0.30], [0.25, 0.05, 0.70]])
    dets = postprocess(torch.zeros(1, 3, 4), probs.log()[None], priors, PostProcess(score_threshold=0.2))[0]
    # prior 1's class-1 box overlaps prior 0's (IoU ~0.9) and is suppressed; its class-2 box is not
    assert dets["labels"].tolist() == [1, 2, 2]
    assert dets["scores"].tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert torch.allclose(dets["boxes"][1], torch.tensor([0.15, 0.15, 0.25, 0.25]))


# ----------------------------------------------------------------------------- loss


def test_multibox_loss_mines_three_negatives_per_positive() -> None:
    priors = default_boxes([4, 2], [[2], [2]])
    loss_fn = MultiBoxLoss(priors)
    targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.45, 0.5]]), "labels": torch.tensor([3])}]
    loc_t, labels = loss_fn.targets(targets)
    num_pos = int((labels > 0).sum())
    assert num_pos >= 1
    ce = torch.rand(labels.shape)
    assert int(loss_fn._hard_negatives(ce, labels > 0).sum()) == 3 * num_pos

    conf = torch.zeros(1, priors.shape[0], 5, requires_grad=True)
    loc = torch.zeros(1, priors.shape[0], 4, requires_grad=True)
    out = loss_fn(loc, conf, targets)
    out["loss"].backward()
    assert out["loss"].item() > 0 and conf.grad is not None
    # predicting the matched targets exactly gives a lower loss
    perfect_conf = torch.full((1, priors.shape[0], 5), -10.0).scatter(2, labels[..., None], 10.0)
    assert loss_fn(loc_t, perfect_conf, targets)["loss"].item() < 1e-3


# ----------------------------------------------------------------------------- metric


def _map(pred_boxes: list[list[float]], gt_boxes: list[list[float]]) -> dict[str, float]:
    metric = DetectionMAP()
    n = len(pred_boxes)
    metric.update([{"boxes": torch.tensor(pred_boxes), "scores": torch.linspace(0.9, 0.5, n),
                    "labels": torch.ones(n, dtype=torch.int64)}],
                  [{"boxes": torch.tensor(gt_boxes), "labels": torch.ones(len(gt_boxes), dtype=torch.int64)}])
    return metric.compute()


def test_map_perfect_predictions() -> None:
    boxes = [[10.0, 10.0, 110.0, 90.0], [200.0, 50.0, 260.0, 150.0]]
    result = _map(boxes, boxes)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)


def test_map_shifted_box_known_iou() -> None:
    # shifted by 20 px: IoU = 80 / 120 = 0.667, a match at IoU thresholds 0.50 ... 0.65 (4 of 10)
    result = _map([[20.0, 0.0, 120.0, 100.0]], [[0.0, 0.0, 100.0, 100.0]])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map75"] == pytest.approx(0.0)
    assert result["map"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- data


def _tiny_yolo(root: Path) -> None:
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 48), (i * 80, 20, 200)).save(root / "images" / "train" / f"{i}.jpg")
    (root / "labels" / "train" / "0.txt").write_text("2 0.5 0.5 0.5 0.25\n0 0.25 0.75 0.1 0.2\n")
    (root / "labels" / "train" / "1.txt").write_text("")


def test_yolo_loader_generated(tmp_path: Path) -> None:
    _tiny_yolo(tmp_path)
    records = read_yolo(tmp_path, "train")
    assert [len(r.labels) for r in records] == [2, 0, 0]
    assert records[0].labels.tolist() == [3, 1]
    assert torch.allclose(records[0].boxes[0], torch.tensor([0.25, 0.375, 0.75, 0.625]))
    image, target = DetectionDataset(records, 32)[0]
    assert image.shape == (3, 32, 32) and target["size"].tolist() == [48, 64]


@pytest.mark.skipif(not COCO128.is_dir(), reason="data/coco128 not extracted (make data)")
def test_yolo_loader_reads_coco128() -> None:
    records = read_yolo(COCO128, "train2017")
    assert len(records) == 128
    first = records[0]
    assert first.path.name == "000000000009.jpg" and first.image_id == 9
    line = (COCO128 / "labels" / "train2017" / "000000000009.txt").read_text().splitlines()[0].split()
    cls, cx, cy, w, h = int(line[0]), *map(float, line[1:])
    assert first.labels[0].item() == cls + 1
    assert torch.allclose(first.boxes[0], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).clamp(0, 1))
    data = build_detection_data({"format": "yolo", "root": str(COCO128), "train_split": "train2017",
                                 "val_split": "train2017", "num_classes": 80}, 32)
    assert data.val is data.calib and data.num_classes == 80


def test_coco_json_loader(tmp_path: Path) -> None:
    Image.new("RGB", (80, 40)).save(tmp_path / "a.jpg")
    ann = {"images": [{"id": 5, "file_name": "a.jpg", "width": 80, "height": 40}],
           "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
           "annotations": [{"image_id": 5, "category_id": 18, "bbox": [8, 4, 40, 20], "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    records, names = read_coco(tmp_path, tmp_path / "ann.json")
    assert names == ["person", "dog"]
    assert records[0].labels.tolist() == [2] and records[0].image_id == 5
    assert torch.allclose(records[0].boxes[0], torch.tensor([0.1, 0.1, 0.6, 0.6]))


# ----------------------------------------------------------------------------- ssd_tiny family


@pytest.fixture(scope="module")
def tiny_ssd():
    from rlnas.spaces import create_supernet
    from rlnas.spaces.ssd import ElasticSSD  # noqa: F401  (registers the SSD families)

    torch.manual_seed(0)
    net = create_supernet("ssd_tiny", num_classes=3)
    net.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            net(torch.randn(4, 3, 32, 32))
    return net.eval()


def _tiny_archs(net) -> list:
    import numpy as np

    return [net.space.max_arch(), net.space.min_arch(), net.space.sample(np.random.default_rng(1))]


def test_ssd_tiny_is_a_detection_family(tiny_ssd) -> None:
    from rlnas.spaces import list_families

    assert {"ssd_tiny", "ssd_mobilenet_v1"} <= set(list_families())
    assert tiny_ssd.task == "detection" and tiny_ssd.num_classes == 3
    assert tiny_ssd.space.max_arch().family == "ssd_tiny"
    loc, conf = tiny_ssd(torch.zeros(1, 3, 32, 32))
    assert loc.shape == (1, tiny_ssd.priors.shape[0], 4) and conf.shape == (1, tiny_ssd.priors.shape[0], 4)


def test_ssd_extract_equals_supernet(tiny_ssd) -> None:
    x = torch.randn(2, 3, 32, 32)
    for arch in _tiny_archs(tiny_ssd):
        tiny_ssd.set_active(arch)
        with torch.no_grad():
            expected = tiny_ssd(x)
            plain = tiny_ssd.extract(arch).eval()
            got = plain(x)
        assert not any(type(m).__name__.startswith("Elastic") for m in plain.modules())
        assert torch.allclose(expected[0], got[0], atol=1e-5) and torch.allclose(expected[1], got[1], atol=1e-5)
        assert torch.equal(plain.priors, tiny_ssd.priors)
        assert tiny_ssd.count_params(arch) == sum(p.numel() for p in plain.parameters())
    tiny_ssd.set_active(tiny_ssd.space.max_arch())


def test_ssd_sort_channels_keeps_the_maximal_function() -> None:
    from rlnas.spaces import create_supernet

    torch.manual_seed(0)
    net = create_supernet("ssd_tiny", num_classes=3).eval()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.sort_channels()
        after = net(x)
    assert torch.allclose(before[0], after[0], atol=1e-4) and torch.allclose(before[1], after[1], atol=1e-4)


def test_ssd_mobilenet_v1_layout() -> None:
    from rlnas.spaces.ssd import SSD_MOBILENET_V1, ElasticSSD

    net = ElasticSSD(SSD_MOBILENET_V1, num_classes=80)
    assert net.feature_sizes() == [19, 10, 5, 3, 2, 1]
    assert net.backbone.max_out_channels() == [512, 1024]
    assert net.priors.shape == (3000, 4) and net.conf_heads[0].out_channels == 6 * 81


def test_int8_detector_runs_in_openvino(tiny_ssd, tmp_path: Path) -> None:
    from rlnas.detection.evaluate import compile_detector, evaluate_detection, export_int8

    _tiny_yolo(tmp_path)
    data = build_detection_data({"format": "yolo", "root": str(tmp_path), "train_split": "train",
                                 "val_split": "train", "num_classes": 3}, 32)
    arch = _tiny_archs(tiny_ssd)[2]
    ir = tmp_path / "det_int8.xml"
    quantized = export_int8(tiny_ssd, arch, data, calib_images=3, ir_path=ir)
    assert ir.exists()
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    compiled = compile_detector(quantized, 32)
    images, _ = next(iter(data.loader("val", 1)))
    out = compiled.create_infer_request().infer({0: images.numpy()})
    loc, conf = (torch.from_numpy(out[compiled.output(n)].copy()) for n in ("loc", "conf"))
    assert loc.shape == (1, 96, 4) and conf.shape == (1, 96, 4)
    dets = postprocess(loc, conf, tiny_ssd.priors)[0]
    assert dets["boxes"].ndim == 2 and dets["boxes"].shape[1] == 4
    assert dets["boxes"].shape[0] == dets["scores"].shape[0] == dets["labels"].shape[0] > 0
    fp32 = evaluate_detection(tiny_ssd, arch, data)
    assert set(fp32) == {"map", "map50", "map75"} and all(-1.0 <= v <= 1.0 for v in fp32.values())


class Killed(Exception):
    """Stands for SIGKILL after a training step."""


def test_detection_training_resumes_and_writes_a_loadable_supernet(tmp_path: Path) -> None:
    _tiny_yolo(tmp_path / "data")
    cfg = compose_config(["model=ssd_tiny", "dataset=coco128", "recipe=tiny", f"output_dir={tmp_path / 'run'}",
                          "threads=1", f"dataset.root={tmp_path / 'data'}", "dataset.train_split=train",
                          "dataset.val_split=train", "dataset.num_classes=3", "recipe.batch_size=2",
                          "recipe.kd_alpha=0.5", "checkpoint.every_steps=1", "eval.recal_images=3",
                          "log.progress=false", "log.tensorboard=false"])

    def kill_at_first_step(trainer) -> None:
        if trainer.progress.global_step == 1:
            raise Killed

    with pytest.raises(Killed):
        get_task(cfg.dataset.task).trainer(cfg, on_step=kill_at_first_step).run()
    path = get_task(cfg.dataset.task).trainer(cfg).run()  # resumes from last.pt
    net, meta = load_supernet(path)
    assert net.task == "detection" and meta["family"] == "ssd_tiny" and meta["completed"]
    assert meta["steps"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2]
    assert {"val_acc_max", "val_map_max", "val_acc_min", "val_map_min"} <= set(meta["final"])
    assert all(math.isfinite(v) for h in meta["history"] for v in h["losses"].values())


def test_detection_supernet_from_a0_starts_as_a0_and_distils_from_it(tiny_ssd, tmp_path: Path) -> None:
    """recipe=ssd_from_a0: the maximal network inherits the trained detector a0 (channels sorted,
    same outputs), and every subnet, the largest included, learns from the frozen a0: at a0's own
    function the distillation loss is zero, where the in-place loss (MultiBox) is not."""
    _tiny_yolo(tmp_path / "data")
    a0 = tiny_ssd.extract(tiny_ssd.space.max_arch()).eval()
    torch.save(a0.state_dict(), tmp_path / "a0.pt")
    overrides = ["model=ssd_tiny", "dataset=coco128", "recipe=ssd_from_a0", "threads=1",
                 f"dataset.root={tmp_path / 'data'}", "dataset.train_split=train", "dataset.val_split=train",
                 "dataset.num_classes=3", "recipe.batch_size=2", "eval.recal_images=3", "log.progress=false",
                 "log.tensorboard=false"]
    cfg = compose_config([*overrides, f"a0.checkpoint={tmp_path / 'a0.pt'}", f"output_dir={tmp_path / 'sn'}"])
    trainer = get_task("detection").trainer(cfg)
    trainer.init_weights()
    trainer.supernet.sort_channels()
    top = trainer.supernet.space.max_arch()
    x, targets = next(iter(trainer.data.train_batches(2, 0)))
    with torch.no_grad():
        for mine, theirs in zip(trainer.supernet.extract(top).eval()(x), a0(x), strict=True):
            assert torch.allclose(mine, theirs, atol=1e-4)

    trainer.supernet.eval()  # a0's BN statistics on both sides: the same function
    recipe = dataclasses.replace(trainer.recipe, kd_alpha=1.0)
    frozen_sgd = torch.optim.SGD(trainer.supernet.parameters(), lr=0.0)

    def max_loss(teacher: nn.Module | None) -> float:
        return detection_train_step(trainer.supernet, x, targets, [("max", top)], recipe, frozen_sgd,
                                    trainer.loss_fn, nullcontext, teacher)["max"]

    assert max_loss(frozen_teacher(a0, channels_last=False)) < 1e-6 < max_loss(None)
    _, meta = load_supernet(trainer.run())
    assert meta["recipe"]["teacher"] == "a0" and meta["a0"]["sha256"] and meta["completed"]
    with pytest.raises(A0Error, match="no a0.checkpoint"):
        get_task("detection").trainer(compose_config([*overrides, f"output_dir={tmp_path / 'none'}"]))


# ----------------------------------------------------------------------------- export


def _label_with_own_detections(model: torch.nn.Module, data, root: Path) -> int:
    """Overwrite the YOLO labels of the training images under ``root`` with ``model``'s FP32
    detections (batched as the mAP evaluation batches), so that its FP32 mAP is about 1 and its
    INT8 mAP measures what quantization changed. Returns the number of boxes written."""
    written, seen = 0, 0
    with torch.no_grad():
        for images, _ in data.loader("val", 16):
            for det in postprocess(*model(images), model.priors):
                record = data.val.records[seen]
                xy, wh = (det["boxes"][:, :2] + det["boxes"][:, 2:]) / 2, det["boxes"][:, 2:] - det["boxes"][:, :2]
                rows = [f"{int(c) - 1} {x:.7f} {y:.7f} {w:.7f} {h:.7f}"
                        for c, (x, y), (w, h) in zip(det["labels"], xy.tolist(), wh.tolist(), strict=True)]
                (root / "labels" / "train" / f"{record.path.stem}.txt").write_text("\n".join(rows) + "\n")
                written, seen = written + len(rows), seen + 1
    return written


class _FixedLatency:
    """Latency oracle stand-in: a0 takes 2 ms, any other architecture 1 ms (ratio 0.5)."""

    def __init__(self, a0) -> None:
        self.a0 = a0

    def measure(self, model, input_shape, precision="int8", model_key=None):
        from types import SimpleNamespace

        ms = 2.0 if self.a0.to_json() in model_key else 1.0
        return SimpleNamespace(status="ok", latency_ms=ms, ref_latency_ms=2.0, ratio=ms / 2.0,
                               ir_path=None, ir_size_bytes=None, cached=False)


def test_export_of_a_detection_run(tiny_ssd, tmp_path: Path) -> None:
    """A run of ssd_tiny on 3 self-labelled images exported: the IR is the INT8 network alone and
    scores what the oracle measured; model.pt, ONNX and the IR agree; the report speaks mAP."""

    import numpy as np
    import openvino as ov
    from hydra import compose, initialize_config_dir

    import rlnas
    from rlnas.export import export_run, load_exported
    from rlnas.oracles.accuracy import AccuracyOracle
    from rlnas.runsetup import RunSetup
    from rlnas.search.evaluator import Evaluator

    supernet, root, run = copy.deepcopy(tiny_ssd), tmp_path / "data", tmp_path / "run"
    _tiny_yolo(root)
    dataset = {"format": "yolo", "root": str(root), "train_split": "train", "val_split": "train", "num_classes": 3}

    def oracle() -> AccuracyOracle:
        data = build_detection_data(dataset, 32)
        return AccuracyOracle(supernet, data, None, "test", recal_images=3, calib_images=3, threads=1,
                              pipeline=get_task("detection").pipeline)

    a0, arch = supernet.space.max_arch(), _tiny_archs(supernet)[2]
    labelling = oracle()
    assert _label_with_own_detections(labelling.prepare(arch), labelling.data, root) > 10
    accuracy = oracle()  # reads the new labels
    evaluator = Evaluator(supernet, _FixedLatency(a0), accuracy, (1, 3, 32, 32), tau=0.0,
                          history_path=run / "evaluations.jsonl")
    measured = evaluator.evaluate(arch)
    assert measured.feasible and measured.acc_fp32 > 0.95  # its own detections (a few clamped to zero area)
    assert 0.2 < measured.acc_int8 <= 1.0

    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=ssd_tiny", "dataset=coco128", "device=host", "tau=0.0",
                                                       "export.calib_images=3", "finalists.k=0"])
    meta = {"family": "ssd_tiny", "kwargs": {"num_classes": 3}, "path": None}
    setup = RunSetup(cfg, supernet, meta, accuracy.data, None, None, accuracy, (1, 3, 32, 32), "", {})
    summary = export_run(cfg, run, setup=setup)
    out = Path(summary["out_dir"])

    # report: mAP, re-measured on the saved IR by the oracle's pipeline = what the search measured
    report = json.loads((out / "report.json").read_text())
    found = report["found"]
    assert report["metric"] == "mAP@.5" and report["setup"]["task"] == "detection"
    assert found["arch_json"] == arch.to_json() and found["acc_fp32"] == measured.acc_fp32
    assert set(found["exported_ir_int8"]) == {"map", "map50", "map75"}
    assert found["exported_ir_acc_int8"] == found["exported_ir_int8"]["map50"]
    assert found["exported_ir_acc_int8"] == pytest.approx(measured.acc_int8, abs=1e-6)
    assert 0.0 < found["exported_ir_int8"]["map"] <= found["exported_ir_acc_int8"]
    markdown = (out / "report.md").read_text()
    assert "INT8 mAP@.5" in markdown and "top-1" not in markdown and "postprocess" in markdown

    # model.pt: the recalibrated network; ONNX: the same function with a dynamic batch
    model = load_exported(out / "model.pt")
    assert torch.equal(model.priors, supernet.priors)
    x = torch.stack([labelling.data.val[i][0] for i in range(3)])
    with torch.no_grad():
        ref = model(x)
        prepared = accuracy.prepare(arch)(x)
    for got, want in zip(ref, prepared, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    core = ov.Core()
    onnx = core.compile_model(core.read_model(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = onnx(x.numpy())
    for name, want in zip(("loc", "conf"), ref, strict=True):
        np.testing.assert_allclose(result[onnx.output(name)], want.numpy(), rtol=1e-3, atol=1e-3)

    # IR: INT8, static [1, 3, 32, 32], raw loc/conf only (no decoding or NMS in the graph)
    ir_model = core.read_model(out / "model.xml")
    assert list(ir_model.input(0).get_shape()) == [1, 3, 32, 32]
    ops = {op.get_type_name() for op in ir_model.get_ops()}
    assert "FakeQuantize" in ops and not ops & {"NonMaxSuppression", "NMSRotated", "DetectionOutput"}
    ir = core.compile_model(ir_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out1 = ir(x[:1].numpy())
    loc, conf = (out1[ir.output(name)] for name in ("loc", "conf"))
    assert loc.shape == (1, 96, 4) and conf.shape == (1, 96, 4)
    for got, want in ((loc, ref[0][:1]), (conf, ref[1][:1])):
        assert not np.allclose(got, want.numpy(), atol=1e-6)  # quantized, not the FP32 graph
        assert np.corrcoef(got.ravel(), want.numpy().ravel())[0, 1] > 0.9
    dets = postprocess(torch.from_numpy(loc), torch.from_numpy(conf), model.priors)[0]
    assert len(dets["boxes"]) > 0 and dets["labels"].min() >= 1


def test_detection_finetune_distils_from_a0(tiny_ssd, tmp_path: Path) -> None:
    """export.finetune_epochs on a detector: the trainer's distillation (class scores and matched
    offsets) drives the steps of the one fine-tuning loop (FineTune, resumable)."""
    _tiny_yolo(tmp_path)
    data = build_detection_data({"format": "yolo", "root": str(tmp_path), "train_split": "train",
                                 "val_split": "train", "num_classes": 3}, 32)
    teacher = tiny_ssd.extract(tiny_ssd.space.max_arch()).eval()
    student = tiny_ssd.extract(tiny_ssd.space.min_arch()).eval()
    loss_fn = get_task("detection").distill(student, FineTuneOptions(kd_alpha=1.0, kd_temperature=1.0))
    x, targets = next(iter(data.loader("calib", 3)))
    with torch.no_grad():
        assert loss_fn(student(x), student(x), targets).item() == pytest.approx(0.0, abs=1e-6)
    loss_fn(student(x), teacher(x), targets).backward()
    for heads in (student.loc_heads, student.conf_heads):  # offsets of matched priors, class scores
        assert any(h.weight.grad.abs().sum() > 0 for h in heads)
    before = copy.deepcopy(student.state_dict())
    options = FineTuneOptions(epochs=1, lr=1e-4, batch_size=3, progress=False)
    FineTune(student, teacher, data, tmp_path / "ft", options, "det", loss_fn=loss_fn).run()
    assert (tmp_path / "ft" / "finetune.pt").is_file()
    after = student.state_dict()
    assert not student.training and not torch.equal(after["conf_heads.0.weight"], before["conf_heads.0.weight"])
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- heads kept in FP32: one setting


#: test_latency_keys' pinned oracle: its INT8 key's hash and IR name, computed before heads could be kept in FP32
PINNED_SHAPE = (1, 3, 8, 8)
PINNED_KEY_HASH = "b7f39696c416f9f8fc94533ff635480ad1eba2c97d0db2caf806b3a0fc439220"
PINNED_INT8_IR = "int8-b2e13128e4f0829361a7b356.xml"


def _pinned_latency(root: Path, fp32_scope: FP32Scope | None) -> LatencyOracle:
    """test_latency_keys' pinned oracle (fixed profile, reference and library versions) with ``fp32_scope``."""
    oracle = LatencyOracle(DeviceProfile("pinned", None, "f32", threads=2), cache_dir=root,
                           reference=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), lock_path=None,
                           check_host=False, fp32_scope=fp32_scope)
    oracle.versions = {"openvino": "OV", "nncf": "NNCF", "torch": "T"}
    return oracle


def _search_config(tmp_path: Path, *overrides: str):
    """The composed, checked ``rlnas-search`` config of an ssd_tiny run on scenes (host profile)."""
    return compose_search("model=ssd_tiny", "dataset=scenes", "dataset.num_classes=3", "device=host",
                          f"cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}", *overrides)


def test_the_detection_node_sets_the_pipeline_of_both_oracles(tmp_path: Path) -> None:
    """``detection.fp32_heads`` (default: none) gives the run a DetectionPipeline keeping those heads,
    whose FP32 scope is the latency oracle's (head names, resolved per model by head_scope); without
    it, and for classification, the run keeps the registered pipelines and no scope."""
    cfg = _search_config(tmp_path, "detection.fp32_heads=[conf,loc]")
    assert detection_options(cfg) == DetectionOptions(("conf", "loc"))
    pipeline = run_pipeline(cfg, "detection")
    assert isinstance(pipeline, DetectionPipeline) and pipeline.fp32_heads == ("loc", "conf")
    assert pipeline.fp32_scope() == FP32Scope("fp32_heads", ("loc", "conf"), head_scope)
    assert pipeline.key() == {"per_image": "matches", "fp32_heads": ["loc", "conf"]}
    plain = _search_config(tmp_path)
    assert list(plain.detection.fp32_heads) == [] and detection_options(plain) == DetectionOptions()
    assert run_pipeline(plain, "detection") is get_task("detection").pipeline
    assert run_pipeline(plain, "detection").fp32_scope() is None
    classification = compose_search("experiment=tiny", f"run_dir={tmp_path / 'run'}")
    assert run_pipeline(classification, "classification") is get_task("classification").pipeline
    assert run_pipeline(classification, "classification").fp32_scope() is None


def test_latency_keys_carry_the_heads_kept_in_fp32_and_nothing_else_changes(tmp_path: Path) -> None:
    """The latency oracle's INT8 cache key and IR path carry the heads kept in FP32 (the run
    pipeline's scope); without any (classification, a detector quantized whole) they are the keys
    from before (test_latency_keys' pinned hash and IR name), and the FP32/FP16 IRs never change."""
    key = _pinned_latency(tmp_path, task_pipeline("classification").fp32_scope()).cache_key(
        "net:abc", PINNED_SHAPE, "int8")
    assert key_hash({**key, "cpu": "CPU"}) == PINNED_KEY_HASH
    whole = _pinned_latency(tmp_path, task_pipeline("detection", DetectionOptions()).fp32_scope())
    assert whole.fp32_scope is None and whole.cache_key("net:abc", PINNED_SHAPE, "int8") == key
    assert whole.ir_path("net:abc", PINNED_SHAPE, "int8").name == PINNED_INT8_IR
    kept = _pinned_latency(tmp_path, task_pipeline("detection", DetectionOptions(("loc",))).fp32_scope())
    kept_key = kept.cache_key("net:abc", PINNED_SHAPE, "int8")
    assert kept_key == {**key, "fp32_heads": ["loc"]} and key_hash({**kept_key, "cpu": "CPU"}) != PINNED_KEY_HASH
    assert kept.ir_path("net:abc", PINNED_SHAPE, "int8").name != PINNED_INT8_IR
    for precision in ("fp32", "fp16", "bf16"):  # no quantization, nothing kept
        assert kept.cache_key("net:abc", PINNED_SHAPE, precision) == whole.cache_key("net:abc", PINNED_SHAPE, precision)
        assert kept.ir_path("net:abc", PINNED_SHAPE, precision) == whole.ir_path("net:abc", PINNED_SHAPE, precision)


def _setup_latency(cfg, supernet, root: Path) -> LatencyOracle:
    """The latency oracle :func:`rlnas.runsetup.build_latency_oracle` builds for ``cfg`` (no a0:
    the maximal subnet is the reference; nothing is built or timed)."""
    meta = {"family": supernet.space.family, "kwargs": {"num_classes": supernet.num_classes}}
    return build_latency_oracle(cfg, supernet, meta, root / "measurements.sqlite", load_profile(cfg))


def _key_as_before(latency: LatencyOracle, supernet, model_key: str) -> dict:
    """The INT8 cache key of ``model_key`` at 32 px formed as it was before heads could be kept in FP32."""
    family = {"family": supernet.space.family, "kwargs": {"num_classes": supernet.num_classes}}
    reference = f"{json.dumps(family, sort_keys=True)}:{supernet.space.max_arch().to_json()}"
    return {"model": model_key, "input_shape": [1, 3, 32, 32], "precision": "int8", "profile": latency.profile.key(),
            "cpu": latency.timing_cpu(), "openvino": latency.versions["openvino"], "nncf": latency.versions["nncf"],
            "protocol": PROTOCOL_VERSION, "reference": {"model": reference}}


def test_the_run_setup_s_latency_key_changes_with_fp32_heads_only(tmp_path: Path) -> None:
    """The latency oracle the run setup builds from a composed config: ssd_tiny's INT8 key gains
    ``fp32_heads`` with the key set (and its IR another path), and is otherwise the key formed as
    before, as resnet_tiny's (classification) is."""
    torch.manual_seed(0)
    ssd, resnet = create_supernet("ssd_tiny", num_classes=3), create_supernet("resnet_tiny", num_classes=10)
    shape = (1, 3, 32, 32)
    plain = _setup_latency(_search_config(tmp_path), ssd, tmp_path)
    kept = _setup_latency(_search_config(tmp_path, "detection.fp32_heads=[loc]"), ssd, tmp_path)
    classifier = _setup_latency(compose_search("experiment=tiny", "device=host", f"cache_dir={tmp_path / 'cache'}",
                                               f"run_dir={tmp_path / 'run'}"), resnet, tmp_path)
    try:
        assert plain.fp32_scope is None and classifier.fp32_scope is None
        assert kept.fp32_scope == FP32Scope("fp32_heads", ("loc",), head_scope)
        assert plain.cache_key("m", shape, "int8") == _key_as_before(plain, ssd, "m")
        assert classifier.cache_key("m", shape, "int8") == _key_as_before(classifier, resnet, "m")
        assert kept.cache_key("m", shape, "int8") == {**_key_as_before(kept, ssd, "m"), "fp32_heads": ["loc"]}
        assert kept.ir_path("m", shape, "int8") != plain.ir_path("m", shape, "int8")
    finally:
        for latency in (plain, kept, classifier):
            latency.close()


def test_an_unknown_head_group_is_a_config_error_naming_the_valid_ones(tmp_path: Path) -> None:
    """A head group that is not one is refused up front in the project's one-line style (the
    key, the value, the valid groups), in Python too; heads kept in FP32 for a classifier are
    refused by the run setup before anything is trained."""
    with pytest.raises(ConfigError, match=r"^detection\.fp32_heads=\['cls'\] is not valid: detection\.fp32_heads "
                                          r"must be a list of loc, conf$"):
        _search_config(tmp_path, "detection.fp32_heads=[cls]")
    with pytest.raises(FieldError, match=r"^fp32_heads=\('box',\) is not valid: fp32_heads must be a list of loc, conf$"):
        DetectionOptions(("box",))
    with pytest.raises(ConfigError, match=r"unknown head groups \['cls'\]; give some of loc, conf"):
        DetectionPipeline(["loc", "cls"])
    classification = compose_search("experiment=tiny", "detection.fp32_heads=[loc]", f"run_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match=r"^detection\.fp32_heads=\['loc'\]: the classification task has no "
                                          r"detection heads"):
        run_pipeline(classification, "classification")
