"""Detection data: YOLO-format folders (e.g. coco128) and COCO-format JSON, resized to the model input.

Every sample is ``(image, target)``: ``image`` a normalised float ``(3, S, S)`` tensor (plain resize,
as SSD does), ``target`` a dict with ``boxes`` (``(n, 4)`` ``xyxy`` in [0, 1]), ``labels`` (int64
in 1..C; 0 is the detector's background), ``iscrowd``, ``size`` (original ``(h, w)``) and
``image_id``. Batches come from :func:`detection_collate`: stacked images and a list of targets.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as TF

from rlnas.data.spec import DatasetError, EvalSplits, resolve_path
from rlnas.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

Target = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects: ``boxes`` ``xyxy`` normalised to [0, 1], ``labels`` in 1..C."""

    path: Path
    image_id: int
    boxes: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


def read_yolo(root: str | Path, split: str) -> list[ImageRecord]:
    """Records of ``root/images/<split>/*`` with labels from ``root/labels/<split>/<stem>.txt``.

    Label lines are ``cls cx cy w h`` (normalised, ``cls`` 0-based); an image without a label
    file has no objects; label files without an image are ignored.
    """
    root = Path(root)
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    if not image_dir.is_dir():
        raise DatasetError(f"YOLO image folder {image_dir} does not exist")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [_yolo_record(p, label_dir / f"{p.stem}.txt", i) for i, p in enumerate(paths)]


def _yolo_record(image: Path, label_file: Path, index: int) -> ImageRecord:
    rows = []
    if label_file.exists():
        rows = [line.split() for line in label_file.read_text().splitlines() if line.strip()]
    table = torch.tensor([[float(v) for v in r[:5]] for r in rows], dtype=torch.float32).reshape(-1, 5)
    cxcy, wh = table[:, 1:3], table[:, 3:5]
    boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=1).clamp(0.0, 1.0)
    image_id = int(image.stem) if image.stem.isdigit() else index
    return ImageRecord(image, image_id, boxes, table[:, 0].long() + 1, torch.zeros(len(rows), dtype=torch.int64))


def read_coco(images_dir: str | Path, annotation_file: str | Path) -> tuple[list[ImageRecord], list[str]]:
    """Records and class names of a COCO ``instances_*.json``.

    Category ids are mapped to contiguous labels 1..C in ascending id order; ``bbox`` is
    ``[x, y, w, h]`` in pixels and is normalised by the image's ``width``/``height``.
    """
    data = json.loads(Path(annotation_file).read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    per_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        per_image[ann["image_id"]].append(ann)
    records = [_coco_record(Path(images_dir), img, per_image[img["id"]], label_of) for img in data["images"]]
    return records, [c["name"] for c in cats]


def _coco_record(images_dir: Path, img: Mapping[str, Any], anns: Sequence[Mapping[str, Any]],
                 label_of: Mapping[int, int]) -> ImageRecord:
    w, h = float(img["width"]), float(img["height"])
    xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1) / torch.tensor([w, h, w, h])
    labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)
    crowd = torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64)
    return ImageRecord(images_dir / img["file_name"], int(img["id"]), boxes.clamp(0.0, 1.0), labels, crowd)


class DetectionDataset(Dataset):
    """Images resized to ``image_size`` squared, optionally augmented (horizontal flip, SSD-style
    random crop). Resized images are cached in memory (uint8) after the first read."""

    def __init__(self, records: Sequence[ImageRecord], image_size: int, train: bool = False,
                 cache: bool = True) -> None:
        self.records = list(records)
        self.image_size = int(image_size)
        self.train = train
        self.cache = cache
        self._images: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        return self.sample(index, random)  # the global RNG, as DataLoader workers seed it

    def sample(self, index: int, rng: random.Random | Any) -> tuple[torch.Tensor, Target]:
        """Sample ``index``, augmented with ``rng`` (``random``-like) when ``train``."""
        rec = self.records[index]
        image, size = self._load(index)
        boxes, labels, crowd = rec.boxes, rec.labels, rec.iscrowd
        if self.train:
            image, boxes, labels, crowd = _augment(image, boxes, labels, crowd, self.image_size, rng)
        target = {"boxes": boxes, "labels": labels, "iscrowd": crowd,
                  "size": torch.tensor(size), "image_id": torch.tensor(rec.image_id)}
        return normalize(image), target

    def _load(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        if index in self._images:
            return self._images[index]
        with Image.open(self.records[index].path) as img:
            rgb = img.convert("RGB")
        size = (rgb.height, rgb.width)
        resized = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        item = (TF.pil_to_tensor(resized), size)
        if self.cache:
            self._images[index] = item
        return item


def normalize(image_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(3, H, W)`` to the float, ImageNet-normalised network input."""
    x = image_uint8.float() / 255.0
    return TF.normalize(x, list(MEAN), list(STD))


def _augment(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, crowd: torch.Tensor,
             size: int, rng: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if rng.random() < 0.5:
        image = image.flip(-1)
        boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    if rng.random() < 0.5 and len(boxes):
        image, boxes, labels, crowd = _random_crop(image, boxes, labels, crowd, size, rng)
    return image, boxes, labels, crowd


def _random_crop(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, crowd: torch.Tensor,
                 size: int, rng: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop a random 30-100 % window keeping the objects whose centre it contains (SSD "zoom in")."""
    cw, ch = rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)
    x0, y0 = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centre[:, 0] > x0) & (centre[:, 0] < x0 + cw) & (centre[:, 1] > y0) & (centre[:, 1] < y0 + ch)
    if not inside.any():
        return image, boxes, labels, crowd
    scale = torch.tensor([cw, ch, cw, ch])
    new = ((boxes[inside] - torch.tensor([x0, y0, x0, y0])) / scale).clamp(0.0, 1.0)
    px = [round(v * size) for v in (y0, x0, ch, cw)]
    crop = TF.resized_crop(image, px[0], px[1], max(px[2], 1), max(px[3], 1), [size, size], antialias=True)
    return crop, new, labels[inside], crowd[inside]


