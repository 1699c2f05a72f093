"""A detection set made from classification photos: Imagenette photos pasted onto backgrounds.

Every scene is a square ``SceneSpec.size`` image: a background cut from one photo (a random square
crop of 50-100 % of its side, upscaled, maybe mirrored) with 1-5 other photos pasted on it, each
through a feathered elliptical mask, at a random size (geometric mean side ``min_side``..
``max_side`` px, log-uniform), aspect ratio (``1/max_aspect``..``max_aspect``, log-uniform; the
photo's largest centred window of that aspect is used, so nothing is stretched) and position
(the box inside the scene). The class of an object is its photo's class (the ImageFolder class
folder; category ids 1..C in sorted folder order, names the folder names).

The box (COCO ``bbox`` ``[x, y, w, h]``, integer pixels) is exact by construction: the object's
mask is the ellipse inscribed in the box, its alpha is above 0.5 on exactly the pixels whose
centre lies strictly inside that ellipse (:func:`inside_ellipse`, integer arithmetic), and the
box is the bounding box of those pixels. The feathering (alpha 0.5 +- signed distance / feather
width) makes a soft halo of alpha < 0.5 up to half the feather width outside the box, so no hard
tile edge gives the box away. Placements are resampled (``placement_tries`` tries, then the
object is dropped; the first object always fits) unless, for every object already placed:

- at most ``max_occlusion`` of its mask (the pixels with alpha > 0.5) is covered by the masks of
  the objects pasted after it (``rlnas_occluded`` of each annotation), and
- on each of the four sides, one of the pixels where the ellipse touches its box (the middle
  pixel, or one of the two middle ones) is untouched (alpha 0) by every later object,

so the box is also the extent of what is visible of the object.

Splits: ``train`` scenes use only the photos of ``<source>/train``; ``val`` and ``holdout`` scenes
only those of ``<source>/val``, split per class into two seeded disjoint halves, so no photo is
in two splits (as object or background). Within a scene no photo appears twice. Photos are drawn
from seeded permutations of the split's pool, so every photo is used about equally often.

Output: ``<out>/<split>/<NNNNNN>.jpg`` and ``<out>/annotations/instances_<split>.json`` (COCO;
annotations in paste order; image ids are ``split code * 1,000,000 + index + 1`` so they are unique
across splits; every image records its background photo in ``rlnas_background`` and every
annotation its photo in ``rlnas_source``, paths relative to ``<source>``; ``info.rlnas_build``
holds every setting). Every random choice is a function of ``(seed, split, scene index)`` and the
photo lists, so a rebuild gives byte-identical JSON and images whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from rlnas.data.loading import checked_image_bytes
from rlnas.data.spec import DatasetError

SPLITS = ("train", "val", "holdout")
SPLIT_CODES = {"train": 0, "val": 1, "holdout": 2}
#: The folder of ``<source>`` each split takes its photos from.
SOURCE_FOLDERS = {"train": "train", "val": "val", "holdout": "val"}
IMAGE_ID_STRIDE = 1_000_000
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Bump when the same settings would give different scenes; recorded in ``info.rlnas_build``.
BUILD_VERSION = 1
DEFAULT_COUNTS = {"train": 10_000, "val": 2_000, "holdout": 2_000}
BOX_DEFINITION = ("bbox = the bounding box of the pixels whose mask alpha > 0.5 = the box the object's "
                  "ellipse is inscribed in; its four tangent pixels stay visible")


@dataclass(frozen=True)
class SceneSpec:
    """How scenes look (sizes in pixels of the scene).

    :param size: scene side.
    :param min_objects: objects per scene at least (1..``max_objects``, uniform; fewer when a
        placement cannot satisfy the occlusion rules in ``placement_tries`` tries).
    :param min_side: smallest geometric mean side ``sqrt(w * h)`` of a box.
    :param max_side: largest one (a box side is also capped at ``size``).
    :param max_aspect: boxes have ``w / h`` in ``[1 / max_aspect, max_aspect]``.
    :param max_occlusion: the largest fraction of an object's mask later objects may cover.
    :param feather: feather width as a fraction of the box's shorter side, between 1 px and
        ``max_feather`` px (0: 1 px, an almost hard but still anti-aliased ellipse).
    :param background_scale: the background is a square crop of this fraction of the photo's
        shorter side (uniform), resized to the scene.
    :param image_format: ``jpg`` (quality ``quality``) or ``png`` (lossless).
    """

    size: int = 300
    min_objects: int = 1
    max_objects: int = 5
    min_side: float = 40.0
    max_side: float = 200.0
    max_aspect: float = 2.0
    max_occlusion: float = 0.4
    feather: float = 0.08
    max_feather: float = 8.0
    background_scale: tuple[float, float] = (0.5, 1.0)
    placement_tries: int = 50
    image_format: str = "jpg"
    quality: int = 90

    def __post_init__(self) -> None:
        for name in ("size", "min_objects", "max_objects", "placement_tries", "quality"):
            object.__setattr__(self, name, int(getattr(self, name)))  # 12 and 12.0 record the same
        for name in ("min_side", "max_side", "max_aspect", "max_occlusion", "feather", "max_feather"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "background_scale", tuple(float(v) for v in self.background_scale))
        if self.size < 8:
            raise ValueError(f"scene size {self.size} is below 8 px")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 2 <= self.min_side <= self.max_side:
            raise ValueError(f"need 2 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.max_aspect < 1 or not 0 <= self.max_occlusion <= 1 or self.feather < 0 or self.max_feather < 1:
            raise ValueError("need max_aspect >= 1, 0 <= max_occlusion <= 1, feather >= 0, max_feather >= 1")
        lo, hi = self.background_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"background_scale {self.background_scale} must satisfy 0 < lo <= hi <= 1")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format {self.image_format!r}: use 'jpg' or 'png'")

    def feather_px(self, w: int, h: int) -> float:
        """Feather width of a ``w`` x ``h`` box in pixels."""
        return float(min(max(self.feather * min(w, h), 1.0), self.max_feather))


@dataclass(frozen=True)
class Photo:
    """A source photo: ``path`` relative to the source root (POSIX), ``label`` in 1..C."""

    path: str
    label: int


@dataclass(frozen=True)
class SceneTask:
    """What a scene is made of: indices into its split's photo pool."""

    split: str
    index: int
    objects: tuple[int, ...]
    background: int

    @property
    def image_id(self) -> int:
        return SPLIT_CODES[self.split] * IMAGE_ID_STRIDE + self.index + 1


