"""Cross-check: the INT8 IR the oracle compiled and timed gives the same latency in OpenVINO's
``benchmark_app`` (same IR, same CPU properties via -load_config, same ISA cap, sync API, one
request), within 5 %. The oracle runs before and after benchmark_app, to bracket drift.

    .venv/bin/python experiments/bench_benchmark_app.py            # ResNet-50, 224 px, both profiles
    .venv/bin/python experiments/bench_benchmark_app.py --quick    # 32 px, short runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from filelock import FileLock
from tabulate import tabulate

from rlnas.oracles.device import DeviceProfile, DeviceProfileError, load_profile
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.latency_results import LatencyResult
from rlnas.oracles.ratios import TimingConfig
from rlnas.oracles.worker_client import DEFAULT_LOCK_PATH

_MEDIAN = re.compile(r"Median:\s+([0-9.]+)\s*(ms|us)\b")
_AVERAGE = re.compile(r"Average:\s+([0-9.]+)\s*(ms|us)\b")
_COUNT = re.compile(r"Count:\s+(\d+)\s+iterations")
#: benchmark_app's request mode here: the synchronous API, one request (as the oracle's worker runs)
SYNC_ONE_REQUEST = ("-api", "sync", "-nireq", "1")


def resnet50():
    import torchvision

    return torchvision.models.get_model("resnet50", weights=None).eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", nargs="+", default=["kabylake_avx2", "icelake_vnni"])
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--seconds", type=float, default=15.0, help="benchmark_app -t and oracle min time")
    p.add_argument("--cache-dir", default="cache", help="the oracle's cache (IRs are reused)")
    p.add_argument("--out", default="outputs")
    p.add_argument("--quick", action="store_true", help="32 px, 3 s runs")
    if p.parse_args(argv).quick:  # quick changes defaults; explicit options still win
        p.set_defaults(resolution=32, seconds=3.0)
    return p.parse_args(argv)


def benchmark_app_path() -> str:
    beside = Path(sys.executable).with_name("benchmark_app")
    found = str(beside) if beside.is_file() else shutil.which("benchmark_app")
    if not found:
        raise FileNotFoundError("benchmark_app not found (it ships with the openvino wheel)")
    return found


def _ms(match: re.Match[str] | None) -> float | None:
    """A latency benchmark_app printed (in ms, or in us below a millisecond) in ms."""
    if match is None:
        return None
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def run_benchmark_app(ir: str, profile: DeviceProfile, inference_precision: str, seconds: float,
                      mode: Sequence[str] = SYNC_ONE_REQUEST) -> dict:
    """benchmark_app on ``ir`` with the oracle's compile properties and ISA cap, requests run as
    ``mode`` says (e.g. ``("-hint", "latency")``), under the machine lock: its median
    (``latency_ms``) and average (``average_ms``, None if not printed) latency."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"CPU": profile.compile_config(inference_precision)}, f)
        config = f.name
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env.update(profile.env())
    cmd = [benchmark_app_path(), "-m", ir, "-d", "CPU", "-load_config", config, *mode, "-t", f"{seconds:g}"]
    try:
        with FileLock(DEFAULT_LOCK_PATH):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds * 4 + 120)
    finally:
        os.unlink(config)
    text = proc.stdout + proc.stderr
    median = _MEDIAN.search(text)
    if proc.returncode != 0 or median is None:
        raise RuntimeError(f"benchmark_app failed ({proc.returncode}): {text[-2000:]}")
    count = _COUNT.search(text)
    return {"latency_ms": _ms(median), "average_ms": _ms(_AVERAGE.search(text)),
            "iterations": int(count.group(1)) if count else None,
            "command": " ".join(cmd), "env": profile.env()}


def alternate(irs: Mapping[str, str | Path], profile: DeviceProfile, seconds: float, rounds: int,
              mode: Sequence[str]) -> dict[str, list[dict]]:
    """:func:`run_benchmark_app` on every IR in turn, ``rounds`` times, the order reversed every
    other round so that the machine's drift falls on all alike: each IR's runs, in order."""
    runs: dict[str, list[dict]] = {name: [] for name in irs}
    for r in range(rounds):
        for name in list(irs)[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(run_benchmark_app(str(irs[name]), profile, profile.inference_precision, seconds, mode))
    return runs


def oracle_once(oracle: LatencyOracle, shape: tuple[int, ...]) -> LatencyResult:
    return oracle.measure(resnet50, shape, "int8", model_key="torchvision:resnet50", force=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = (1, 3, args.resolution, args.resolution)
    # Long blocks without a reference: benchmark_app times the model alone, so must the oracle.
    timing = TimingConfig(min_time_s=args.seconds, block_iters=50, min_iters=100)
    rows, raw = [], []
    for name in args.profiles:
        try:
            profile = load_profile(name)
        except DeviceProfileError as err:
            print(f"skipping {name}: {err}")
            continue
        with LatencyOracle(profile, cache_dir=args.cache_dir, timing=timing) as oracle:
            before = oracle_once(oracle, shape)
            if not before.ok:
                print(f"{name}: oracle failed: {before.reason}")
                continue
            app = run_benchmark_app(before.ir_path, profile, before.inference_precision, args.seconds)
            after = oracle_once(oracle, shape)
        oracle_ms = (before.latency_ms + after.latency_ms) / 2
        diff = (app["latency_ms"] - oracle_ms) / oracle_ms * 100
        rows.append({"profile": name, "res": args.resolution, "oracle before ms": f"{before.latency_ms:.3f}",
                     "benchmark_app ms": f"{app['latency_ms']:.3f}", "oracle after ms": f"{after.latency_ms:.3f}",
                     "diff %": f"{diff:+.1f}", "within 5 %": "PASS" if abs(diff) <= 5 else "FAIL",
                     "int8 kernels": ",".join(before.int8_kernels()[:3])})
        raw.append({"profile": name, "before": before.to_dict(), "after": after.to_dict(), "benchmark_app": app})
    if not rows:
        print("no profile runs on this host")
        return 1
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print("medians of single-image sync inference; diff = benchmark_app vs mean of the two oracle runs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_benchmark_app-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": raw}, indent=1))
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
