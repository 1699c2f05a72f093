"""The seed table's row of a finished search: a0 in FP32, FP16 and INT8 beside the exported INT8
network, scored on the held-out images and timed in the same interleaved rounds (the finalists'
confirmation protocol) on the run's device profile. Issue 21's detection row, and issue 23's row for
a classifier.

    .venv/bin/python experiments/seed_row.py outputs/campaign-detection/avx2-ppo_model
    .venv/bin/python experiments/seed_row.py <run> --device icelake_vnni --passes 3

The networks (IRs written under ``--out``, default ``<run>/seed_row``):

- ``a0_fp32``: a0 converted by OpenVINO, FP32 weights;
- ``a0_fp16``: the same IR with FP16-compressed weights (``compress_to_fp16``), as OpenVINO ships FP16
  IRs. Both run at the profile's ``INFERENCE_PRECISION_HINT`` (recorded): a CPU without FP16
  arithmetic (Kaby Lake, Ice Lake) computes an FP16 IR in FP32, so its time is FP32's and its
  accuracy that of FP16-rounded weights;
- ``a0``: a0 in INT8 (NNCF PTQ as every candidate): the finalists' a0 IR, or written here;
- ``exported``: the run's ``export/model.xml``.

Scores: the task's metrics (top-1; or mAP@.5 and mAP@[.5:.95]) on the held-out images by the accuracy
oracle's OpenVINO evaluation, and a0's PyTorch FP32 score (the bound's reference). Speed-ups: the
inverse of the median over rounds of the exported IR's 10th-percentile time over the a0 variant's in
the same round, with its 95 % bootstrap CI (median and envelope over the passes). Decoding + NMS
are timed under the machine-wide lock, alone. A detector's IR ends at the raw loc/conf
outputs: decoding and NMS (``rlnas.detection.boxes.postprocess``, PyTorch) are outside every timed IR;
their cost per image is measured apart and printed. The throughput-mode speed-up over a0 INT8 is the
export report's. Writes ``<out>/seed_row.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from baselines import A0_NAME, a0_entry, confirm_all, relative_to, run_config  # experiments/
from hydra.errors import HydraException
from latency_agreement import timing_overrides  # experiments/
from omegaconf.errors import OmegaConfBaseException
from tabulate import tabulate

from rlnas import machinelock
from rlnas.detection.boxes import postprocess
from rlnas.errors import UserError
from rlnas.export import load_exported, setup_of_run, torch_size_bytes
from rlnas.finalists import write_int8_ir
from rlnas.oracles.device import host_cpu_model
from rlnas.ovtools import compile_cpu, ir_size, library_versions
from rlnas.runsetup import RunSetup

#: the rows, in the table's order: (name, what it is)
NETWORKS = {"a0_fp32": "a0, FP32 IR", "a0_fp16": "a0, FP16 IR (compressed weights)", A0_NAME: "a0, INT8 (NNCF PTQ)",
            "exported": "found, INT8 (the export)"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished rlnas-search run directory (with export/)")
    p.add_argument("--device", default=None, help="device profile (default: the run's)")
    p.add_argument("--passes", type=int, default=None, help="confirmation passes (default: the run's finalists')")
    p.add_argument("--timing", action="append", default=[], metavar="KEY=VALUE",
                   help="confirmation timing settings (TimingConfig fields), e.g. max_time_s=30")
    p.add_argument("--postprocess-images", type=int, default=100,
                   help="held-out images whose decoding and NMS are timed (a detector)")
    p.add_argument("--out", default=None, help="default: <run>/seed_row")
    p.add_argument("--override", action="append", default=[], help="Hydra override of the run's config")
    return p.parse_args(argv)


def float_irs(setup: RunSetup, out: Path) -> dict[str, Path]:
    """a0's FP32 IR and its FP16-compressed copy (static batch 1, named as every IR of the run). The
    pair written before for the same a0 and library versions is kept (``ir.key`` beside it): a
    rewritten IR's bytes, and so its stored timings' key, may change."""
    irs = {"a0_fp32": out / "a0_fp32" / "model.xml", "a0_fp16": out / "a0_fp16" / "model.xml"}
    stamp = out / "ir.key"
    identity = json.dumps({"a0": setup.a0.sha256, "resolution": setup.data.resolution, **library_versions()},
                          sort_keys=True)
    if all(p.is_file() and p.with_suffix(".bin").is_file() for p in irs.values()) and \
            stamp.is_file() and stamp.read_text() == identity:
        return irs
    with machinelock.shared(setup.accuracy.lock_path):
        ov_model = setup.accuracy.pipeline.convert(setup.accuracy, setup.a0.model.eval())
        write_int8_ir(setup, ov_model, irs["a0_fp32"])  # saved as is: FP32 weights
        irs["a0_fp16"].parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.Core().read_model(str(irs["a0_fp32"])), str(irs["a0_fp16"]), compress_to_fp16=True)
    stamp.write_text(identity)
    return irs


def held_out_scores(setup: RunSetup, xml: Path) -> dict[str, float]:
    """The task's metrics of an IR on the held-out images, evaluated as the oracle evaluates INT8."""
    oracle = setup.holdout
    with machinelock.shared(oracle.lock_path):
        compiled = oracle.compile(ov.Core().read_model(str(xml)))
        scores, _ = oracle.pipeline.int8_eval(oracle, compiled, oracle.eval_count)
    return {k: float(v) for k, v in scores.items()}


