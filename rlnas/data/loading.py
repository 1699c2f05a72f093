"""Classification images from disk into memory, once: every split is decoded to a square
``store_size`` uint8 array and cached as ``.npz`` (default ``<root>/../.cache/``), so that later
loads take well under a second.

Layout: ImageFolder, ``<root>/<split>/<class>/<image>`` (``make data`` builds ``data/cifar10`` and
``data/imagenette-128`` this way), read by torchvision's ``find_classes``/``make_dataset`` (hidden
folders ignored); CIFAR-10 can also come from torchvision's download.

Inputs are bounded: an image's size is read from its header before it is decoded
(:func:`checked_image_bytes`), so that a huge, empty or non-image file is one line naming it,
never an out-of-memory crash.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets.folder import find_classes, make_dataset

from rlnas.data.spec import DatasetError, DatasetSpec, ImageSet, resolve_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: The most pixels a dataset image may have. Its size is read from its header before it is
#: decoded, so that a huge image is refused in one line instead of exhausting memory (a 50 MP
#: image decodes to 150 MB of RGB, and resizing it takes a float copy four times that).
MAX_IMAGE_PIXELS = 50_000_000
#: Bump when the cached array layout or decoding changes; old caches are then ignored.
CACHE_VERSION = 1


def load_split(spec: DatasetSpec, split: str, store_size: int, limit: int | None,
               classes: list[str] | None = None) -> ImageSet:
    """Decode (or read from cache) one split as a square ``store_size`` uint8 tensor.

    :param classes: the class order to use (the train split's), so labels agree across splits.
    :raises DatasetError: naming what is missing and how to get it.
    """
    root = resolve_path(spec.root)
    if not root.is_dir():
        if spec.download_fallback and spec.name == "cifar10":
            return _torchvision_cifar10(root, split == spec.train_split, store_size, limit, spec.seed)
        raise DatasetError(_missing_root_message(spec, root))
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(f"dataset {spec.name!r}: split folder {split_dir} is missing (found {present}); "
                           f"set dataset.train_split/val_split, or dataset.root=<root holding {split}/>")
    class_names = classes or _class_folders(split_dir, spec.name)
    files, labels = _list_images(split_dir, class_names, spec.name)
    files, labels = _limit(files, labels, limit, spec.seed)
    cache = _cache_path(spec, root, split, store_size, limit, files)
    if cache is not None and cache.is_file():
        try:
            return _read_cache(cache, class_names)
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable cache %s: %s", cache, err)
    images = _decode_all(files, store_size, f"{spec.name}/{split}")
    result = ImageSet(images, torch.as_tensor(labels, dtype=torch.int64), class_names, str(split_dir))
    if cache is not None:
        _write_cache(cache, result)
    return result


def _missing_root_message(spec: DatasetSpec, root: Path) -> str:
    hint = ("run `make data` (extracts ../shared/data/*.tar.gz into data/)"
            if spec.name in ("cifar10", "imagenette") else "check the path")
    fallback = " or set dataset.download_fallback=true to download CIFAR-10" if spec.name == "cifar10" else ""
    return (f"dataset {spec.name!r}: root {spec.root!r} not found (looked at {root}); {hint}{fallback}, "
            f"or point dataset.root=<ImageFolder root with {spec.train_split}/ and {spec.val_split}/ "
            "holding one folder per class>")


def _class_folders(split_dir: Path, name: str) -> list[str]:
    """The split's class names (torchvision's ``find_classes``: sorted folder names), hidden
    folders left out; DatasetError naming the folder when there is none."""
    classes = _visible_folders(split_dir)
    if not classes:
        raise DatasetError(f"dataset {name!r}: {split_dir} has no class folders (expected <split>/<class>/<image>)")
    return classes


def _visible_folders(split_dir: Path) -> list[str]:
    try:
        found = find_classes(split_dir)[0]
    except FileNotFoundError:  # no folder at all
        return []
    return [c for c in found if not c.startswith(".")]


def _list_images(split_dir: Path, classes: list[str], name: str) -> tuple[list[Path], list[int]]:
    """The images (:data:`IMAGE_EXTENSIONS`) of ``classes`` under ``split_dir`` with their labels
    (indices in ``classes``), by torchvision's ``make_dataset``; a class without a folder has no
    images. DatasetError naming the folder for a class the train split lacks, or no image at all."""
    unknown = set(_visible_folders(split_dir)) - set(classes)
    if unknown:
        raise DatasetError(f"dataset {name!r}: {split_dir} has classes not in the train split: {sorted(unknown)[:5]}")
    samples = make_dataset(split_dir, {c: i for i, c in enumerate(classes)}, extensions=IMAGE_EXTENSIONS,
                           allow_empty=True)
    if not samples:
        raise DatasetError(f"dataset {name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}")
    samples.sort(key=lambda sample: sample[1])  # label order, whatever order the class names sort in
    return [Path(path) for path, _ in samples], [label for _, label in samples]


def _limit(files: list[Path], labels: list[int], limit: int | None, seed: int) -> tuple[list[Path], list[int]]:
    if limit is None or limit >= len(files):
        return files, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
    return [files[i] for i in keep], [labels[i] for i in keep]


def _cache_path(spec: DatasetSpec, root: Path, split: str, store_size: int, limit: int | None,
                files: list[Path]) -> Path | None:
    if spec.cache_dir == "":
        return None
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, str(root), split, store_size, limit, spec.seed]).encode())
    for f in files:
        digest.update(f"{f.relative_to(root)}:{f.stat().st_size}\n".encode())
    base = resolve_path(spec.cache_dir) if spec.cache_dir else root.parent / ".cache"
    return base / f"{spec.name}-{split}-{store_size}px-{len(files)}-{digest.hexdigest()[:12]}.npz"


def _read_cache(path: Path, classes: list[str]) -> ImageSet:
    with np.load(path) as z:
        images, labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]).long()
    return ImageSet(images, labels, classes, f"cache:{path}")


def _write_cache(path: Path, data: ImageSet) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
        np.savez(tmp, images=data.images.numpy(), labels=data.labels.numpy())
        os.replace(tmp, path)
    except OSError as err:  # a read-only data directory only costs the decoding next time
        log.warning("could not cache decoded images at %s: %s", path, err)


def _decode_all(files: list[Path], size: int, what: str) -> Tensor:
    decode = _decoder()
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of torchcodec; they remain the fastest here
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, f in enumerate(_progress(files, f"decoding {what}")):
            data = checked_image_bytes(f)
            try:
                img = decode(data)
            except (RuntimeError, OSError, ValueError) as err:
                raise DatasetError(f"cannot decode {f}: {_one_line(err).rstrip('.')}; "
                                   "replace it or remove it from the dataset") from err
            out[i] = square(img, size)
    return out


def checked_image_bytes(f: Path) -> bytes:
    """The bytes of image file ``f``, once its header says it is an image of at most
    :data:`MAX_IMAGE_PIXELS` (PIL reads the header only); else a one-line DatasetError naming the file."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = MAX_IMAGE_PIXELS  # read at call time: a caller (a test) may lower it
    try:
        data = f.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read image {f}: {_one_line(err)}") from err
    if not data:
        raise DatasetError(f"image {f} is empty (0 bytes): replace it or remove it from the dataset")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap is lower
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:  # above twice PIL's own bound: beyond ours too
        raise DatasetError(f"image {f} is too large ({_one_line(err).rstrip('.')}); the cap is "
                           f"{max_pixels / 1e6:g} megapixels per image: downscale it or remove it from the dataset") from err
    except UnidentifiedImageError as err:  # its message names the BytesIO, not the file
        raise DatasetError(f"{f} is not an image (no known image format in its first bytes): "
                           "replace it or remove it from the dataset") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{f} is not an image that can be read ({_one_line(err)}): "
                           "replace it or remove it from the dataset") from err
    if width * height > max_pixels:
        raise DatasetError(f"image {f} is {width}x{height} ({width * height / 1e6:g} megapixels), above the cap of "
                           f"{max_pixels / 1e6:g} megapixels per image: downscale it or remove it from the dataset")
    return data


