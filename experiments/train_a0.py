"""Train an a0 (the model a user deploys) with rlnas's own trainer, and write it as a user would
hand it to rlnas: the state dict of the family's maximal network, with its recipe, wall time and
accuracy.

    .venv/bin/python experiments/train_a0.py --model resnet50 --dataset imagenette --resolution 128 \\
        --epochs 40 --out outputs/a0/resnet50-imagenette-128
    .venv/bin/python experiments/train_a0.py --model resnet18 ...        # what a user would pick instead
    .venv/bin/python experiments/train_a0.py --model mobilenet_v2 ...    # (experiments/baselines.py compares them)

The detector of issue 21, an SSD300-MobileNetV1 on the detection scenes (``make scenes``), in two
commands: its MobileNetV1 backbone trained on Imagenette (the imagenet stem, as the SSD's), then the
SSD initialised from that backbone (``--backbone``: the SSD trainer's ``init.checkpoint``):

    .venv/bin/python experiments/train_a0.py --model mobilenet_v1 --stem imagenet --dataset imagenette \\
        --resolution 128 --epochs 40 --out outputs/a0/mobilenet_v1-imagenette-128
    .venv/bin/python experiments/train_a0.py --model ssd_mobilenet_v1 --dataset scenes --resolution 300 \\
        --backbone outputs/a0/mobilenet_v1-imagenette-128/a0.pt --epochs 30 --out outputs/a0/ssd_mobilenet_v1-scenes-300

Rerunning the same command resumes a killed run (the trainer's ``last.pt``, kill -9 safe) and, once
trained, only rewrites the files. It shows a progress bar and logs to TensorBoard under
``<out>/tb`` (losses, learning rate, and the validation accuracy every ``--eval-every`` epochs: top-1,
or a detector's mAP@.5 as ``val_acc_max`` and mAP@[.5:.95] as ``val_map_max``); on a CUDA GPU a
classifier trains there (bf16 autocast), else on the CPU (``--accelerator``; the detection trainer
runs on the CPU).

The recipe has one phase: the maximal network alone, nothing elastic, i.e. the plain network.
Classification: the trainer's ``default`` (SGD with Nesterov momentum, peak lr 0.1 after a 15 %
warm-up, cosine to 0, weight decay 5e-4 on weights, label smoothing 0.1, the dataset's augmentation,
zero-init residuals; batch 128). Detection: ``recipe=ssd`` (SGD with Nesterov momentum, batch 16,
peak lr 0.02 after a 5 % warm-up, cosine to 0, weight decay 4e-5 on weights, gradient norm clipped
at 10, fp32, the MultiBox loss, flips and SSD zoom-in crops), the dataset's ``resolution`` also
laying out the default boxes. The dataset's validation images (Imagenette: a seeded 20 % of the
train folder; scenes: the val split) are never trained on.

Writes ``<out>/a0.pt`` (the state dict; the family's maximal network loads it strictly:
``rlnas.supernet.a0.build_a0(family, {"num_classes": N, **model_kwargs}, a0.pt)``, and for a
torchvision family ``torchvision.models.<model>(num_classes=N)`` too) and ``<out>/a0.json``: the
command, the recipe, the family's model kwargs (e.g. its stem), the dataset config, training
seconds, the sha256, the per-epoch history (losses, validation scores) and the accuracy *as
deployed* (its own BN statistics, PyTorch FP32) on the validation and held-out images: top-1
(``top1_as_deployed``) or COCO mAP@.5 / mAP@[.5:.95] / mAP@.75 (``map_as_deployed``); a detector's
record also names its backbone (path, sha256, and the backbone's own record).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rlnas.data.spec import resolve_path
from rlnas.detection.evaluate import evaluate_detection
from rlnas.supernet import load_supernet
from rlnas.supernet.checkpoint import atomic_save
from rlnas.supernet.scoring import torch_top1
from rlnas.supernet.train import SupernetTrainer, compose_config
from rlnas.tasks import build_data, get_task

log = logging.getLogger("train_a0")

#: the trainer's recipe of each task (its one phase is replaced by the maximal network alone)
RECIPES = {"classification": "default", "detection": "ssd"}
#: --batch-size and --lr when not given: a classifier's (every a0 so far was trained with them);
#: a detector's are its recipe's (ssd: 16 and 0.02)
CLASSIFICATION_DEFAULTS = {"batch_size": 128, "lr": 0.1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a registered family (its maximal network is trained)")
    p.add_argument("--dataset", default="imagenette", help="a dataset config (its task picks the trainer: "
                   "classification, or detection for e.g. scenes)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 for a classifier, the recipe's "
                   "(16) for a detector")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default: 0.1 for a classifier, "
                   "the recipe's (0.02) for a detector")
    p.add_argument("--stem", choices=["imagenet", "cifar"], default=None,
                   help="model.kwargs.stem (default: the family config's; an SSD backbone needs imagenet)")
    p.add_argument("--backbone", default=None, help="a detector only: a mobilenet_v1 classification a0.pt (or "
                   "supernet.pt) whose backbone initialises the detector's (init.checkpoint)")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds one)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=5, help="epochs between validation scores of the network")
    p.add_argument("--override", action="append", default=[], help="more trainer overrides (key=value)")
    return p.parse_args(argv)


def dataset_task(args: argparse.Namespace) -> str:
    """The task of ``--dataset`` (with the overrides): which trainer and recipe train the a0."""
    cfg = compose_config([f"model={args.model}", f"dataset={args.dataset}", *args.override])
    return str(cfg.dataset.get("task") or "classification")


def trainer_overrides(args: argparse.Namespace, task: str = "classification") -> list[str]:
    """The trainer's config: the task's recipe with one phase, the maximal network alone."""
    defaults = CLASSIFICATION_DEFAULTS if task == "classification" else {}
    batch_size = args.batch_size if args.batch_size is not None else defaults.get("batch_size")
    lr = args.lr if args.lr is not None else defaults.get("lr")
    out = [f"model={args.model}", f"dataset={args.dataset}", f"resolution={args.resolution}", f"recipe={RECIPES[task]}",
           f"recipe.name=a0-{args.model}-{args.dataset}-{args.resolution}px-e{args.epochs}", "recipe.num_random=0"]
    out += [f"recipe.batch_size={batch_size}"] if batch_size is not None else []
    out += [f"recipe.lr={lr}"] if lr is not None else []
    out += [f"recipe.phases=[{{name: max, epochs: {args.epochs}, elastic: []}}]", f"output_dir={args.out}",
            f"threads={args.threads}", f"accelerator={args.accelerator}", f"eval.every_epochs={args.eval_every}",
            "eval.val_images=null"]
    if task == "detection":  # the default boxes are laid out for the model's resolution
        out.append(f"model.resolution={args.resolution}")
    if args.stem is not None:
        out.append(f"model.kwargs.stem={args.stem}")
    if args.backbone is not None:
        out.append(f"init.checkpoint={args.backbone}")
    return [*out, *args.override]


def as_deployed_top1(model: torch.nn.Module, data: Any, split: str) -> float:
    """PyTorch FP32 top-1 with the network's own BN statistics (no recalibration)."""
    images, labels = data.eval_images(split, None)
    model = model.eval().to(memory_format=torch.channels_last)
    return torch_top1(model, data.batches(images, 250), labels, True)


