"""Cost of the accuracy oracle per candidate, cache-hit time, and supernet training throughput.

    .venv/bin/python experiments/bench_accuracy_oracle.py                 # ResNet-50, CIFAR-10, 32 px, 10k test images
    .venv/bin/python experiments/bench_accuracy_oracle.py --checkpoint outputs/supernet/<run>   # trained weights
    .venv/bin/python experiments/bench_accuracy_oracle.py --quick         # a smoke run (~1-2 min)

Without ``--checkpoint`` the supernet has random weights: every stage costs the same as with
trained weights (same shapes, same kernels), only the accuracies are meaningless. Candidates are
a0 (the maximal network, the worst case), the minimal network and random ones. Target: <= 15 s
per candidate on 2 cores. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import rlnas
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.oracles.store import MeasurementStore
from rlnas.spaces import create_supernet
from rlnas.supernet import load_supernet
from rlnas.supernet.recipe import Phase, Recipe, phase_space, sandwich
from rlnas.supernet.train import autocast_factory, make_optimizer, train_step
from rlnas.tasks import build_data

STAGES = ("extract", "recalibrate", "eval_fp32", "convert", "quantize", "compile", "eval_int8", "total")
TARGET_S = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--stem", default="imagenet", help="imagenet (7x7/2 + max pool) or cifar (stride 1, no pool)")
    p.add_argument("--dataset", default=str(rlnas.CONF_DIR / "dataset" / "cifar10.yaml"))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--checkpoint", help="a trained supernet.pt (or its directory)")
    p.add_argument("--candidates", type=int, default=5, help="a0, min, then random archs")
    p.add_argument("--eval-images", type=int, default=None, help="default: the whole validation split")
    p.add_argument("--recal-images", type=int, default=2000)
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=6, help="steps per throughput measurement")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--train-precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                   help="training throughput in each (bf16: autocast; fast only with avx512_bf16 or AMX)")
    p.add_argument("--train-only", action="store_true", help="training throughput alone, no oracle")
    p.add_argument("--no-warmup", action="store_true", help="time the first candidate cold")
    p.add_argument("--quick", action="store_true", help="1000 eval images, 2 candidates, 2 train steps")
    args = p.parse_args(argv)
    if args.quick:
        args.eval_images, args.recal_images, args.candidates = 1000, 500, 2
        args.train_steps, args.train_batch = 2, 64
    return args


def build(args: argparse.Namespace):
    from omegaconf import OmegaConf

    if args.checkpoint:
        supernet, meta = load_supernet(args.checkpoint)
        data = build_data(meta["dataset_config"], meta["resolution"])
        return supernet, data, meta["checkpoint_id"], f"{args.checkpoint} ({meta['family']} {meta['kwargs']})"
    data = build_data(OmegaConf.load(args.dataset), args.resolution)
    torch.manual_seed(0)
    supernet = create_supernet(args.model, num_classes=data.num_classes, stem=args.stem).eval()
    return supernet, data, f"random-init-{time.time_ns()}", f"{args.model} stem={args.stem}, random weights"


def bench_oracle(args: argparse.Namespace, supernet, data, checkpoint_id: str) -> list[dict]:
    space = supernet.space
    rng = np.random.default_rng(0)
    archs = [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(max(0, args.candidates - 2))]
    with tempfile.TemporaryDirectory() as tmp:
        store = MeasurementStore(Path(tmp) / "store.sqlite")
        oracle = AccuracyOracle(supernet, data, store, checkpoint_id, recal_images=args.recal_images,
                                calib_images=args.calib_images, eval_images=args.eval_images,
                                batch_size=args.batch_size, threads=args.threads)
        t = time.perf_counter()
        data.val_images(args.eval_images)
        print(f"val tensors prepared in {time.perf_counter() - t:.2f} s (cached for all candidates)")
        if not args.no_warmup:  # first-call costs (NNCF/OpenVINO imports, oneDNN JIT) are not per candidate
            t = time.perf_counter()
            AccuracyOracle(supernet, data, None, "warmup", recal_images=64, calib_images=32, eval_images=64,
                           batch_size=args.batch_size, threads=args.threads).evaluate(space.min_arch())
            print(f"warm-up (first-call costs, excluded): {time.perf_counter() - t:.2f} s")
        rows = []
        for i, arch in enumerate(archs[:args.candidates]):
            r = oracle.evaluate(arch)
            rows.append({"arch": arch.short(), "status": r.status, "reason": r.reason, "fp32": r.acc_fp32,
                         "int8": r.acc_int8, **{s: r.stage_seconds.get(s, 0.0) for s in STAGES},
                         "int8_prims": r.details.get("int8_primitives")})
            print_row(i, rows[-1])
        t = time.perf_counter()
        hit = oracle.evaluate(archs[0])
        rows.append({"cache_hit_s": time.perf_counter() - t, "cached": hit.cached})
    return rows


def print_row(i: int, row: dict) -> None:
    accs = f"fp32 {row['fp32']:.4f} int8 {row['int8']:.4f}" if row["status"] == "ok" else row["reason"][:80]
    stages = " ".join(f"{s} {row[s]:.2f}" for s in STAGES)
    print(f"  [{i}] {row['arch']}: {accs} | {stages} | int8 primitives {row['int8_prims']}", flush=True)


def bench_training(args: argparse.Namespace, supernet, data) -> dict[str, float]:
    """Images/s of training steps on real augmented batches, in each of ``--train-precisions``:
    maximal network alone, and the sandwich (max + min + 2 random, in-place distillation)."""
    torch.set_num_threads(args.threads)
    net = supernet.train().to(memory_format=torch.channels_last)
    out = {}
    t = time.perf_counter()
    n = 0
    for x, _ in data.train_batches(args.train_batch, epoch=0):
        n += len(x)
        if n >= 20 * args.train_batch:
            break
    out["loader_img_s"] = n / (time.perf_counter() - t)
    for precision in args.train_precisions:
        recipe = Recipe("bench", (Phase("all", 1, ("depth", "width", "expand")),), batch_size=args.train_batch,
                        precision=precision)
        _, autocast = autocast_factory(precision)
        optimizer = make_optimizer(net, recipe)
        for name, num_random, elastic in (("max_only", 0, ()), ("sandwich_n2", 2, ("depth", "width", "expand"))):
            space = phase_space(net.space, Phase(name, 1, elastic))
            times = []
            for step, (x, y) in enumerate(data.train_batches(args.train_batch, epoch=1)):
                x = x.contiguous(memory_format=torch.channels_last)
                start = time.perf_counter()
                train_step(net, x, y, sandwich(space, num_random, np.random.default_rng(step)), recipe, optimizer,
                           autocast)
                times.append(time.perf_counter() - start)
                if step >= args.train_steps:  # the first step warms up oneDNN and is dropped
                    break
            key = f"{name}_{precision}_img_s"
            out[key] = args.train_batch / statistics.mean(times[1:])
            print(f"  train {name} {precision}: {out[key]:.1f} img/s (batch {args.train_batch}, "
                  f"{len(times) - 1} steps, {statistics.mean(times[1:]):.2f} s/step)", flush=True)
    net.eval()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    supernet, data, checkpoint_id, what = build(args)
    n_eval = len(data.val) if args.eval_images is None else min(args.eval_images, len(data.val))
    print(f"# accuracy oracle: {what}, {data.name} @ {data.resolution} px, {n_eval} eval images, "
          f"recal {args.recal_images}, calib {args.calib_images}, batch {args.batch_size}, threads {args.threads}")
    if args.train_only:
        print("# training throughput")
        train = bench_training(args, supernet, data)
        print("training: " + ", ".join(f"{k} {v:.1f}" for k, v in train.items()))
        return 0
    rows = bench_oracle(args, supernet, data, checkpoint_id)
    cands = [r for r in rows if "total" in r and r["status"] == "ok"]
    hit = rows[-1]
    print("# training throughput")
    train = bench_training(args, supernet, data)
    print("\n# summary")
    if cands:
        mean = {s: statistics.mean(r[s] for r in cands) for s in STAGES}
        print("mean per candidate: " + ", ".join(f"{s} {mean[s]:.2f} s" for s in STAGES))
        a0 = cands[0]["total"] if rows[0]["status"] == "ok" else float("nan")
        no_fp32 = mean["total"] - mean["eval_fp32"]
        print(f"a0 (max): {a0:.2f} s; mean candidate: {mean['total']:.2f} s; without the candidate FP32 "
              f"pass (fp32_images=0): {no_fp32:.2f} s; target <= {TARGET_S:.0f} s: "
              f"{'met' if mean['total'] <= TARGET_S else 'met only with fp32_images=0' if no_fp32 <= TARGET_S else 'NOT met'}")
    print(f"cache hit: {hit['cache_hit_s'] * 1000:.1f} ms (cached={hit['cached']})")
    print("training: " + ", ".join(f"{k} {v:.1f}" for k, v in train.items()))
    failed = [r for r in rows if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
