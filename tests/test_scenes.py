"""Detection scenes from classification photos (rlnas/data/scenes.py, experiments/make_detection_scenes.py):
deterministic builds, exact boxes, the occlusion cap, disjoint splits, and the set loads into the
detection data and runs through a tiny SSD."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from helpers import head_convolutions
from omegaconf import OmegaConf
from PIL import Image

import rlnas
from rlnas.data.detection import build_detection_data
from rlnas.data.scenes import SPLITS, SceneSpec, annotation_path, build_scenes, ellipse_alpha, tangent_pixels
from rlnas.data.spec import DatasetError
from rlnas.detection.boxes import postprocess
from rlnas.detection.evaluate import validation_items
from rlnas.detection.loss import MultiBoxLoss
from rlnas.detection.pipeline import DetectionPipeline
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.spaces import create_supernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import make_detection_scenes  # noqa: E402

CLASSES = ("n001", "n002", "n003")
PER_CLASS = 4
COUNTS = {"train": 6, "val": 4, "holdout": 4}
#: small scenes crowded enough that objects overlap; 1 px feather: the colours stay checkable
SPEC = SceneSpec(size=64, min_side=12, max_side=40, feather=0.0, image_format="png")
TOL = 8  # a pixel "is" a colour within this many levels in every channel


def _colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` random colours, every two at least 60 levels apart in some channel."""
    rng = np.random.default_rng(0)
    chosen: list[np.ndarray] = []
    while len(chosen) < n:
        c = rng.integers(0, 256, 3)
        if all(np.abs(c - o).max() >= 60 for o in chosen):
            chosen.append(c)
    return [tuple(int(v) for v in c) for c in chosen]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int, int]]]:
    """A tiny ImageFolder (train/ and val/, 3 classes, 4 photos each) of solid-colour photos, and
    each photo's colour by its path relative to the root."""
    root = tmp_path_factory.mktemp("photos")
    colours = iter(_colours(2 * len(CLASSES) * PER_CLASS))
    colour_of = {}
    for folder in ("train", "val"):
        for name in CLASSES:
            (root / folder / name).mkdir(parents=True)
            for k in range(PER_CLASS):
                rel = f"{folder}/{name}/{name}_{k}.png"
                colour_of[rel] = next(colours)
                Image.new("RGB", (40 + 8 * k, 32), colour_of[rel]).save(root / rel)
    return root, colour_of


