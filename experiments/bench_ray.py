"""Unique evaluations per hour on this machine: the local backend against Ray with 1 and 2
accuracy workers, the Ray overhead per evaluation, and the rate model for N target nodes and M
accuracy workers.

    .venv/bin/python experiments/bench_ray.py --supernet outputs/supernet/resnet50-cifar10-from_a0 --budget 8
    .venv/bin/python experiments/bench_ray.py --experiment tiny --budget 6        # a quick look

Each configuration runs the same seeded random search (the same architectures) into its own
fresh cache directory, so that every evaluation is really measured (IR build, accuracy and
timing), on the embedded local Ray of this machine (which advertises the device):

- ``local``: today's backend, one evaluation at a time, ``threads`` torch threads;
- ``ray-1``: Ray, 1 accuracy actor with the same threads, 1 evaluation in flight: the same work
  as local, so the difference is Ray's overhead per evaluation;
- ``ray-2``: Ray, 2 accuracy actors of 1 thread each (2 cores not oversubscribed), 2 in flight.

On one machine timing excludes everything else (the machine-wide lock: accuracy and IR builds
take it shared, timing alone), so the gain of ray-2 is bounded by the timing share. The model
printed at the end: with N target nodes (each times one network at a time) and M accuracy workers,
unique evaluations per second ~= min(M / t_acc, N / t_lat, 1 / t_ir) where t_acc is one accuracy
evaluation, t_lat one timing (compile + interleaved rounds) on a target, t_ir one INT8 IR build on
the driver (serialized there), all measured here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from tabulate import tabulate

import rlnas
from rlnas.oracles.device import host_cpu_model
from rlnas.pipeline import run_search
from rlnas.search.history import read_history

CONFIGS = {
    "local": ["backend=local"],
    "ray-1": ["backend=ray", "backend.accuracy_workers=1", "backend.accuracy_threads=2", "backend.parallelism=1"],
    "ray-2": ["backend=ray", "backend.accuracy_workers=2", "backend.accuracy_threads=1", "backend.parallelism=2"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", help="supernet.pt or its directory (default: found or trained for the config)")
    p.add_argument("--experiment", default="resnet50_cifar10_avx2")
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--out", default="outputs/bench_ray")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, name: str) -> dict:
    root = Path(args.out) / name
    shutil.rmtree(root, ignore_errors=True)  # fresh caches: every evaluation measured
    overrides = [f"experiment={args.experiment}", "agent=random", f"budget={args.budget}", f"seed={args.seed}",
                 "finalists.k=0", "export.enabled=false", "logging.tensorboard=false", "logging.progress=false",
                 f"cache_dir={root / 'cache'}", f"run_dir={root / 'run'}", "threads=2",
                 *([f"supernet.checkpoint={args.supernet}"] if args.supernet else []), *CONFIGS[name], *args.overrides]
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = run_search(cfg, root / "run")
    history = [m for kind, _, m in read_history(root / "run" / "evaluations.jsonl") if kind == "candidate"]
    stages = {k: statistics.mean(m.stage_seconds.get(k, 0.0) for m in history)
              for k in ("accuracy/total", "latency/build", "latency/convert", "latency/quantize", "latency/compile",
                        "latency/measure", "latency/total")}
    seconds = summary["wall_seconds"]
    return {"name": name, "unique": summary["unique_evaluations"], "seconds": seconds,
            "per_hour": 3600 * summary["unique_evaluations"] / seconds, "per_eval_s": seconds / max(1, len(history)),
            "stages": stages, "archs": sorted(m.arch.to_json() for m in history)}


def rate_model(local: dict) -> dict[str, float]:
    """Per-evaluation times of the parts, from the local run."""
    s = local["stages"]
    t_ir = s["latency/convert"] + s["latency/quantize"] + s["latency/build"]
    return {"t_acc": s["accuracy/total"], "t_lat": s["latency/compile"] + s["latency/measure"], "t_ir": t_ir}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = {name: run_config(args, name) for name in args.configs}
    if len({tuple(r["archs"]) for r in results.values()}) != 1:
        print("warning: the configurations measured different architectures", file=sys.stderr)
    base = results.get("local")
    rows = []
    for r in results.values():
        overhead = r["per_eval_s"] - base["per_eval_s"] if base and r["name"] == "ray-1" else None
        rows.append([r["name"], r["unique"], f"{r['seconds']:.0f}", f"{r['per_hour']:.0f}", f"{r['per_eval_s']:.1f}",
                     f"{r['stages']['accuracy/total']:.1f}", f"{r['stages']['latency/total']:.1f}",
                     "-" if overhead is None else f"{overhead:+.2f}"])
    headers = ["config", "unique", "wall s", "unique / h", "s / eval", "accuracy s", "latency s", "Ray overhead s/eval"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    lines = [f"host: {host_cpu_model()}; experiment {args.experiment}, budget {args.budget}, seeded random search", "",
             table]
    if base:
        m = rate_model(base)
        lines += ["", f"rate model (from the local run): t_acc {m['t_acc']:.1f} s, t_lat {m['t_lat']:.1f} s, "
                  f"t_ir {m['t_ir']:.1f} s per evaluation; unique / h ~= 3600 * min(M / t_acc, N / t_lat, 1 / t_ir)"]
        for n, mm in ((1, 1), (1, 2), (2, 2), (2, 4), (4, 4)):
            rate = 3600 * min(mm / m["t_acc"], n / m["t_lat"], 1 / m["t_ir"]) if min(m.values()) > 0 else float("nan")
            lines.append(f"  N = {n} target nodes, M = {mm} accuracy workers: ~{rate:.0f} unique / h")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    (out / "bench_ray.json").write_text(json.dumps(results, indent=2))
    (out / "bench_ray.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