@dataclass
class Placed:
    """One pasted object: its box ``(x0, y0, w, h)``, alpha over the box padded by ``margin``,
    canvas masks (``inner``: alpha > 0.5, ``touched``: alpha > 0, ``covered``: later objects'
    ``inner``, ``later``: later objects' ``touched``), which of the scene's photos it is
    (``slot``), whether the photo is mirrored and the box's :func:`tangent_pixels`."""

    box: tuple[int, int, int, int]
    alpha: np.ndarray
    margin: int
    inner: np.ndarray
    touched: np.ndarray
    covered: np.ndarray
    later: np.ndarray
    slot: int = 0
    flip: bool = False
    tangents: list[list[tuple[int, int]]] = field(default_factory=list)

    def occluded(self, extra: np.ndarray | None = None) -> float:
        """The fraction of the mask covered by later objects (and ``extra``)."""
        covered = self.covered if extra is None else self.covered | extra
        return float((self.inner & covered).sum()) / float(self.inner.sum())

    def sides_visible(self, extra: np.ndarray | None = None) -> bool:
        """Whether every side keeps a tangent pixel untouched by later objects (and ``extra``)."""
        later = self.later if extra is None else self.later | extra
        return all(any(not later[r, c] for r, c in side) for side in self.tangents)


# ---------------------------------------------------------------------------------------------
# geometry