@pytest.fixture(scope="module")
def scenes(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    build_scenes(source[0], out, COUNTS, SPEC, seed=3, workers=1, progress=False)
    return out


def _load(out: Path, split: str) -> dict:
    return json.loads(annotation_path(out, split).read_text())


def _per_image(data: dict) -> list[tuple[dict, list[dict]]]:
    return [(img, [a for a in data["annotations"] if a["image_id"] == img["id"]]) for img in data["images"]]


def _inside(box: list[int], size: int) -> np.ndarray:
    """The ellipse inscribed in ``box`` on a ``size`` canvas: pixel centres strictly inside."""
    x0, y0, w, h = box
    cols, rows = np.arange(size) + 0.5 - x0 - w / 2, np.arange(size) + 0.5 - y0 - h / 2
    return (2 * cols[None, :] / w) ** 2 + (2 * rows[:, None] / h) ** 2 < 1


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("w,h", [(2, 2), (3, 7), (40, 40), (41, 120), (200, 77)])
def test_mask_alpha_is_above_half_exactly_on_the_box_ellipse(w: int, h: int) -> None:
    feather = SceneSpec().feather_px(w, h)
    alpha, m = ellipse_alpha(w, h, feather)
    above = alpha > 0.5
    rows, cols = np.nonzero(above)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (m, m + h, m, m + w)
    assert np.array_equal(above[m:m + h, m:m + w], _inside([0, 0, w, h], max(w, h))[:h, :w])
    for side in tangent_pixels(m, m, w, h):  # where the ellipse touches the box
        assert all(above[r, c] for r, c in side)
    border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    assert not border.any()  # the padding holds all of the halo
    if feather > 1:  # feathered: a soft halo outside the box, soft values inside near the edge
        outside = alpha.copy()
        outside[m:m + h, m:m + w] = 0
        assert ((outside > 0.05) & (outside < 0.5)).any()
        assert ((alpha > 0.5) & (alpha < 0.95)).any()


# ----------------------------------------------------------------------------- the build


def test_build_is_deterministic_whatever_the_workers(source, tmp_path: Path) -> None:
    """The command (one worker) and the API (two workers) write the same bytes; a rerun keeps
    the files, a forced one rewrites the same bytes."""
    root, _ = source
    args = ["--source", str(root), "--out", str(tmp_path / "a"), "--size", "64", "--min-side", "12",
            "--max-side", "40", "--seed", "5", "--workers", "1", "--no-progress"]
    args += [x for split, n in COUNTS.items() for x in (f"--{split}", str(n))]
    assert make_detection_scenes.main(args) == 0
    spec = SceneSpec(size=64, min_side=12, max_side=40)
    build_scenes(root, tmp_path / "b", COUNTS, spec, seed=5, workers=2, progress=False)

    def contents(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a, b = contents(tmp_path / "a"), contents(tmp_path / "b")
    assert sorted(a) == sorted(b) and a == b
    assert sum(name.endswith(".jpg") for name in a) == sum(COUNTS.values())
    with Image.open(tmp_path / "a" / "train" / "000000.jpg") as img:
        assert img.format == "JPEG" and img.size == (64, 64)

    times = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*") if p.is_file()}
    build_scenes(root, tmp_path / "a", COUNTS, spec, seed=5, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in times} == times  # up to date: nothing rewritten
    build_scenes(root, tmp_path / "a", COUNTS, spec, seed=5, workers=1, progress=False, force=True)
    assert contents(tmp_path / "a") == a
    build_scenes(root, tmp_path / "c", COUNTS, spec, seed=6, workers=1, progress=False)
    assert contents(tmp_path / "c") != a


def test_boxes_are_exact(source, scenes: Path) -> None:
    """On solid-colour photos the pixels of an object's colour span exactly its box: each side of
    the box has one (the object touches it) and no pixel outside the box has its colour."""
    _, colour_of = source
    checked = 0
    for split in SPLITS:
        data = _load(scenes, split)
        for img, anns in _per_image(data):
            pixels = np.asarray(Image.open(scenes / split / img["file_name"]).convert("RGB")).astype(int)
            bg = colour_of[img["rlnas_background"]["source"]]
            assert (np.abs(pixels - bg).max(-1) <= TOL).any()  # the background shows somewhere
            for ann in anns:
                x0, y0, w, h = ann["bbox"]
                assert min(x0, y0) >= 0 and max(x0 + w, y0 + h) <= SPEC.size
                assert SPEC.min_side - 1 <= (w * h) ** 0.5 <= SPEC.max_side + 1
                mine = np.abs(pixels - colour_of[ann["rlnas_source"]]).max(-1) <= TOL
                rows, cols = np.nonzero(mine)
                assert [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()] == ann["bbox"]
                checked += 1
    assert checked >= 2 * sum(COUNTS.values())


def test_occlusion_is_capped(scenes: Path) -> None:
    """Recomputed from the boxes alone (the mask is the ellipse inscribed in the box, annotations
    are in paste order): later objects cover at most max_occlusion of each mask, as recorded."""
    fractions = []
    for split in SPLITS:
        for _, anns in _per_image(_load(scenes, split)):
            masks = [_inside(a["bbox"], SPEC.size) for a in anns]
            for i, ann in enumerate(anns):
                later = np.zeros_like(masks[i])
                for m in masks[i + 1:]:
                    later |= m
                fraction = (masks[i] & later).sum() / masks[i].sum()
                assert fraction <= SPEC.max_occlusion
                assert ann["rlnas_occluded"] == pytest.approx(fraction, abs=1e-4)
                assert ann["area"] == int((masks[i] & ~later).sum())
                fractions.append(fraction)
    assert max(fractions) > 0.05  # the scenes are crowded enough to test the cap


def test_splits_use_disjoint_photos(source, scenes: Path) -> None:
    """Train scenes use train-folder photos only; validation and held-out scenes disjoint halves
    of the val folder; no photo twice in a scene; image ids unique across the splits."""
    used: dict[str, set[str]] = {}
    ids: list[int] = []
    for split in SPLITS:
        data = _load(scenes, split)
        assert [c["name"] for c in data["categories"]] == list(CLASSES)
        assert [c["id"] for c in data["categories"]] == [1, 2, 3]
        assert len(data["images"]) == COUNTS[split]
        assert data["info"]["rlnas_build"]["split"] == split
        used[split] = set()
        for img, anns in _per_image(data):
            photos = [img["rlnas_background"]["source"]] + [a["rlnas_source"] for a in anns]
            assert len(set(photos)) == len(photos) and 1 <= len(anns) <= SPEC.max_objects
            for a in anns:
                assert CLASSES[a["category_id"] - 1] == a["rlnas_source"].split("/")[1]
            used[split] |= set(photos)
            ids.append(img["id"])
    assert all(p.startswith("train/") for p in used["train"])
    assert all(p.startswith("val/") for p in used["val"] | used["holdout"])
    assert not used["val"] & used["holdout"]
    assert len(ids) == len(set(ids))


def test_scenes_load_into_the_detection_data_and_a_tiny_ssd(scenes: Path) -> None:
    """dataset=scenes pointed at the tiny set: COCO format through build_detection_data; a batch
    runs through ssd_tiny and its loss."""
    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "scenes.yaml")
    cfg.root = str(scenes)
    cfg.num_classes = len(CLASSES)
    data = build_detection_data(cfg, 32)
    assert data.class_names == list(CLASSES) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.holdout)) == (COUNTS["train"], COUNTS["val"], COUNTS["holdout"])
    assert data.val is not data.calib and data.eval_set("holdout") is data.holdout
    held = _load(scenes, "holdout")
    assert [r.image_id for r in data.holdout.records] == [img["id"] for img in held["images"]]
    assert data.identity()["holdout_images"] == COUNTS["holdout"]
    assert next(iter(data.loader("holdout", 2)))[0].shape == (2, 3, 32, 32)
    without = build_detection_data({**OmegaConf.to_container(cfg, resolve=True), "holdout_annotations": None}, 32)
    with pytest.raises(DatasetError, match="no held-out images"):
        without.eval_set("holdout")
    val = _load(scenes, "val")
    assert [r.image_id for r in data.val.records] == [img["id"] for img in val["images"]]
    images, targets = next(iter(data.loader("val", 4)))
    assert images.shape == (4, 3, 32, 32)
    assert all(t["size"].tolist() == [SPEC.size, SPEC.size] and ((t["labels"] >= 1) & (t["labels"] <= 3)).all()
               for t in targets)
    first = val["annotations"][0]
    x0, y0, w, h = first["bbox"]
    assert torch.allclose(data.val.records[0].boxes[0], torch.tensor([x0, y0, x0 + w, y0 + h]) / SPEC.size)
    torch.manual_seed(0)
    ssd = create_supernet("ssd_tiny", num_classes=data.num_classes).eval()
    with torch.no_grad():
        loc, conf = ssd(images)
    assert loc.shape == (4, ssd.priors.shape[0], 4) and conf.shape == (4, ssd.priors.shape[0], 4)
    train_images, train_targets = next(data.train_batches(2, epoch=0))
    loss = MultiBoxLoss(ssd.priors)(*ssd(train_images), train_targets)["loss"]
    assert torch.isfinite(loss) and loss.item() > 0


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="make data"):
        build_scenes(tmp_path / "nowhere", tmp_path / "out", COUNTS, SPEC, progress=False)
    with pytest.raises(ValueError, match="min_objects"):
        SceneSpec(min_objects=0)


