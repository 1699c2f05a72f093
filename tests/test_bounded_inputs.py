"""Bounded inputs: an image folder holding a 100-megapixel image, a 0-byte image or a non-image
named ``.jpg`` gives one DatasetError line naming the file, read from the image's header before
anything is decoded (a 100 MP image would decode to 300 MB of RGB and a float copy four times
that). The big PNGs are written row by row in a few megabytes of memory."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from rlnas.data import DatasetError, loading
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.tasks import build_data


def write_png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A grey ``width`` x ``height`` PNG, compressed as it is written (its pixels never exist in
    memory); ``rows`` < height writes only that many rows of pixel data (a valid header, the data
    cut short: what a crafted decompression bomb looks like)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp, row = zlib.compressobj(6), bytes(width + 1)  # filter byte 0, then 8-bit grey 0
    pixels = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_synthetic_imagefolder(tmp_path / "root", {"train": 2, "val": 2}, num_classes=2, size=8)


def build(root: Path, tmp_path: Path):
    return build_data({"name": "imagefolder", "root": str(root), "train_split": "train", "val_split": "val",
                       "store_size": 8, "cache_dir": str(tmp_path / "cache")}, 8)


def refused(root: Path, tmp_path: Path) -> str:
    """The one-line message of the DatasetError that building the dataset raises."""
    with pytest.raises(DatasetError) as info:
        build(root, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_100_megapixel_image_is_refused_from_its_header(root: Path, tmp_path: Path) -> None:
    big = write_png(root / "train" / "class1" / "big.png", 10_000, 10_000)
    assert big.stat().st_size < 1_000_000  # a real PNG of 100 MP, small on disk
    message = refused(root, tmp_path)
    assert str(big) in message and "10000x10000 (100 megapixels)" in message and "cap of 50 megapixels" in message


def test_a_decompression_bomb_header_is_refused(root: Path, tmp_path: Path) -> None:
    bomb = write_png(root / "val" / "class0" / "bomb.png", 20_000, 10_000, rows=4)  # over twice PIL's own bound
    message = refused(root, tmp_path)
    assert str(bomb) in message and "too large" in message and "cap is 50 megapixels" in message


def test_the_cap_is_checked_before_decoding(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png(root / "train" / "class0" / "wide.png", 40, 25)
    monkeypatch.setattr(loading, "MAX_IMAGE_PIXELS", 999)
    assert "40x25 (0.001 megapixels), above the cap of 0.000999 megapixels" in refused(root, tmp_path)
    monkeypatch.setattr(loading, "MAX_IMAGE_PIXELS", 1000)  # at the cap: decoded like any other
    assert build(root, tmp_path).train.images.shape == (5, 3, 8, 8)


def test_an_empty_image_is_named(root: Path, tmp_path: Path) -> None:
    empty = root / "val" / "class1" / "empty.jpg"
    empty.touch()
    message = refused(root, tmp_path)
    assert str(empty) in message and "empty (0 bytes)" in message


def test_a_file_that_is_no_image_is_named(root: Path, tmp_path: Path) -> None:
    text = root / "train" / "class0" / "notes.jpg"
    text.write_text("not an image\nsecond line\n")
    message = refused(root, tmp_path)
    assert str(text) in message and "is not an image" in message and "BytesIO" not in message


def test_an_image_cut_short_after_its_header_is_named(root: Path, tmp_path: Path) -> None:
    cut = root / "train" / "class1" / "cut.png"
    cut.write_bytes(write_png(tmp_path / "whole.png", 64, 64).read_bytes()[:60])  # header whole, pixels cut
    message = refused(root, tmp_path)
    assert message.startswith(f"cannot decode {cut}: ")
