"""Repeatability of the latency oracle's speedup ratios (candidate / a0, a0 = torchvision
ResNet-50 topology) for >= 20 ResNet-50 variants: two passes ``--gap`` seconds apart, on each
CPU profile, at 32 and 128 px. Prints the median and 90th percentile of |pass 2 - pass 1| /
mean, per profile and resolution, for every ratio estimator and for naive medians (targets:
median <= 2 %, p90 <= 5 % for the ratio), and saves the raw results as JSON in outputs/.

IRs are built once (conversion and quantization do not depend on the profile) and reused by
every profile and both passes; both passes bypass the measurement cache.

    .venv/bin/python experiments/bench_repeatability.py              # full: ~25-40 min, quiet machine
    .venv/bin/python experiments/bench_repeatability.py --quick      # smoke run, numbers meaningless
    .venv/bin/python experiments/bench_repeatability.py --source space   # variants from rlnas.spaces
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from rlnas.oracles.device import DeviceProfileError, load_profile
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.ratios import RATIO_METHODS, TimingConfig

A0_KEY = "torchvision:resnet50"


@dataclass(frozen=True)
class Variant:
    """A candidate network: its cache identity and how to build it (only when its IR is missing)."""

    key: str
    build: Callable[[], Any]


def torchvision_resnet(layers: tuple[int, ...] = (3, 4, 6, 3), width_per_group: int = 64):
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, list(layers), width_per_group=width_per_group).eval()


def torchvision_variants(count: int, seed: int) -> list[Variant]:
    """``count`` distinct ResNet-50-like variants: fewer blocks per stage, thinner bottlenecks."""
    rng = np.random.default_rng(seed)
    seen: set[tuple] = {((3, 4, 6, 3), 64)}
    out = []
    while len(out) < count:
        layers = tuple(int(rng.integers(1, hi + 1)) for hi in (3, 4, 6, 3))
        wpg = int(rng.choice([32, 48, 64]))
        if (layers, wpg) in seen:
            continue
        seen.add((layers, wpg))
        out.append(Variant(f"tv-resnet:{list(layers)}:{wpg}",
                           lambda layers=layers, wpg=wpg: torchvision_resnet(layers, wpg)))
    return out


def space_variants(count: int, seed: int) -> list[Variant]:
    """Variants sampled from the resnet50 search space and extracted from its supernet."""
    from rlnas.spaces import create_supernet

    supernet = create_supernet("resnet50", num_classes=1000)
    rng = np.random.default_rng(seed)
    archs: dict[str, Any] = {}
    while len(archs) < count:
        arch = supernet.space.sample(rng)
        if arch != supernet.space.max_arch():
            archs.setdefault(arch.to_json(), arch)
    return [Variant(f"arch:{js}", lambda arch=arch: supernet.extract(arch).eval()) for js, arch in archs.items()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=24)
    p.add_argument("--profiles", nargs="+", default=["kabylake_avx2", "icelake_vnni"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[32, 128])
    p.add_argument("--gap", type=float, default=300.0, help="seconds between the two passes")
    p.add_argument("--source", choices=["torchvision", "space"], default="torchvision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-time", type=float, default=15.0, help="TimingConfig.max_time_s per measurement")
    p.add_argument("--target-rel-error", type=float, default=0.01,
                   help="TimingConfig.target_rel_error (0 = none): measure until the ratio is this precise")
    p.add_argument("--min-time", type=float, default=2.0, help="TimingConfig.min_time_s per measurement")
    p.add_argument("--block-iters", type=int, default=10)
    p.add_argument("--cache-dir", default="cache/bench_repeatability", help="IRs and measurements")
    p.add_argument("--out", default="outputs")
    p.add_argument("--quick", action="store_true", help="4 variants, 32 px, 10 s gap, short timing")
    if p.parse_args(argv).quick:  # quick changes defaults; explicit options still win
        p.set_defaults(variants=4, resolutions=[32], gap=10.0, min_time=0.3, max_time=2.0)
    return p.parse_args(argv)


def relative_diffs(first: list[float], second: list[float]) -> list[float]:
    """|b - a| / mean(a, b) in percent, per pair."""
    return [abs(b - a) / ((a + b) / 2) * 100 for a, b in zip(first, second, strict=True)]


def summarize(passes: list[list[dict]]) -> list[dict]:
    """One row per (profile, resolution, statistic): median and p90 of pass-to-pass differences."""
    groups: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
    for r1, r2 in zip(passes[0], passes[1], strict=True):
        if r1["status"] == "ok" and r2["status"] == "ok":
            groups.setdefault((r1["profile"], r1["input_shape"][2]), []).append((r1, r2))
    rows = []
    for (profile, res), pairs in sorted(groups.items()):
        stats: dict[str, Callable[[dict], float]] = {f"ratio:{m}": (lambda r, m=m: r["ratio_estimates"][m])
                                                      for m in RATIO_METHODS}
        stats["naive median ms"] = lambda r: r["latency_ms"]
        stats["naive p10 ms"] = lambda r: r["p10_ms"]
        for name, get in stats.items():
            diffs = relative_diffs([get(a) for a, _ in pairs], [get(b) for _, b in pairs])
            med, p90 = statistics.median(diffs), float(np.percentile(diffs, 90))
            target = "PASS" if med <= 2 and p90 <= 5 else "FAIL"
            rows.append({"profile": profile, "res": res, "n": len(pairs), "statistic": name,
                         "median |diff| %": f"{med:.2f}", "p90 |diff| %": f"{p90:.2f}",
                         "target (2/5 %)": target if name.startswith("ratio") else ""})
    return rows


def build_irs(oracle: LatencyOracle, variants: list[Variant], resolutions: list[int]) -> float:
    start = time.perf_counter()
    for res in tqdm(resolutions, desc="IRs (resolutions)"):
        shape = (1, 3, res, res)
        oracle.prepare_ir(torchvision_resnet, A0_KEY, shape, "int8")
        for v in tqdm(variants, desc=f"IRs {res} px", leave=False):
            oracle.prepare_ir(v.build, v.key, shape, "int8")
    return time.perf_counter() - start


def run_pass(oracles: list[LatencyOracle], variants: list[Variant], resolutions: list[int],
             label: str) -> list[dict]:
    out = []
    total = len(oracles) * len(resolutions) * len(variants)
    with tqdm(total=total, desc=label) as bar:
        for oracle in oracles:
            for res in resolutions:
                for v in variants:
                    r = oracle.measure(v.build, (1, 3, res, res), "int8", model_key=v.key, force=True)
                    out.append({"variant": v.key, **r.to_dict()})
                    bar.update()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profiles = []
    for name in args.profiles:
        try:
            profiles.append(load_profile(name))
        except DeviceProfileError as err:
            print(f"skipping {name}: {err}")
    if not profiles:
        print("no profile runs on this host")
        return 1
    make = space_variants if args.source == "space" else torchvision_variants
    variants = make(args.variants, args.seed)
    timing = TimingConfig(min_time_s=args.min_time, max_time_s=args.max_time, block_iters=args.block_iters,
                          target_rel_error=args.target_rel_error or None)
    oracles = [LatencyOracle(p, cache_dir=args.cache_dir, reference=torchvision_resnet, reference_key=A0_KEY,
                             timing=timing) for p in profiles]
    try:
        ir_s = build_irs(oracles[0], variants, args.resolutions)
        print(f"IRs ready in {ir_s:.1f} s ({len(variants) + 1} models x {len(args.resolutions)} resolutions)")
        first = run_pass(oracles, variants, args.resolutions, "pass 1")
        print(f"waiting {args.gap:g} s before pass 2", flush=True)
        time.sleep(args.gap)
        second = run_pass(oracles, variants, args.resolutions, "pass 2")
    finally:
        for o in oracles:
            o.close()
    rows = summarize([first, second])
    print(tabulate(rows, headers="keys", tablefmt="github"))
    failed = [r for r in first + second if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED {r['variant']} {r['profile']} {r['input_shape']}: {r['reason']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_repeatability-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "timing": asdict(timing), "ir_seconds": ir_s,
                                "summary": rows, "pass1": first, "pass2": second}, indent=1))
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
