"""The maximal architecture trained alone, for the same training time as a supernet run.

    .venv/bin/python experiments/train_baseline.py --supernet outputs/supernet/resnet50-cifar10-default
    .venv/bin/python experiments/train_baseline.py --quick          # resnet_tiny smoke run (~1 min)

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

from rlnas.data import build_data
from rlnas.spaces import create_supernet
from rlnas.supernet import load_supernet
from rlnas.supernet.train import (
    Phase,
    Recipe,
    compose_config,
    evaluate_subnet,
    make_optimizer,
    phase_space,
    sandwich,
    train_step,
    train_supernet,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", help="supernet run directory (or its supernet.pt)")
    p.add_argument("--seconds", type=float, help="training time (default: the supernet's)")
    p.add_argument("--output", help="baseline run directory (default: <supernet dir>-baseline)")
    p.add_argument("--probe-steps", type=int, default=8, help="steps to measure the training speed")
    p.add_argument("--quick", action="store_true", help="resnet_tiny on 512 CIFAR images, 20 s each")
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
    torch.set_num_threads(2)
    if args.quick:
        supernet_path = quick_supernet(Path("outputs/supernet/quick-baseline-demo"))
    elif args.supernet:
        supernet_path = Path(args.supernet)
        supernet_path = supernet_path / "supernet.pt" if supernet_path.is_dir() else supernet_path
    else:
        print("give --supernet <run dir> or --quick", file=sys.stderr)
        return 2
    _, meta = load_supernet(supernet_path)
    seconds = args.seconds or float(meta["train_seconds"])
    speed = probe_speed(meta, args.probe_steps)
    train_images = meta["dataset"]["train_images"]
    epochs = max(1, math.floor(seconds * speed / train_images))
    out = Path(args.output or f"{supernet_path.parent}-baseline")
    print(f"supernet: {supernet_path} ({meta['train_seconds']:.0f} s of training, {meta['epochs']} epochs)")
    print(f"maximal network alone: {speed:.1f} img/s -> {epochs} epochs in {seconds:.0f} s -> {out}")
    baseline = train_supernet(baseline_config(meta, seconds, epochs, out))
    recal = 1000
    results = {"supernet": score(supernet_path, recal), "baseline": score(baseline, recal)}
    _, bmeta = load_supernet(baseline)
    print(json.dumps({"seconds": {"supernet": meta["train_seconds"], "baseline": bmeta["train_seconds"]},
                      "epochs": {"supernet": meta["epochs"], "baseline": bmeta["epochs"]},
                      "val_top1": results}, indent=2))
    print(f"max subnet: supernet {results['supernet']['max']:.4f} vs alone {results['baseline']['max']:.4f}; "
          f"min subnet from the supernet: {results['supernet']['min']:.4f} (BN recalibrated, full val split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
