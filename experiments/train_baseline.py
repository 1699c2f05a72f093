"""The maximal architecture trained alone, for the same training time as a supernet run.

    .venv/bin/python experiments/train_baseline.py --supernet outputs/supernet/resnet50-cifar10-default
    .venv/bin/python experiments/train_baseline.py --quick          # resnet_tiny smoke run (~1 min)

Beside a supernet run instead of after it (both on one thread, same wall time; how the README's
comparison was made):

    .venv/bin/rlnas-train-supernet threads=1 &                     # the default recipe
    .venv/bin/python experiments/train_baseline.py --recipe default --epochs 8 --threads 1
    .venv/bin/python experiments/train_baseline.py --supernet outputs/supernet/resnet50-cifar10-default \
        --output outputs/supernet/resnet50-cifar10-default-baseline   # scores both once both are done

Reads the supernet run's ``supernet.pt`` meta (model, dataset, recipe, training seconds), measures
how many images/s the maximal network trains at, and trains it for as many epochs as fit in the
same time with the same optimizer, schedule shape, augmentation and label smoothing, but no
sandwich and no distillation (a one-phase recipe with nothing elastic: only the maximal
sub-network ever runs, which is exactly the plain network). ``max_seconds`` caps the run at the
supernet's training time. Both are then scored the same way (BN recalibration, full validation
split) and printed side by side: what weight sharing costs the maximal network, and what the
smallest sub-network gets for free.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rlnas.spaces import create_supernet
from rlnas.supernet import load_supernet
from rlnas.supernet.recipe import Phase, Recipe, phase_space, sandwich
from rlnas.supernet.train import compose_config, evaluate_subnet, make_optimizer, train_step, train_supernet
from rlnas.tasks import build_data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", help="supernet run directory (or its supernet.pt)")
    p.add_argument("--seconds", type=float, help="training time (default: the supernet's)")
    p.add_argument("--output", help="baseline run directory (default: <supernet dir>-baseline)")
    p.add_argument("--probe-steps", type=int, default=8, help="steps to measure the training speed")
    p.add_argument("--quick", action="store_true", help="resnet_tiny on 512 CIFAR images, 20 s each")
    p.add_argument("--recipe", help="train beside a supernet run: the recipe it uses (with --epochs)")
    p.add_argument("--model", default="resnet50", help="with --recipe")
    p.add_argument("--dataset", default="cifar10", help="with --recipe")
    p.add_argument("--epochs", type=int, help="with --recipe: epochs of the maximal network alone")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def quick_supernet(out: Path) -> Path:
    cfg = compose_config(["model=resnet_tiny", "dataset=tiny", "dataset.train_limit=512", "dataset.val_limit=256",
                          "recipe=tiny", f"output_dir={out}", "max_seconds=20", "log.progress=false",
                          "recipe.phases=[{name: max, epochs: 4}, {name: all, epochs: 4, "
                          "elastic: [depth, width, expand], sort_channels: true, lr_scale: 0.5}]"])
    return train_supernet(cfg)


def baseline_config(meta: dict, seconds: float, epochs: int, out: Path):
    """The supernet run's config with a single max-only phase of ``epochs`` epochs."""
    cfg = compose_config([f"model={meta['family']}", f"output_dir={out}"])
    cfg.model.kwargs = {k: v for k, v in meta["kwargs"].items() if k != "num_classes"}
    cfg.dataset = OmegaConf.create(meta["dataset_config"])
    recipe = dict(meta["recipe"])
    recipe.update(name=f"{recipe['name']}-baseline", num_random=0,
                  phases=[{"name": "max", "epochs": epochs, "elastic": []}])
    cfg.recipe = OmegaConf.create(recipe)
    cfg.resolution = meta["resolution"]
    cfg.seed = meta.get("seed", 0)
    cfg.max_seconds = seconds
    return cfg