def postprocess_ms(setup: RunSetup, run: Path, xml: Path, images: int) -> dict[str, Any] | None:
    """A detector's decoding + NMS per image (PyTorch, the profile's threads) on the exported IR's
    raw outputs for held-out images: median and p90 ms; None for a classifier."""
    if setup.accuracy.task != "detection":
        return None
    priors = load_exported(run / "export" / "model.pt").priors
    profile = setup.latency.profile
    compiled = compile_cpu(ov.Core().read_model(str(xml)), 1, setup.data.resolution, "f32", profile.threads)
    outputs = []
    for batch, _ in setup.data.loader("holdout", 1, max_images=images):
        result = compiled(batch.numpy())
        outputs.append(tuple(torch.from_numpy(result[compiled.output(name)]) for name in ("loc", "conf")))
    times, threads = [], torch.get_num_threads()
    torch.set_num_threads(int(profile.threads))
    try:
        with machinelock.exclusive(setup.latency.lock_path):  # timed alone, as every latency
            for loc, conf in outputs:
                t0 = time.perf_counter()
                postprocess(loc, conf, priors)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "images": len(times)}


def export_throughput(run: Path) -> dict[str, Any] | None:
    """The export's throughput-mode images per second of a0 INT8 and the exported IR (its report's,
    on the run's profile) and the speed-up they give; None where it was not measured."""
    report = json.loads((run / "export" / "report.json").read_text())
    measured = report.get("throughput") or {}
    if not measured.get("fps") or "exported" not in measured.get("ratio", {}):
        return None
    return {"fps": measured["fps"], "speedup_over_a0_int8": 1.0 / measured["ratio"]["exported"],
            "profile": measured.get("profile")}