def test_a_broken_photo_is_one_line_naming_it(source, tmp_path: Path) -> None:
    """The bounded-input check of the classification data covers the scene builder's photos too."""
    root = tmp_path / "photos"
    shutil.copytree(source[0], root)
    broken = sorted((root / "train").rglob("*.png"))[0]
    broken.write_bytes(b"")
    with pytest.raises(DatasetError, match=f"{broken.name}.*0 bytes"):
        build_scenes(root, tmp_path / "out", COUNTS, SPEC, workers=1, progress=False)


# ----------------------------------------------------------------------------- accuracy control


class _RecordingPipeline(DetectionPipeline):
    """The detection pipeline, recording the image ids its validation function is given."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def validation_metric(self, compiled, items, priors) -> float:
        items = list(items)
        self.seen |= {int(t["image_id"]) for _, targets in items for t in targets}
        return super().validation_metric(compiled, items, priors)


def _label_val_with_own_detections(model: torch.nn.Module, data, out: Path, boxes: int = 20) -> int:
    """Replace the validation scenes' boxes by ``model``'s ``boxes`` most confident FP32 detections
    over all of them (a random tiny SSD finds nothing real), so that its FP32 mAP@.5 is high and
    quantization visibly costs mAP. Returns the number of boxes written."""
    path = annotation_path(out, "val")
    coco = json.loads(path.read_text())
    found = []
    with torch.no_grad():
        for (images, targets), img in zip(data.loader("val", 1), coco["images"], strict=True):
            assert int(targets[0]["image_id"]) == img["id"]
            det = postprocess(*model(images), model.priors)[0]
            for box, label, score in zip((det["boxes"] * SPEC.size).tolist(), det["labels"].tolist(),
                                         det["scores"].tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                if w > 0.5 and h > 0.5:
                    found.append((score, img["id"], label, [box[0], box[1], w, h]))
    found = sorted(found, key=lambda f: -f[0])[:boxes]
    coco["annotations"] = [{"id": k + 1, "image_id": image_id, "category_id": label, "bbox": bbox, "iscrowd": 0}
                           for k, (_, image_id, label, bbox) in enumerate(found)]
    path.write_text(json.dumps(coco))
    return len(found)


def test_detection_accuracy_control_reverts_quantizers_judged_on_validation_scenes(scenes: Path,
                                                                                   tmp_path: Path) -> None:
    """DetectionPipeline.quantize_with_accuracy_control: NNCF's validation function is mAP@.5 on
    the oracle's validation scenes only (the same number as the oracle's INT8 score); allowing
    half of PTQ's drop reverts quantizers, a lenient max_drop keeps plain PTQ's."""
    out = tmp_path / "scenes"
    shutil.copytree(scenes, out)
    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "scenes.yaml")
    cfg.root, cfg.num_classes = str(out), len(CLASSES)
    torch.manual_seed(0)
    supernet = create_supernet("ssd_tiny", num_classes=len(CLASSES))
    supernet.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            supernet(torch.randn(4, 3, 32, 32))
    supernet.eval()

    def oracle(pipeline: DetectionPipeline) -> AccuracyOracle:
        return AccuracyOracle(supernet, build_detection_data(cfg, 32), None, "test", recal_images=3,
                              calib_images=3, threads=1, pipeline=pipeline)

    labelling = oracle(DetectionPipeline())
    model = labelling.prepare(supernet.space.min_arch())  # the fewest quantizers: the quickest to restore
    assert _label_val_with_own_detections(model, labelling.data, out) == 20
    pipeline = _RecordingPipeline()
    acc = oracle(pipeline)
    val_ids = {r.image_id for r in acc.data.val.records}
    assert not val_ids & {r.image_id for r in acc.data.calib.records}
    assert len(acc.data.holdout.records) == COUNTS["holdout"] and not val_ids & {r.image_id for r in acc.data.holdout.records}

    def quantizers(ov_model) -> int:
        return sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())

    plain = acc.quantize(model)
    fp32, int8 = acc.fp32_accuracy(model), acc.int8_accuracy(acc.compile(plain))
    assert fp32 - int8 > 0.1  # quantization costs mAP: there is something to restore
    items = validation_items(acc.data, acc.split, acc.eval_count)
    compiled = ov.Core().compile_model(plain, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert pipeline.validation_metric(compiled, items, supernet.priors) == pytest.approx(int8)

    pipeline.seen.clear()
    strict = acc.quantize_with_accuracy_control(model, max_drop=(fp32 - int8) / 2)
    assert pipeline.seen == val_ids  # judged on every validation scene and nothing else
    assert quantizers(strict) < quantizers(plain)
    assert acc.int8_accuracy(acc.compile(strict)) >= int8
    lenient = acc.quantize_with_accuracy_control(model, max_drop=0.99)
    assert quantizers(lenient) == quantizers(plain)  # nothing to restore



def test_detection_heads_can_stay_in_fp32(scenes: Path) -> None:
    """DetectionPipeline(fp32_heads=...): the search's PTQ and accuracy control leave the named head
    convolutions in floating point by an nncf.IgnoredScope (the rest stays quantized) and the
    accuracy cache key says so; the default pipeline quantizes every head and keeps its key."""
    cfg = OmegaConf.load(rlnas.CONF_DIR / "dataset" / "scenes.yaml")
    cfg.root, cfg.num_classes = str(scenes), len(CLASSES)
    torch.manual_seed(0)
    supernet = create_supernet("ssd_tiny", num_classes=len(CLASSES)).eval()
    data = build_detection_data(cfg, 32)

    def oracle(pipeline: DetectionPipeline) -> AccuracyOracle:
        return AccuracyOracle(supernet, data, None, "test", recal_images=0, calib_images=3, threads=1,
                              pipeline=pipeline, lock_path=None)

    plain, loc, both = oracle(DetectionPipeline()), oracle(DetectionPipeline(["loc"])), \
        oracle(DetectionPipeline(("conf", "loc")))
    arch = supernet.space.min_arch()
    model = plain.prepare(arch)
    assert "fp32_heads" not in plain.cache_key(arch)
    assert loc.cache_key(arch)["fp32_heads"] == ["loc"] and both.cache_key(arch)["fp32_heads"] == ["loc", "conf"]
    heads = head_convolutions(plain.quantize(model))
    assert len(heads) == 12 and not any(heads.values())  # 6 feature maps x (loc, conf), all INT8
    heads = head_convolutions(loc.quantize(model))
    assert all(fp32 == ("loc_heads" in name) for name, fp32 in heads.items())

    def quantizers(ov_model) -> int:
        return sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())

    controlled = both.quantize_with_accuracy_control(model, max_drop=0.99)
    assert all(head_convolutions(controlled).values())
    assert 0 < quantizers(controlled) == quantizers(both.quantize(model))  # the backbone stays INT8
    with pytest.raises(ValueError, match="unknown head groups"):
        DetectionPipeline(["cls"])
