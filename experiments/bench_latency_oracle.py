"""Cost of the latency oracle: per new candidate (with stage breakdown), per cache hit, and the
spread of repeated medians, for ResNet-50 variants at 32 and 224 px on each CPU profile.

Targets: <= 5 s per new candidate at 32 px, <= 10 ms per cache hit.

    .venv/bin/python experiments/bench_latency_oracle.py            # full (quiet machine)
    .venv/bin/python experiments/bench_latency_oracle.py --quick    # smoke run, numbers meaningless
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tabulate import tabulate

from rlnas.oracles.device import DeviceProfileError, load_profile
from rlnas.oracles.irbuild import structural_key
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.ratios import TimingConfig

STAGES = ("build", "convert", "quantize", "save", "compile", "measure")
REFERENCE_KEY = "torchvision:resnet50"


def resnet50_variant(layers: tuple[int, ...] = (3, 4, 6, 3), width_per_group: int = 64):
    """A torchvision ResNet-50-shaped network (Bottleneck blocks, random weights)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, list(layers), width_per_group=width_per_group).eval()


# Distinct from a0 and from each other, so every one is a cache miss with a new IR.
CANDIDATES = [((2, 3, 4, 2), 64), ((3, 2, 5, 1), 48), ((1, 4, 3, 3), 32), ((2, 2, 2, 2), 64),
              ((3, 4, 2, 1), 48), ((1, 1, 6, 3), 64)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", nargs="+", default=["kabylake_avx2", "icelake_vnni"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[32, 224])
    p.add_argument("--candidates", type=int, default=3, help="new candidates timed per profile/resolution")
    p.add_argument("--repeats", type=int, default=5, help="repeated measurements of one candidate")
    p.add_argument("--hits", type=int, default=20, help="cache hits timed")
    p.add_argument("--max-time", type=float, default=15.0, help="TimingConfig.max_time_s per measurement")
    p.add_argument("--target-rel-error", type=float, default=0.01,
                   help="TimingConfig.target_rel_error (0 = none): measure until the ratio is this precise")
    p.add_argument("--min-time", type=float, default=1.0, help="TimingConfig.min_time_s")
    p.add_argument("--out", default="outputs", help="directory for the raw JSON")
    p.add_argument("--quick", action="store_true", help="32 px, 1 candidate, 2 repeats, short timing")
    if p.parse_args(argv).quick:  # quick changes defaults; explicit options still win
        p.set_defaults(resolutions=[32], candidates=1, repeats=2, hits=10, min_time=0.3, max_time=2.0)
    args = p.parse_args(argv)
    args.candidates = min(args.candidates, len(CANDIDATES))
    return args


def timing_from_args(args: argparse.Namespace) -> TimingConfig:
    return TimingConfig(min_time_s=args.min_time, max_time_s=args.max_time,
                        target_rel_error=args.target_rel_error or None)


def available_profiles(names: list[str]) -> list:
    out = []
    for name in names:
        try:
            out.append(load_profile(name))
        except DeviceProfileError as err:
            print(f"skipping {name}: {err}")
    return out


def bench_one(profile, res: int, args: argparse.Namespace, cache_dir: Path) -> dict:
    """New-candidate costs, cache-hit times and repeat spread for one profile and resolution."""
    timing = timing_from_args(args)
    shape = (1, 3, res, res)
    with LatencyOracle(profile, cache_dir=cache_dir, reference=resnet50_variant,
                       reference_key=REFERENCE_KEY, timing=timing) as oracle:
        start = time.perf_counter()
        a0 = oracle.measure(resnet50_variant, shape, model_key=REFERENCE_KEY)
        warm_s = time.perf_counter() - start
        new = []
        for layers, wpg in CANDIDATES[:args.candidates]:
            start = time.perf_counter()
            r = oracle.measure(lambda layers=layers, wpg=wpg: resnet50_variant(layers, wpg), shape,
                               model_key=f"tv-resnet:{layers}:{wpg}")
            new.append({"wall_s": time.perf_counter() - start, **r.to_dict()})
        layers, wpg = CANDIDATES[0]
        key = f"tv-resnet:{layers}:{wpg}"
        hits = []
        for _ in range(args.hits):
            start = time.perf_counter()
            hit = oracle.measure(lambda: None, shape, model_key=key)
            hits.append((time.perf_counter() - start) * 1e3)
            assert hit.cached
        module = resnet50_variant(layers, wpg)
        start = time.perf_counter()
        structural_key(module)
        struct_key_ms = (time.perf_counter() - start) * 1e3
        repeats = [oracle.measure(lambda: None, shape, model_key=key, force=True) for _ in range(args.repeats)]
    return {"profile": profile.name, "res": res, "warm_s": warm_s, "a0": a0.to_dict(), "new": new,
            "hit_ms": hits, "struct_key_ms": struct_key_ms, "repeats": [r.to_dict() for r in repeats]}


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) * 100 if len(values) > 1 else 0.0


def summarize(row: dict) -> dict:
    new = [n for n in row["new"] if n["status"] == "ok"]
    stage = {s: statistics.mean(n["stage_seconds"].get(s, 0.0) for n in new) if new else float("nan")
             for s in STAGES}
    reps = [r for r in row["repeats"] if r["status"] == "ok"]
    return {
        "profile": row["profile"], "res": row["res"],
        "a0 ms": f"{row['a0']['latency_ms']:.2f}" if row["a0"]["status"] == "ok" else "failed",
        "new cand s": f"{statistics.mean(n['wall_s'] for n in row['new']):.2f}",
        **{f"{s} s": f"{v:.2f}" for s, v in stage.items()},
        "hit ms (mean/max)": f"{statistics.mean(row['hit_ms']):.2f}/{max(row['hit_ms']):.2f}",
        "+ms without model_key": f"{row['struct_key_ms']:.1f}",
        "median spread %": f"{spread([r['latency_ms'] for r in reps]):.1f}" if reps else "-",
        "ratio spread %": f"{spread([r['ratio'] for r in reps]):.1f}" if reps else "-",
    }


def check_targets(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        cost = statistics.mean(n["wall_s"] for n in row["new"])
        if row["res"] == 32:
            lines.append(f"{row['profile']} 32 px: new candidate {cost:.2f} s "
                         f"{'PASS' if cost <= 5 else 'FAIL'} (target <= 5 s)")
        hit = statistics.mean(row["hit_ms"])
        lines.append(f"{row['profile']} {row['res']} px: cache hit {hit:.2f} ms "
                     f"{'PASS' if hit <= 10 else 'FAIL'} (target <= 10 ms)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profiles = available_profiles(args.profiles)
    if not profiles:
        print("no profile runs on this host")
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        for profile in profiles:
            for res in args.resolutions:
                print(f"... {profile.name} {res} px", flush=True)
                rows.append(bench_one(profile, res, args, Path(tmp) / profile.name))
    print(tabulate([summarize(r) for r in rows], headers="keys", tablefmt="github"))
    print("new cand s = wall time of measure() on a new model (build + stages); a0 ms = median latency "
          "of the reference; +ms without model_key = hashing the module's structure on a hit; "
          "spreads = (max-min)/median over repeated measurements of one candidate")
    print("\n".join(check_targets(rows)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_latency_oracle-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "timing": asdict(timing_from_args(args)),
                                "rows": rows}, indent=1))
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
