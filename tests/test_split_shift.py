"""experiments/split_shift.py on a generated ImageFolder laid out as Imagenette (validation carved
out of train, the val folder held out): both splits measured against the training images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision
import yaml

from rlnas.data.loading import write_synthetic_imagefolder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import split_shift  # noqa: E402


def test_validation_and_held_out_images_are_compared_with_the_training_images(tmp_path: Path, capsys) -> None:
    images = write_synthetic_imagefolder(tmp_path / "images", {"train": 20, "val": 6}, num_classes=10)
    spec = yaml.safe_load((ROOT / "rlnas" / "conf" / "dataset" / "imagenette.yaml").read_text())
    spec.update(root=str(images), store_size=32)
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "a0.pt")
    argv = ["--family", "resnet18", "--a0", str(tmp_path / "a0.pt"), "--dataset", str(tmp_path / "dataset.yaml"),
            "--resolution", "32", "--out", str(tmp_path / "shift.json")]
    assert split_shift.main(argv) == 0
    rows = {r["split"]: r for r in json.loads((tmp_path / "shift.json").read_text())["rows"]}
    assert rows["val"]["images"] == 40 and rows["holdout"]["images"] == 60  # 20 % of 200 carved; the val folder
    for row in rows.values():
        assert 0.0 <= row["top1"] <= 1.0
        for key in ("feature cos q10/q50/q90", "pixel cos q50/q90/q99"):
            assert row[key] == sorted(row[key]) and all(-1.0 <= v <= 1.0 + 1e-6 for v in row[key])
    assert "train 160 images" in capsys.readouterr().out