def seed_row(setup: RunSetup, run: Path, out: Path, passes: int | None, overrides: dict[str, Any],
             postprocess_images: int) -> dict[str, Any]:
    """Scores, sizes and speed-ups of the exported network over a0 in FP32, FP16 and INT8."""
    if setup.a0 is None:
        raise UserError(f"{run}: the run has no a0 (a0.checkpoint): the seed row compares with the user's model")
    exported = run / "export" / "model.xml"
    if not exported.is_file() or not (run / "export" / "report.json").is_file():
        raise UserError(f"{exported} or its report.json not found: export the run first (rlnas-export {run})")
    _, a0_int8 = a0_entry(setup, run, out, int(setup.cfg.finalists.calib_images))
    irs = {**float_irs(setup, out), A0_NAME: a0_int8, "exported": exported}
    scores = {name: held_out_scores(setup, xml) for name, xml in irs.items()}
    confirmation = confirm_all(setup, irs, passes or int(setup.cfg.finalists.confirm_passes), overrides)
    speedups = {}
    for name in ("a0_fp32", "a0_fp16", A0_NAME):
        versus = relative_to(confirmation, name)  # exported time / that a0's, round by round
        ratio, (low, high) = versus["ratio"]["exported"], versus["ratio_ci"]["exported"]
        speedups[name] = {"speedup": 1.0 / ratio, "ci": [1.0 / high, 1.0 / low], "ratio": ratio}
    held = setup.a0_accuracy("holdout")
    return {"networks": {name: {"what": NETWORKS[name], "ir": str(xml), "ir_bytes": ir_size(xml),
                                "holdout": scores[name], "latency_ms": confirmation["latency_ms"][name]}
                         for name, xml in irs.items()},
            "a0_pytorch_fp32": {"holdout": held.acc_fp32, "bytes": torch_size_bytes(setup.a0.model)},
            "speedup_of_exported_over": speedups, "throughput": export_throughput(run), "postprocess": postprocess_ms(setup, run, exported, postprocess_images),
            "metric": setup.accuracy.pipeline.metric, "metrics": dict(setup.accuracy.pipeline.metrics),
            "accuracy_key": setup.accuracy.pipeline.accuracy_key,
            "inference_precision": confirmation["inference_precision"], "confirmation": confirmation}


def print_row(row: dict[str, Any], summary: dict[str, Any]) -> None:
    metrics = row["metrics"]
    table = [{"network": net["what"], **{f"{label} held-out": f"{net['holdout'][key]:.4f}" for key, label in metrics.items()
                                         if key in net["holdout"]},
              "latency ms": f"{net['latency_ms']:.3f}", "IR MB": f"{net['ir_bytes'] / 1e6:.2f}",
              "found is faster by": ("-" if name == "exported" else
                                     "{speedup:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]".format(**row["speedup_of_exported_over"][name]))}
             for name, net in row["networks"].items()]
    print(tabulate(table, headers="keys", tablefmt="github"))
    a0 = row["a0_pytorch_fp32"]
    print(f"a0 in PyTorch FP32: held-out {row['metric']} {a0['holdout']:.4f}, {a0['bytes'] / 1e6:.2f} MB; "
          f"speed-up: 1 / the median over rounds of the found IR's time / a0's, 95 % CI, {summary['passes']} pass(es); "
          f"profile {summary['profile']}, INFERENCE_PRECISION_HINT {summary['precision']}, host {summary['host_cpu']}")
    fps = row["throughput"]
    if fps:
        print(f"throughput mode (the export's measurement, profile {fps['profile']}): "
              + ", ".join(f"{name} {value:.1f} img/s" for name, value in fps["fps"].items())
              + f": {fps['speedup_over_a0_int8']:.2f}x over a0 INT8")
    post = row["postprocess"]
    if post:
        print(f"not in the timed IRs: decoding + NMS in PyTorch, {post['median_ms']:.2f} ms per image (median, p90 "
              f"{post['p90_ms']:.2f} ms, {post['images']} held-out images)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "seed_row"
    t0 = time.perf_counter()
    try:
        overrides = timing_overrides(args.timing)
        setup = setup_of_run(run_config(run, args.override, args.device), run)
        try:
            row = seed_row(setup, run, out, args.passes, overrides, args.postprocess_images)
            profile = setup.latency.profile
        finally:
            setup.close()
    except (UserError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
        print(f"seed_row: {err}", file=sys.stderr)
        return 2
    summary = {"run": str(run), "command": shlex.join([sys.executable, str(Path(__file__)), *argv]),
               "profile": profile.name, "isa": profile.isa, "threads": profile.threads,
               "precision": profile.inference_precision, "host_cpu": host_cpu_model(),
               "passes": row["confirmation"]["passes"], "seconds": time.perf_counter() - t0}
    print_row(row, summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seed_row.json").write_text(json.dumps({"summary": summary, **row}, indent=1, default=str) + "\n")
    print(f"written: {out / 'seed_row.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
