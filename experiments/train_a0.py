"""Train an a0 (the model a user deploys) with rlnas's own trainer, and write it as a user would
hand it to rlnas: a torchvision-format state dict, with its recipe, wall time and top-1.

    .venv/bin/python experiments/train_a0.py --model resnet50 --dataset imagenette --resolution 128 \\
        --epochs 40 --out outputs/a0/resnet50-imagenette-128
    .venv/bin/python experiments/train_a0.py --model resnet18 ...        # what a user would pick instead
    .venv/bin/python experiments/train_a0.py --model mobilenet_v2 ...    # (experiments/baselines.py compares them)

Rerunning the same command resumes a killed run (the trainer's ``last.pt``, kill -9 safe) and, once
trained, only rewrites the files. It shows a progress bar and logs to TensorBoard under
``<out>/tb``; on a CUDA GPU it trains there (bf16 autocast), else on the CPU (``--accelerator``).

The recipe is the trainer's ``default`` (SGD with Nesterov momentum, peak lr 0.1 after a 15 %
warm-up, cosine to 0, weight decay 5e-4 on weights, label smoothing 0.1, the dataset's
augmentation, zero-init residuals) with one phase: the maximal network alone, nothing elastic,
i.e. the plain torchvision network. The dataset's validation images (Imagenette: a seeded 20 % of
the train folder) are never trained on.

Writes ``<out>/a0.pt`` (the state dict; ``torchvision.models.<model>(num_classes=N)`` loads it
strictly) and ``<out>/a0.json``: the command, the recipe, the family's model kwargs (e.g. its stem),
training seconds, the sha256 and the top-1 *as deployed* (its own BN statistics, PyTorch FP32) on
the validation and held-out images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rlnas.supernet import load_supernet
from rlnas.supernet.checkpoint import atomic_save
from rlnas.supernet.scoring import torch_top1
from rlnas.supernet.train import compose_config, train_supernet
from rlnas.tasks import build_data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a registered family whose maximal network is torchvision's")
    p.add_argument("--dataset", default="imagenette")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--out", required=True, help="run directory (resumed when it holds one)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=5, help="epochs between validation scores of the network")
    p.add_argument("--override", action="append", default=[], help="more trainer overrides (key=value)")
    return p.parse_args(argv)


def trainer_overrides(args: argparse.Namespace) -> list[str]:
    return [f"model={args.model}", f"dataset={args.dataset}", f"resolution={args.resolution}", "recipe=default",
            f"recipe.name=a0-{args.model}-{args.dataset}-{args.resolution}px-e{args.epochs}", "recipe.num_random=0",
            f"recipe.batch_size={args.batch_size}", f"recipe.lr={args.lr}",
            f"recipe.phases=[{{name: max, epochs: {args.epochs}, elastic: []}}]", f"output_dir={args.out}",
            f"threads={args.threads}", f"accelerator={args.accelerator}", f"eval.every_epochs={args.eval_every}",
            "eval.val_images=null", *args.override]


def as_deployed_top1(model: torch.nn.Module, data, split: str) -> float:
    """PyTorch FP32 top-1 with the network's own BN statistics (no recalibration)."""
    images, labels = data.eval_images(split, None)
    model = model.eval().to(memory_format=torch.channels_last)
    return torch_top1(model, data.batches(images, 250), labels, True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = trainer_overrides(args)
    path = train_supernet(compose_config(overrides))
    supernet, meta = load_supernet(path)
    network = supernet.extract(supernet.space.max_arch()).eval()
    out = Path(args.out)
    atomic_save(network.state_dict(), out / "a0.pt")
    digest = hashlib.sha256((out / "a0.pt").read_bytes()).hexdigest()
    data = build_data(meta["dataset_config"], meta["resolution"])
    start = time.perf_counter()
    scores = {split: as_deployed_top1(network, data, split) for split in ("val", "holdout")
              if split == "val" or data.holdout is not None}
    record = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "trainer_overrides": overrides, "family": meta["family"], "num_classes": meta["num_classes"],
              "model_kwargs": {k: v for k, v in meta["kwargs"].items() if k != "num_classes"},
              "resolution": meta["resolution"], "recipe": meta["recipe"], "precision": meta["precision"],
              "device": meta.get("device", "cpu"), "train_seconds": meta["train_seconds"], "epochs": meta["epochs"],
              "completed": meta["completed"], "dataset": meta["dataset"], "top1_as_deployed": scores,
              "score_seconds": time.perf_counter() - start, "sha256": digest, "a0": str(out / "a0.pt")}
    (out / "a0.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(OmegaConf.to_yaml({k: record[k] for k in ("a0", "sha256", "train_seconds", "top1_as_deployed")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