def _one_line(err: BaseException) -> str:
    """An error's message on one line (a DatasetError is printed as one line)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _decoder():
    """``bytes -> [3, H, W]`` uint8 RGB: libjpeg-turbo via torchvision.io (2.5x faster than PIL on
    small JPEGs), else PIL."""
    try:
        from torchvision.io import ImageReadMode, decode_image

        return lambda data: decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except ImportError:
        from PIL import Image

        def pil(data: bytes) -> Tensor:
            with Image.open(io.BytesIO(data)) as im:
                return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).contiguous()

        return pil


def _progress(items: list, desc: str):
    if len(items) < 2000:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", mininterval=2.0)


def square(img: Tensor, size: int) -> Tensor:
    """Resize the shorter side of a ``[3, H, W]`` uint8 image to ``size`` and centre-crop a square."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[0, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)


def _torchvision_cifar10(root: Path, train: bool, store_size: int, limit: int | None, seed: int) -> ImageSet:
    from torchvision.datasets import CIFAR10

    log.warning("%s not found: downloading CIFAR-10 with torchvision into %s", root, root.parent)
    ds = CIFAR10(str(root.parent), train=train, download=True)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    if limit is not None and limit < len(labels):
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit]))
        images, labels = images[keep], labels[keep]
    if store_size != 32:
        images = torch.stack([square(img, store_size) for img in images])
    return ImageSet(images, labels, list(ds.classes), f"torchvision:{root.parent}")


def write_synthetic_imagefolder(root: str | os.PathLike, splits: Mapping[str, int] | None = None,
                                num_classes: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Write a small learnable ImageFolder (JPEGs whose colour and stripe direction depend on the
    class) for smoke runs and tests where no dataset is available. ``splits`` maps split name to
    images per class (default ``{"train": 32, "val": 16}``)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, per_class in (splits or {"train": 32, "val": 16}).items():
        for c in range(num_classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 70) % 256, (c * 150 + 60) % 256, (255 - c * 40) % 256], dtype=np.float32)
            stripes = np.sin((xx if c % 2 else yy) * (0.5 + 0.25 * c))
            for i in range(per_class):
                noise = rng.normal(0, 25, (size, size, 3))
                img = np.clip(colour * 0.7 + 60 * stripes[..., None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.jpg", quality=95)
    return root