def inside_ellipse(w: int, h: int, margin: int = 0) -> np.ndarray:
    """Pixels of a ``w`` x ``h`` box (padded by ``margin``) whose centre lies strictly inside the
    ellipse inscribed in the box: ``(2i + 1 - w)^2 h^2 + (2j + 1 - h)^2 w^2 < w^2 h^2`` in box
    pixel coordinates ``(i, j)``, exact integer arithmetic. Its bounding box is the whole box for
    ``w, h >= 2``."""
    i = np.arange(-margin, w + margin, dtype=np.int64)
    j = np.arange(-margin, h + margin, dtype=np.int64)
    return ((2 * i[None, :] + 1 - w) ** 2 * h * h + (2 * j[:, None] + 1 - h) ** 2 * w * w) < w * w * h * h


def ellipse_alpha(w: int, h: int, feather: float) -> tuple[np.ndarray, int]:
    """Feathered alpha of the ellipse inscribed in a ``w`` x ``h`` box, over the box padded by the
    returned margin on every side: ``clip(0.5 + d / feather, 0, 1)`` with ``d`` the signed distance
    to the ellipse (first-order estimate, exact on the axes), so alpha > 0.5 on exactly
    :func:`inside_ellipse` and alpha = 0 from about ``feather / 2`` px outside."""
    margin = int(math.ceil(feather)) + 1
    a, b = w / 2.0, h / 2.0
    u = (np.arange(-margin, w + margin) + 0.5 - a)[None, :] / a
    v = (np.arange(-margin, h + margin) + 0.5 - b)[:, None] / b
    r = np.hypot(u, v)
    grad = np.hypot(u / a, v / b)  # r * |grad r|
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(grad > 0, (1.0 - r) * r / np.where(grad > 0, grad, 1.0), min(a, b))
    alpha = np.clip(0.5 + d / feather, 0.0, 1.0)
    inner = inside_ellipse(w, h, margin)
    alpha = np.where(inner, np.maximum(alpha, np.nextafter(0.5, 1.0)), np.minimum(alpha, 0.5))
    return alpha.astype(np.float32), margin


