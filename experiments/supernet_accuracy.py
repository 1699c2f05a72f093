"""FP32 and INT8 accuracy of trained supernets' largest, smallest and middle sub-networks, beside a0.

    .venv/bin/python experiments/supernet_accuracy.py outputs/supernet/resnet50-cifar10-from_a0 \
        outputs/supernet/resnet50-cifar10-scratch-1h --a0 ../shared/models/resnet50-cifar10-a0.pt
    .venv/bin/python experiments/supernet_accuracy.py <run dir> --random 3 --eval-images 2000
    .venv/bin/python experiments/supernet_accuracy.py <supernet> --finalists <run>/finalists/finalists.json

Scored on the validation images (the search's; for CIFAR-10 a seeded half of the test split).
a0 (``--a0``: the user's trained model) is scored as deployed (its own BN statistics), FP32 and
INT8, by the same pipeline; the last column is every subnet's INT8 accuracy over a0's FP32, the
constraint's ratio (>= 0.99 is feasible at tau = 0.99).

Every sub-network goes through the accuracy oracle exactly as in a search (BN recalibration on
2000 training images, PyTorch FP32 top-1, NNCF INT8 with 300 real calibration images, OpenVINO
INT8 top-1; the whole validation split by default), with the same measurement store, so a later
search with the same settings reuses these results. The "middle" sub-networks are the uniform one
(every stage one block shorter, middle width and expand ratio) and ``--random`` seeded random
ones. Prints a markdown table (the README's) and writes it with the raw results as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlnas.arch import Arch, SearchSpace
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.supernet import load_supernet
from rlnas.supernet.a0 import build_a0, file_sha256
from rlnas.tasks import build_data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("supernet", nargs="+", help="supernet.pt files or their training directories")
    p.add_argument("--a0", help="the trained a0 (torchvision-format state dict) to compare with")
    p.add_argument("--random", type=int, default=3, help="seeded random sub-networks besides max/middle/min")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finalists", nargs="*", default=[], metavar="FINALISTS_JSON",
                   help="also score these runs' finalists' architectures (<run>/finalists/finalists.json)")
    p.add_argument("--eval-images", type=int, default=None, help="default: the whole validation split")
    p.add_argument("--recal-images", type=int, default=2000)
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", default="cache/measurements.sqlite", help="measurement store ('' : none)")
    p.add_argument("--output", help="JSON file (default: <supernet dir>/accuracy_table.json)")
    return p.parse_args(argv)


def middle_arch(space: SearchSpace) -> Arch:
    """Every stage one block shorter than the maximum, the middle width and expand choices."""
    depths = tuple(max(lo, hi - 1) for lo, hi in zip(space.min_depths, space.max_depths))
    width = space.width_choices[len(space.width_choices) // 2]
    expand = space.expand_choices[len(space.expand_choices) // 2] if space.has_expand else None
    expands = tuple((expand,) * d for d in depths) if space.has_expand else ()
    return Arch(space.family, depths, (width,) * space.num_stages, expands)


def finalist_archs(paths: list[str]) -> list[tuple[str, Arch]]:
    """``(run/finalist, arch)`` of every finalist in the given ``finalists.json`` files."""
    out = []
    for path in paths:
        run = Path(path).resolve().parent.parent.name
        out += [(f"{run}/{f['name']}", Arch.from_dict(f["arch"])) for f in json.loads(Path(path).read_text())["finalists"]]
    return out


def subnets(space: SearchSpace, random: int, seed: int, finalists: list[str]) -> list[tuple[str, Arch]]:
    rng = np.random.default_rng(seed)
    return ([("largest (a0)", space.max_arch()), ("middle (uniform)", middle_arch(space))]
            + [(f"random {i + 1}", space.sample(rng)) for i in range(random)]
            + finalist_archs(finalists) + [("smallest", space.min_arch())])


def table(rows: list[dict], a0_fp32: float) -> str:
    lines = ["| supernet | sub-network | arch | params (M) | MMACs | FP32 top-1 | INT8 top-1 | INT8 / FP32(a0) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['supernet']} | {r['name']} | `{r['arch']}` | {r['params'] / 1e6:.2f} | "
                     f"{r['macs'] / 1e6:.0f} | {r['acc_fp32']:.4f} | {r['acc_int8']:.4f} | "
                     f"{r['acc_int8'] / a0_fp32:.3f} |")
    return "\n".join(lines)


def score_supernet(path: str, args: argparse.Namespace, a0_path: str | None) -> tuple[list[dict], dict | None]:
    """Rows of one supernet's subnets, and a0's row when ``a0_path`` is given (same data and oracle)."""
    supernet, meta = load_supernet(path)
    data = build_data(meta["dataset_config"], meta["resolution"])
    oracle = AccuracyOracle(supernet, data, args.store or None, meta["checkpoint_id"],
                            recal_images=args.recal_images, calib_images=args.calib_images,
                            eval_images=args.eval_images, threads=args.threads)
    label = f"{meta['recipe']['name']} ({meta['train_seconds'] / 60:.0f} min)"
    print(f"# {path}: {meta['family']} {meta['kwargs']}, recipe {meta['recipe']['name']}, "
          f"{meta['epochs']} epochs, {meta['train_seconds'] / 60:.1f} min of training; "
          f"{data.name} @ {data.resolution} px, {oracle.eval_count} validation images", flush=True)
    a0_row = None
    if a0_path:
        model = build_a0(meta["family"], meta["kwargs"], a0_path)
        result = oracle.evaluate_model(model, f"a0:{file_sha256(a0_path)[:16]}")
        a0_row = {"supernet": "-", "name": "a0 as deployed", "arch": supernet.space.max_arch().short(),
                  "params": sum(p.numel() for p in model.parameters()),
                  "macs": supernet.count_macs(supernet.space.max_arch(), data.resolution),
                  "acc_fp32": result.acc_fp32, "acc_int8": result.acc_int8, "eval_images": oracle.eval_count}
    rows = []
    for name, arch in subnets(supernet.space, args.random, args.seed, args.finalists):
        start = time.perf_counter()
        result = oracle.evaluate(arch)
        if not result.ok:
            raise RuntimeError(f"{name}: {result.reason}")
        rows.append({"supernet": label, "name": name, "arch": arch.short(), "arch_json": arch.to_json(),
                     "params": supernet.count_params(arch), "macs": supernet.count_macs(arch, data.resolution),
                     "acc_fp32": result.acc_fp32, "acc_int8": result.acc_int8, "cached": result.cached,
                     "seconds": time.perf_counter() - start, "checkpoint_id": meta["checkpoint_id"],
                     "train_seconds": meta["train_seconds"], "eval_images": oracle.eval_count})
        print(f"  {name}: {arch.short()} fp32 {result.acc_fp32:.4f} int8 {result.acc_int8:.4f} "
              f"({rows[-1]['seconds']:.1f} s{', cached' if result.cached else ''})", flush=True)
    return rows, a0_row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, a0_row = [], None
    for path in args.supernet:
        try:
            got, a0 = score_supernet(path, args, args.a0)
        except RuntimeError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        rows += got
        a0_row = a0_row or a0
    reference = a0_row["acc_fp32"] if a0_row else rows[0]["acc_fp32"]
    text = table(([a0_row] if a0_row else []) + rows, reference)
    print("\n" + text)
    base = Path(args.supernet[0])
    out = Path(args.output or (base if base.is_dir() else base.parent) / "accuracy_table.json")
    out.write_text(json.dumps({"supernets": args.supernet, "a0": a0_row, "rows": rows, "markdown": text},
                              indent=2) + "\n")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