def detection_collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack the images; keep the targets as a list (their object counts differ)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


@dataclass
class DetectionData(EvalSplits[DetectionDataset]):
    """The datasets of one detection experiment.

    ``train`` is augmented; ``calib`` is the training images without augmentation (BN
    recalibration and INT8 calibration); ``val`` is what mAP is measured on (what a search selects
    on); ``holdout`` (None when the dataset has none) is what reports state; :meth:`eval_set`
    names the last two.
    """

    HOLDOUT_HINT = "set dataset.holdout_annotations (format coco) or dataset.holdout_split (format yolo)"

    name: str
    train: DetectionDataset
    calib: DetectionDataset
    val: DetectionDataset
    num_classes: int
    image_size: int
    class_names: list[str] = field(default_factory=list)
    task: str = "detection"
    source: dict[str, Any] = field(default_factory=dict)
    holdout: DetectionDataset | None = None

    @property
    def resolution(self) -> int:
        return self.image_size

    def identity(self) -> dict[str, Any]:
        """What identifies the numbers measured on this data (for cache keys)."""
        return {"name": self.name, "task": self.task, "source": self.source, "num_classes": self.num_classes,
                "train_images": len(self.train), "val_images": len(self.val),
                "holdout_images": len(self.holdout) if self.holdout is not None else 0, "resolution": self.image_size,
                "mean": list(MEAN), "std": list(STD), "val_is_train": self.val is self.calib}

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per epoch (the last partial batch is dropped)."""
        return max(1, len(self.train) // batch_size)

    def train_batches(self, batch_size: int, epoch: int, seed: int = 0,
                      start_step: int = 0) -> Iterator[tuple[torch.Tensor, list[Target]]]:
        """Augmented batches of epoch ``epoch`` from step ``start_step`` on; the order and the
        augmentation are functions of ``(seed, epoch, step)``, so a resumed run sees the same."""
        n = len(self.train)
        batch_size = min(batch_size, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for step in range(start_step, self.steps_per_epoch(batch_size)):
            rng = random.Random(f"{seed}/{epoch}/{step}")
            idx = order[step * batch_size:(step + 1) * batch_size].tolist()
            yield detection_collate([self.train.sample(i, rng) for i in idx])

    def loader(self, split: str, batch_size: int, shuffle: bool = False, max_images: int | None = None,
               num_workers: int = 0) -> DataLoader:
        """A loader over ``split`` (``train``/``calib``/``val``/``holdout``), the first ``max_images`` if given."""
        dataset: Dataset = getattr(self, split) if split in ("train", "calib") else self.eval_set(split)
        if max_images is not None and max_images < len(dataset):
            dataset = Subset(dataset, range(max_images))
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=detection_collate,
                          num_workers=num_workers, drop_last=shuffle and len(dataset) > batch_size)


def build_detection_data(cfg: Mapping[str, Any], image_size: int) -> DetectionData:
    """Datasets from a ``conf/dataset/*.yaml`` mapping (``format: yolo`` or ``format: coco``).

    When validation is the training set (coco128's reference setup), ``val`` is ``calib``.
    """
    fmt = cfg.get("format", "yolo")
    if fmt == "yolo":
        root = resolve_path(cfg["root"])
        train_split, val_split = cfg.get("train_split", "train2017"), cfg.get("val_split", "val2017")
        train_records = read_yolo(root, train_split)
        val_records = None if val_split == train_split else read_yolo(root, val_split)
        holdout_records = read_yolo(root, cfg["holdout_split"]) if cfg.get("holdout_split") else None
        names = list(cfg.get("class_names", []))
    elif fmt == "coco":
        train_records, names = read_coco(resolve_path(cfg["train_images"]), resolve_path(cfg["train_annotations"]))
        same = cfg["val_annotations"] == cfg["train_annotations"]
        val_records = None if same else read_coco(resolve_path(cfg["val_images"]),
                                                  resolve_path(cfg["val_annotations"]))[0]
        holdout_records = (read_coco(resolve_path(cfg["holdout_images"]), resolve_path(cfg["holdout_annotations"]))[0]
                           if cfg.get("holdout_annotations") else None)
    else:
        raise ConfigError(f"unknown detection dataset format {fmt!r}; use 'yolo' or 'coco'")
    if cfg.get("train_limit") and int(cfg["train_limit"]) < len(train_records):
        val_records = train_records if val_records is None else val_records  # validation stays whole
        train_records = train_records[: int(cfg["train_limit"])]
    num_classes = int(cfg.get("num_classes") or len(names))
    train, calib = DetectionDataset(train_records, image_size, train=True), DetectionDataset(train_records, image_size)
    train._images = calib._images  # one decoded-image cache for both views of the training images
    val = calib if val_records is None else DetectionDataset(val_records, image_size)
    source = {k: str(v) for k, v in cfg.items() if k not in ("class_names", "name", "task")}
    holdout = None if holdout_records is None else DetectionDataset(holdout_records, image_size)
    return DetectionData(str(cfg.get("name", fmt)), train, calib, val, num_classes, image_size, names,
                         source=source, holdout=holdout)