def tangent_pixels(x0: int, y0: int, w: int, h: int) -> list[list[tuple[int, int]]]:
    """``(row, col)`` canvas pixels where the ellipse inscribed in the box touches each side (top,
    bottom, left, right): the middle pixel of that side, or the two middle ones."""
    cols = [x0 + (w - 1) // 2, x0 + w // 2]
    rows = [y0 + (h - 1) // 2, y0 + h // 2]
    return [sorted({(y0, c) for c in cols}), sorted({(y0 + h - 1, c) for c in cols}),
            sorted({(r, x0) for r in rows}), sorted({(r, x0 + w - 1) for r in rows})]


def _canvas_masks(size: int, x0: int, y0: int, alpha: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    inner, touched = np.zeros((size, size), bool), np.zeros((size, size), bool)
    region, local = _clip(size, x0 - margin, y0 - margin, alpha.shape[1], alpha.shape[0])
    inner[region] = alpha[local] > 0.5
    touched[region] = alpha[local] > 0.0
    return inner, touched


def _clip(size: int, x: int, y: int, w: int, h: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The canvas slices of a ``w`` x ``h`` patch at ``(x, y)`` and the matching patch slices."""
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    return (slice(cy0, cy1), slice(cx0, cx1)), (slice(cy0 - y, cy1 - y), slice(cx0 - x, cx1 - x))


def place_objects(count: int, spec: SceneSpec, rng: np.random.Generator) -> list[Placed]:
    """Up to ``count`` boxes placed by the occlusion rules (module docstring), in paste order
    (an object that finds no placement in ``spec.placement_tries`` tries is left out)."""
    placed: list[Placed] = []
    lo, hi = math.log(spec.min_side), math.log(spec.max_side)
    log_aspect = math.log(spec.max_aspect)
    for slot in range(count):
        flip = bool(rng.random() < 0.5)
        for _ in range(spec.placement_tries):
            side, aspect = math.exp(rng.uniform(lo, hi)), math.exp(rng.uniform(-log_aspect, log_aspect))
            w = int(min(max(round(side * math.sqrt(aspect)), 2), spec.size))
            h = int(min(max(round(side / math.sqrt(aspect)), 2), spec.size))
            x0, y0 = int(rng.integers(0, spec.size - w + 1)), int(rng.integers(0, spec.size - h + 1))
            alpha, margin = ellipse_alpha(w, h, spec.feather_px(w, h))
            inner, touched = _canvas_masks(spec.size, x0, y0, alpha, margin)
            if all(p.occluded(inner) <= spec.max_occlusion and p.sides_visible(touched) for p in placed):
                for p in placed:
                    p.covered |= inner
                    p.later |= touched
                blank = np.zeros_like(inner)
                placed.append(Placed((x0, y0, w, h), alpha, margin, inner, touched, blank, blank.copy(), slot,
                                     flip, tangent_pixels(x0, y0, w, h)))
                break
    return placed


# ---------------------------------------------------------------------------------------------
# photos and plans


def list_photos(root: Path, folder: str, classes: Sequence[str]) -> list[Photo]:
    """The photos of ``root/folder/<class>/`` in sorted order, labelled 1..C by ``classes``."""
    photos = []
    for label, name in enumerate(classes, start=1):
        class_dir = root / folder / name
        if not class_dir.is_dir():
            raise DatasetError(f"{class_dir} does not exist (every folder of {root} needs the same classes)")
        photos += [Photo(f"{folder}/{name}/{p.name}", label) for p in sorted(class_dir.iterdir())
                   if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")]
    return photos


def photo_pools(source: str | Path, seed: int) -> tuple[list[str], dict[str, list[Photo]]]:
    """Class names and each split's photos: ``train`` the train folder; ``val`` and ``holdout`` the
    two halves of each class of the val folder (seeded; ``val`` takes the larger half)."""
    root = Path(source)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DatasetError(f"{root} must hold train/<class>/*.jpg and val/<class>/*.jpg (make data extracts "
                           "data/imagenette-128)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class folders")
    pools: dict[str, list[Photo]] = {"train": list_photos(root, "train", classes), "val": [], "holdout": []}
    evaluation = list_photos(root, "val", classes)
    for label in range(1, len(classes) + 1):
        members = [p for p in evaluation if p.label == label]
        order = np.random.default_rng([seed, 7, label]).permutation(len(members))
        half = (len(members) + 1) // 2
        pools["val"] += sorted((members[i] for i in order[:half]), key=lambda p: p.path)
        pools["holdout"] += sorted((members[i] for i in order[half:]), key=lambda p: p.path)
    return classes, pools


class _Stream:
    """Indices ``0..n-1`` in seeded permutations, one after the other."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng, self.order, self.pos = n, rng, [], 0

    def take(self, exclude: Iterable[int]) -> int:
        banned = set(exclude)
        while True:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(self.n).tolist(), 0
            index = self.order[self.pos]
            self.pos += 1
            if index not in banned:
                return int(index)


def plan_split(split: str, pool_size: int, count: int, spec: SceneSpec, seed: int) -> list[SceneTask]:
    """Which photos make each of ``count`` scenes of ``split`` (a pool of ``pool_size`` photos)."""
    if count and pool_size < 2:
        raise DatasetError(f"split {split!r} has {pool_size} photo(s); a scene needs at least 2")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 0])
    counts = rng.integers(spec.min_objects, spec.max_objects + 1, size=count)
    objects, backgrounds = _Stream(pool_size, rng), _Stream(pool_size, rng)
    tasks = []
    for index, n in enumerate(counts.tolist()):
        chosen: list[int] = []
        for _ in range(min(n, pool_size - 1)):
            chosen.append(objects.take(chosen))
        tasks.append(SceneTask(split, index, tuple(chosen), backgrounds.take(chosen)))
    return tasks


# ---------------------------------------------------------------------------------------------
# rendering


def _open_rgb(path: Path) -> Image.Image:
    """A source photo as RGB, after the bounded-input check (one DatasetError line naming a bad file)."""
    with Image.open(io.BytesIO(checked_image_bytes(path))) as img:
        return img.convert("RGB")


def _background(photo: Image.Image, spec: SceneSpec, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    short = min(photo.width, photo.height)
    side = rng.uniform(*spec.background_scale) * short
    x, y = rng.uniform(0, photo.width - side), rng.uniform(0, photo.height - side)
    flip = bool(rng.random() < 0.5)
    image = photo.resize((spec.size, spec.size), Image.Resampling.BICUBIC, box=(x, y, x + side, y + side))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = [round(x, 2), round(y, 2), round(side, 2)]
    return np.asarray(image, dtype=np.float32), {"crop": crop, "flip": flip}


def _object_patch(photo: Image.Image, width: int, height: int, flip: bool) -> np.ndarray:
    """The photo's largest centred window of aspect ``width / height``, resized to it."""
    target = width / height
    if photo.width / photo.height > target:
        cw, ch = photo.height * target, float(photo.height)
    else:
        cw, ch = float(photo.width), photo.width / target
    left, top = (photo.width - cw) / 2, (photo.height - ch) / 2
    patch = photo.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    if flip:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(patch, dtype=np.float32)


def render_scene(task: SceneTask, pool: Sequence[Photo], source: str | Path, spec: SceneSpec,
                 seed: int) -> tuple[np.ndarray, dict[str, Any], list[dict[str, Any]]]:
    """The scene of ``task``: uint8 ``(S, S, 3)`` RGB, its COCO image entry (without
    ``file_name``) and its annotations (without ids), in paste order."""
    root = Path(source)
    rng = np.random.default_rng([seed, SPLIT_CODES[task.split], 1, task.index])
    bg_photo = pool[task.background]
    canvas, bg_info = _background(_open_rgb(root / bg_photo.path), spec, rng)
    placed = place_objects(len(task.objects), spec, rng)
    for p in placed:
        x0, y0, w, h = p.box
        m = p.margin
        patch = _object_patch(_open_rgb(root / pool[task.objects[p.slot]].path), w + 2 * m, h + 2 * m, p.flip)
        region, local = _clip(spec.size, x0 - m, y0 - m, w + 2 * m, h + 2 * m)
        a = p.alpha[local][..., None]
        canvas[region] = canvas[region] * (1.0 - a) + patch[local] * a
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    entry = {"id": task.image_id, "width": spec.size, "height": spec.size,
             "rlnas_background": {"source": bg_photo.path, **bg_info}}
    annotations = []
    for p in placed:
        photo = pool[task.objects[p.slot]]
        annotations.append({"image_id": task.image_id, "category_id": photo.label, "bbox": list(p.box),
                            "area": int((p.inner & ~p.covered).sum()), "iscrowd": 0,
                            "rlnas_source": photo.path, "rlnas_occluded": round(p.occluded(), 4)})
    return image, entry, annotations


# ---------------------------------------------------------------------------------------------
# building


@dataclass(frozen=True)
class _Job:
    source: str
    out: str
    spec: SceneSpec
    seed: int
    pools: dict[str, list[Photo]]


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def file_name(index: int, spec: SceneSpec) -> str:
    """The file name of scene ``index`` of a split."""
    return f"{index:06d}.{spec.image_format}"


def _write_scene(task: SceneTask) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = _JOB
    if job is None:
        raise RuntimeError("scene worker not initialised")
    image, entry, annotations = render_scene(task, job.pools[task.split], job.source, job.spec, job.seed)
    name = file_name(task.index, job.spec)
    path = Path(job.out) / task.split / name
    if job.spec.image_format == "jpg":
        Image.fromarray(image).save(path, format="JPEG", quality=job.spec.quality)
    else:
        Image.fromarray(image).save(path, format="PNG")
    return {"id": entry["id"], "file_name": name, **{k: v for k, v in entry.items() if k != "id"}}, annotations


def _source_digest(source: Path, pool: Sequence[Photo]) -> str:
    digest = hashlib.sha256()
    for photo in pool:
        digest.update(photo.path.encode() + b"\0" + str(photo.label).encode() + b"\0")
        digest.update(hashlib.sha256((source / photo.path).read_bytes()).digest())
    return digest.hexdigest()


def build_info(split: str, count: int, spec: SceneSpec, seed: int, source: Path, pool: Sequence[Photo]) -> dict:
    """``info.rlnas_build`` of a split: every setting the scenes depend on (no absolute paths)."""
    info = {"version": BUILD_VERSION, "split": split, "scenes": int(count), "seed": int(seed), "spec": asdict(spec),
            "source_photos": len(pool), "source_sha256": _source_digest(source, pool),
            "source_folder": SOURCE_FOLDERS[split], "box": BOX_DEFINITION}
    return json.loads(json.dumps(info))  # as it reads back from the file


def annotation_path(out: str | Path, split: str) -> Path:
    """``<out>/annotations/instances_<split>.json``."""
    return Path(out) / "annotations" / f"instances_{split}.json"


def _up_to_date(out: Path, split: str, info: Mapping[str, Any]) -> bool:
    path = annotation_path(out, split)
    if not path.exists():
        return False
    data = json.loads(path.read_text())
    if data.get("info", {}).get("rlnas_build") != info:
        return False
    return all((out / split / img["file_name"]).exists() for img in data["images"])


def _results(tasks: Sequence[SceneTask], job: _Job, workers: int) -> Iterator[tuple[dict[str, Any], list]]:
    if workers <= 1 or len(tasks) < 2:
        _init_worker(job)
        yield from map(_write_scene, tasks)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, _init_worker, (job,)) as pool:
        yield from pool.imap(_write_scene, tasks, chunksize=8)


def build_scenes(source: str | Path, out: str | Path, counts: Mapping[str, int] | None = None,
                 spec: SceneSpec | None = None, seed: int = 0, workers: int = 2, progress: bool = True,
                 force: bool = False) -> dict[str, Path]:
    """Build (or keep, when already built with the same settings and photos) the scenes of every
    split in ``counts`` (default :data:`DEFAULT_COUNTS`) from the ImageFolder ``source``.

    :param workers: processes rendering scenes (the result does not depend on it).
    :param force: rebuild even when the annotation file says it is up to date.
    :returns: the annotation file of each split.
    :raises DatasetError: a missing or malformed source.
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    spec = spec or SceneSpec()
    source, out = Path(source), Path(out)
    classes, pools = photo_pools(source, seed)
    infos = {split: build_info(split, n, spec, seed, source, pools[split]) for split, n in counts.items()}
    todo = [s for s in counts if force or not _up_to_date(out, s, infos[s])]
    tasks = [t for s in todo for t in plan_split(s, len(pools[s]), counts[s], spec, seed)]
    for split in todo:
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).glob("[0-9][0-9][0-9][0-9][0-9][0-9].*"):
            old.unlink()
    job = _Job(str(source), str(out), spec, seed, pools)
    results: dict[str, list[tuple[dict[str, Any], list]]] = {s: [] for s in todo}
    bar = _progress(tasks, progress)
    for task, result in zip(tasks, _results(tasks, job, workers), strict=True):
        results[task.split].append(result)
        bar.update(1)
    bar.close()
    categories = [{"id": i, "name": name, "supercategory": "imagenette"} for i, name in enumerate(classes, 1)]
    for split in todo:
        images, annotations = [], []
        for image, anns in results[split]:
            images.append(image)
            annotations += [{"id": len(annotations) + k + 1, **a} for k, a in enumerate(anns)]
        data = {"info": {"description": "rlnas scenes: photos pasted onto backgrounds cut from other photos",
                         "rlnas_build": infos[split]},
                "images": images, "annotations": annotations, "categories": categories}
        _write_json(annotation_path(out, split), data)
    return {split: annotation_path(out, split) for split in counts}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(tasks: Sequence[SceneTask], enabled: bool) -> Any:
    if not enabled or not tasks:
        return _NoBar()
    return tqdm(total=len(tasks), desc="scenes", unit="scene", mininterval=1.0)
