"""Detection latency baselines on every device profile, by the latency oracle.

Rows, per profile (host, kabylake_avx2, icelake_vnni):

- the maximal ``ssd_mobilenet_v1`` (SSD300-MobileNetV1, 1x3x300x300, raw loc/conf heads, no NMS)
  in FP32, FP16 (FP16-compressed IR run at the profile's precision), BF16 (where the ISA has it)
  and INT8 (NNCF, calibrated on coco128 images);
- Intel's production SSD + MobileNetV1 detector ``pedestrian-detection-adas-0002`` (1x3x384x672,
  DetectionOutput with NMS inside the graph) as shipped: the FP16 IR (FP16 and, where possible,
  BF16) and the FP16-INT8 IR, as reference points timed as is by ``LatencyOracle.measure_ir``
  (same protocol and store; keyed by the IR files' content).

The oracle interleaves a reference with every candidate; here that is the production INT8 IR, so
the ``ratio`` column is "latency / pedestrian-detection-adas-0002 INT8" taken under the same
machine conditions. Weights of the SSD are untrained: latency does not depend on their values.

    .venv/bin/python experiments/bench_detection_baselines.py            # full (quiet machine!)
    .venv/bin/python experiments/bench_detection_baselines.py --quick    # smoke: host, short timing

``--quick`` uses its own cache directory, so its noisy numbers never stand in for a full run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from rlnas.data.detection import build_detection_data
from rlnas.oracles.device import list_profiles, load_profile
from rlnas.oracles.irbuild import QuantizationConfig
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.ratios import TimingConfig
from rlnas.spaces import create_supernet
from rlnas.spaces.ssd import ElasticSSD  # noqa: F401  (registers the SSD families until __init__ imports it)

REPO = Path(__file__).resolve().parent.parent
PEDESTRIAN = REPO / "data" / "pedestrian-detection-adas-0002"
PEDESTRIAN_SHAPE = (1, 3, 384, 672)
QUICK_TIMING = TimingConfig(warmup_iters=3, block_iters=5, min_rounds=2, min_iters=10, min_time_s=0.2,
                            max_time_s=10.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=None, help="default: all (quick: host)")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="SSD precisions among fp32 fp16 bf16 int8 (default: all; quick: fp32 int8)")
    parser.add_argument("--quick", action="store_true", help="host only, short timing, own cache")
    parser.add_argument("--cache-dir", default="cache", help="oracle cache (quick: <cache-dir>/bench_quick)")
    parser.add_argument("--calib-images", type=int, default=32, help="coco128 images for NNCF")
    parser.add_argument("--no-reference", action="store_true", help="no interleaved reference, no ratio")
    parser.add_argument("--force", action="store_true", help="re-measure even if the store has a result")
    return parser.parse_args()


def ssd_precisions(profile_name: str, wanted: list[str] | None) -> list[str]:
    profile = load_profile(profile_name)
    chosen = wanted or ["fp32", "fp16", "bf16", "int8"]
    return [p for p in chosen if p != "bf16" or profile.supports("bf16")]


def row(model: str, ir: str, precision: str, result: Any, profile: str) -> dict[str, Any]:
    def fmt(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return {"profile": profile, "model": model, "ir": ir, "precision": precision,
            "hint": result.inference_precision or "-", "status": result.status,
            "median_ms": fmt(result.latency_ms), "p10_ms": fmt(result.p10_ms),
            "ratio": fmt(result.ratio, 3), "batch1_fps": fmt(1000.0 / result.latency_ms if result.latency_ms else None, 1),
            "ir_MB": fmt((result.ir_size_bytes or 0) / 1e6, 1), "int8_kernels": len(result.int8_kernels()),
            "cached": result.cached, "reason": result.reason[:60]}


def bench_profile(name: str, args: argparse.Namespace, net: Any, calib: list) -> list[dict[str, Any]]:
    reference = None if args.no_reference else PEDESTRIAN / "FP16-INT8" / "pedestrian-detection-adas-0002.xml"
    cache_dir = Path(args.cache_dir) / "bench_quick" if args.quick else Path(args.cache_dir)
    timing = QUICK_TIMING if args.quick else None
    quant = QuantizationConfig(subset_size=len(calib))
    rows = []
    with LatencyOracle(name, cache_dir=cache_dir, reference=reference, timing=timing, quantization=quant) as oracle:
        shape = net.input_shape
        plain = net.extract(net.space.max_arch()).eval()
        for precision in ssd_precisions(name, args.precisions):
            result = oracle.measure(plain, shape, precision=precision, calibration=calib, force=args.force)
            rows.append(row("ssd_mobilenet_v1 max (300)", "from torch", precision, result, name))
        for variant, precisions in (("FP16", ["fp16", "bf16"]), ("FP16-INT8", ["int8"])):
            xml = PEDESTRIAN / variant / "pedestrian-detection-adas-0002.xml"
            for precision in precisions:
                if precision == "bf16" and not load_profile(name).supports("bf16"):
                    continue
                if args.quick and precision == "bf16":
                    continue
                result = oracle.measure_ir(xml, PEDESTRIAN_SHAPE, precision=precision, force=args.force)
                rows.append(row("pedestrian-detection-adas-0002 (384x672)", variant, precision, result, name))
    return rows


def main() -> None:
    args = parse_args()
    if not PEDESTRIAN.is_dir():
        raise SystemExit(f"{PEDESTRIAN} missing: run `make data`")
    profiles = args.profiles or (["host"] if args.quick else list_profiles())
    if args.quick and args.precisions is None:
        args.precisions = ["fp32", "int8"]
    data = build_detection_data({"format": "yolo", "root": str(REPO / "data" / "coco128"),
                                 "train_split": "train2017", "val_split": "train2017"}, 300)
    calib = [images for images, _ in data.loader("calib", 1, max_images=args.calib_images)]
    net = create_supernet("ssd_mobilenet_v1", num_classes=80, resolution=300).eval()
    print(f"ssd_mobilenet_v1 max: {net.count_params(net.space.max_arch()) / 1e6:.2f} M params, "
          f"{net.count_macs(net.space.max_arch()) / 1e9:.2f} GMAC at 300 px; profiles {profiles}; "
          f"{'quick' if args.quick else 'full'} mode; pid {os.getpid()}")
    start, rows = time.time(), []
    for name in profiles:
        profile_rows = bench_profile(name, args, net, calib)
        print(tabulate(profile_rows, headers="keys", tablefmt="github"), flush=True)
        rows += profile_rows
    print("\nall profiles\n" + tabulate(rows, headers="keys", tablefmt="github"))
    print(f"ratio = latency / pedestrian-detection-adas-0002 FP16-INT8 in the same interleaved rounds; "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
