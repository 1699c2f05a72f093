"""experiments/train_a0.py: an a0 trained by rlnas's trainer comes out as a torchvision state
dict that torchvision loads strictly and that scores as its record says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision
from helpers import train_a0_argv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import train_a0  # noqa: E402


def test_a0_is_a_torchvision_state_dict_with_its_record(tmp_path: Path) -> None:
    out = tmp_path / "a0"
    argv = train_a0_argv("resnet18", tmp_path, 12, 6)
    assert train_a0.main(argv) == 0
    record = json.loads((out / "a0.json").read_text())
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(torch.load(out / "a0.pt", weights_only=True))
    assert record["family"] == "resnet18" and record["completed"] and record["device"] == "cpu"
    assert record["dataset"]["train_images"] == 27 and record["dataset"]["holdout_images"] == 18
    assert set(record["top1_as_deployed"]) == {"val", "holdout"}
    assert all(0 <= v <= 1 for v in record["top1_as_deployed"].values()) and len(record["sha256"]) == 64
    again = train_a0.main(argv)  # a finished run: the files again, identical weights
    assert again == 0 and json.loads((out / "a0.json").read_text())["sha256"] == record["sha256"]