def beside_config(args: argparse.Namespace):
    """A max-only run of ``args.recipe`` for ``args.epochs`` epochs, started without waiting for the
    supernet (same overrides as ``rlnas-train-supernet recipe.name=<recipe>-baseline ...``)."""
    out = args.output or f"outputs/supernet/{args.model}-{args.dataset}-{args.recipe}-baseline"
    return compose_config([f"model={args.model}", f"dataset={args.dataset}", f"recipe={args.recipe}",
                           f"recipe.name={args.recipe}-baseline", "recipe.num_random=0",
                           f"recipe.phases=[{{name: max, epochs: {args.epochs}, elastic: []}}]",
                           f"output_dir={out}", f"threads={args.threads}", "log.progress=false"])


def compare(supernet_path: Path, baseline: Path) -> None:
    """Score both runs the same way (BN recalibration, full validation split) and print them."""
    _, meta = load_supernet(supernet_path)
    _, bmeta = load_supernet(baseline)
    recal = 1000
    results = {"supernet": score(supernet_path, recal), "baseline": score(baseline, recal)}
    print(json.dumps({"seconds": {"supernet": meta["train_seconds"], "baseline": bmeta["train_seconds"]},
                      "epochs": {"supernet": meta["epochs"], "baseline": bmeta["epochs"]},
                      "val_top1": results}, indent=2))
    print(f"max subnet: supernet {results['supernet']['max']:.4f} ({meta['train_seconds'] / 60:.1f} min) vs "
          f"alone {results['baseline']['max']:.4f} ({bmeta['train_seconds'] / 60:.1f} min); min subnet from "
          f"the supernet: {results['supernet']['min']:.4f} (BN recalibrated, full val split)")


def probe_speed(meta: dict, steps: int) -> float:
    """Images/s of max-only training steps on real batches (the first step is a warm-up)."""
    recipe = Recipe.from_config(meta["recipe"])
    data = build_data(meta["dataset_config"], meta["resolution"])
    if recipe.train_images:
        data = build_data({**meta["dataset_config"], "train_limit": recipe.train_images}, meta["resolution"])
    net = create_supernet(meta["family"], **meta["kwargs"]).train()
    if recipe.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, recipe)
    space = phase_space(net.space, Phase("max", 1))
    times = []
    for step, (x, y) in enumerate(data.train_batches(recipe.batch_size, epoch=0)):
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        train_step(net, x, y, sandwich(space, 0, np.random.default_rng(0)), recipe, optimizer, nullcontext)
        times.append(time.perf_counter() - start)
        if step >= steps:
            break
    return recipe.batch_size / float(np.mean(times[1:] or times))


def score(path: Path, recal: int) -> dict[str, float]:
    supernet, meta = load_supernet(path)
    data = build_data(meta["dataset_config"], meta["resolution"])
    out = {}
    for kind, arch in (("max", supernet.space.max_arch()), ("min", supernet.space.min_arch())):
        out[kind] = evaluate_subnet(supernet, arch, data, None, recal)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.recipe:
        if not args.epochs:
            print("--recipe needs --epochs", file=sys.stderr)
            return 2
        print(train_supernet(beside_config(args)))
        return 0
    if args.quick:
        supernet_path = quick_supernet(Path("outputs/supernet/quick-baseline-demo"))
    elif args.supernet:
        supernet_path = Path(args.supernet)
        supernet_path = supernet_path / "supernet.pt" if supernet_path.is_dir() else supernet_path
    else:
        print("give --supernet <run dir>, --recipe <name> --epochs N, or --quick", file=sys.stderr)
        return 2
    _, meta = load_supernet(supernet_path)
    out = Path(args.output or f"{supernet_path.parent}-baseline")
    if not (out / "supernet.pt").is_file():
        seconds = args.seconds or float(meta["train_seconds"])
        speed = probe_speed(meta, args.probe_steps)
        epochs = max(1, math.floor(seconds * speed / meta["dataset"]["train_images"]))
        print(f"supernet: {supernet_path} ({meta['train_seconds']:.0f} s of training, {meta['epochs']} epochs)")
        print(f"maximal network alone: {speed:.1f} img/s -> {epochs} epochs in {seconds:.0f} s -> {out}")
        train_supernet(baseline_config(meta, seconds, epochs, out))
    compare(supernet_path, out / "supernet.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