def as_deployed_map(model: torch.nn.Module, data: Any, split: str) -> dict[str, float]:
    """PyTorch FP32 COCO mAP (``map50``, ``map``, ``map75``) with the network's own BN statistics."""
    return evaluate_detection(model.eval(), None, data, split=split)


#: per task: the a0.json key of the as-deployed scores and how to compute them on one split
SCORES: dict[str, tuple[str, Callable[[torch.nn.Module, Any, str], Any]]] = {
    "classification": ("top1_as_deployed", as_deployed_top1),
    "detection": ("map_as_deployed", as_deployed_map),
}


def backbone_record(path: str) -> dict[str, Any]:
    """What initialised a detector's backbone: the file, its sha256 and, when the a0.json this
    script wrote is beside it, that record's family, kwargs, top-1 and sha256."""
    file = resolve_path(path)
    record: dict[str, Any] = {"path": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    beside = file.with_name("a0.json")
    if beside.is_file():
        own = json.loads(beside.read_text())
        record["a0_json"] = {k: own.get(k) for k in ("family", "model_kwargs", "resolution", "top1_as_deployed",
                                                       "sha256", "epochs", "train_seconds")}
        if (own.get("model_kwargs") or {}).get("stem") == "cifar":
            log.warning("the backbone %s was trained with the cifar stem (stride 1); the SSD runs the imagenet "
                        "stem (stride 2): train it with --stem imagenet", file)
    return record


def main(argv: list[str] | None = None, on_step: Callable[[SupernetTrainer], None] | None = None) -> int:
    """Train (or resume) and write ``a0.pt`` and ``a0.json``. ``on_step`` is the trainer's (tests
    use it to simulate a kill)."""
    args = parse_args(argv)
    task = dataset_task(args)
    if args.backbone is not None and task != "detection":
        raise SystemExit(f"train_a0.py: --backbone initialises a detector's backbone; --dataset {args.dataset} "
                         f"is a {task} dataset")
    overrides = trainer_overrides(args, task)
    path = get_task(task).trainer(compose_config(overrides), on_step).run()
    supernet, meta = load_supernet(path)
    network = supernet.extract(supernet.space.max_arch()).eval()
    out = Path(args.out)
    atomic_save(network.state_dict(), out / "a0.pt")
    digest = hashlib.sha256((out / "a0.pt").read_bytes()).hexdigest()
    data = build_data(meta["dataset_config"], meta["resolution"])
    start = time.perf_counter()
    key, score = SCORES[task]
    scores = {split: score(network, data, split) for split in ("val", "holdout")
              if split == "val" or data.holdout is not None}
    record = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "trainer_overrides": overrides, "task": task, "family": meta["family"],
              "num_classes": meta["num_classes"],
              "model_kwargs": {k: v for k, v in meta["kwargs"].items() if k != "num_classes"},
              "resolution": meta["resolution"], "recipe": meta["recipe"], "precision": meta["precision"],
              "device": meta.get("device", "cpu"), "train_seconds": meta["train_seconds"], "epochs": meta["epochs"],
              "steps": meta["steps"], "completed": meta["completed"], "dataset": meta["dataset"],
              "dataset_config": meta["dataset_config"], key: scores,
              "score_seconds": time.perf_counter() - start, "sha256": digest, "a0": str(out / "a0.pt"),
              "history": meta["history"]}
    if args.backbone is not None:
        record["backbone"] = backbone_record(args.backbone)
    (out / "a0.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(OmegaConf.to_yaml({k: record[k] for k in ("a0", "sha256", "train_seconds", key)}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("rlnas", "train_a0"):  # the trainer's resume, init and per-epoch lines
        logging.getLogger(name).setLevel(logging.INFO)
    sys.exit(main())
