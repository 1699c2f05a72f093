"""INT8 without losing mAP (issue 21): a trained detector a0 in FP32, FP16 and INT8, COCO mAP@.5 and
mAP@[.5:.95] on the validation and the held-out scenes.

    .venv/bin/python experiments/detection_int8.py --a0 outputs/a0/ssd_mobilenet_v1-scenes-300 \\
        --device kabylake_avx2 --accuracy-control

``--a0`` is the directory ``experiments/train_a0.py`` wrote (or its ``a0.pt``; the ``a0.json`` beside
it gives the family, its kwargs, the resolution and the dataset). The a0 is loaded strictly and scored
as deployed (its own BN statistics); only the network (raw ``loc``/``conf``) goes into OpenVINO,
decoding and NMS run in PyTorch, as the accuracy oracle scores detectors (its
:class:`~rlnas.oracles.accuracy.AccuracyOracle` and the detection pipeline do every step here). The
variants:

- ``fp32``: PyTorch FP32, the reference (the ``FP32`` of the bound ``mAP_INT8 >= tau x mAP_FP32``);
- ``fp32_ov``: the OpenVINO model compiled with the profile's ``INFERENCE_PRECISION_HINT`` (f32);
- ``fp16_ov``: the same model compiled with ``INFERENCE_PRECISION_HINT`` f16, the compiled-precision
  variant (the seed's baseline): the record keeps the hint, the precision the CPU plugin reports and
  whether the profile's ISA has native FP16 (AVX512-FP16 / AMX-FP16 / AVX-NE-CONVERT); where the
  plugin refuses the hint (seen under the ``AVX2`` cap on an AVX512-FP16 host: "object is not
  initialized") the variant records the error instead of scores;
- ``int8_ptq``: NNCF post-training quantization (default preset, bias correction) calibrated on the
  first ``--calib-images`` un-augmented training scenes, the oracle's own quantization;
- ``int8_ptq_heads_fp32``: the same with the ``loc``/``conf`` head convolutions in an
  ``nncf.IgnoredScope`` (they stay floating point);
- ``int8_accuracy_control`` (``--accuracy-control``): the detection pipeline's
  ``nncf.quantize_with_accuracy_control``, judged on mAP@.5 of the validation scenes only (never the
  held-out ones), allowed to drop ``--max-drop`` x the FP32 validation mAP@.5 (absolute). Where the
  pipeline raises NotImplementedError the command stops at once with one line.

For each variant: its change relative to FP32 on each split and whether the held-out mAP (@.5 and
@[.5:.95]) is >= ``--tau`` x FP32. ``--device`` names a profile (``conf/device``): its threads and
precision hint; its ISA cap (``ONEDNN_MAX_CPU_ISA``) is applied when OpenVINO is not loaded yet (the
JSON says whether). Prints a table; writes ``--json`` (default ``<a0 dir>/int8-<device>.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rlnas.oracles.device import DeviceProfile, load_profile

#: the scores reported for every variant (keys of the detection pipeline's metrics)
METRICS = {"map50": "mAP@.5", "map": "mAP@[.5:.95]"}
SPLITS = ("val", "holdout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a0", required=True, help="the detector a0: train_a0.py's directory or its a0.pt")
    p.add_argument("--device", default="host", help="device profile (conf/device/<name>.yaml)")
    p.add_argument("--calib-images", type=int, default=300, help="INT8 calibration: the first N training scenes")
    p.add_argument("--eval-images", type=int, default=None, help="score the first N images of each split "
                   "(default: all)")
    p.add_argument("--tau", type=float, default=0.99, help="the bound: held-out INT8 mAP >= tau x FP32 mAP")
    p.add_argument("--accuracy-control", action="store_true",
                   help="also NNCF's accuracy-controlled quantization, judged on validation scenes")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="accuracy control: the validation mAP@.5 may drop this fraction of FP32's")
    p.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the f16-hint variant")
    p.add_argument("--threads", type=int, default=None, help="default: the profile's")
    p.add_argument("--json", default=None, help="default: <a0 dir>/int8-<device>.json")
    return p.parse_args(argv)


def apply_isa_cap(profile: DeviceProfile) -> dict[str, Any]:
    """Set the profile's ``ONEDNN_MAX_CPU_ISA`` where it can still act (OpenVINO not imported,
    the variable not set); returns what was done."""
    wanted = profile.env().get("ONEDNN_MAX_CPU_ISA")
    current = os.environ.get("ONEDNN_MAX_CPU_ISA")
    applied = wanted is None or current == wanted
    if wanted is not None and current is None and "openvino" not in sys.modules:
        os.environ["ONEDNN_MAX_CPU_ISA"] = wanted
        applied = True
    return {"isa_cap": wanted, "applied": applied, "env": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def a0_files(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The a0.pt and the a0.json record beside it."""
    pt = Path(path)
    pt = pt / "a0.pt" if pt.is_dir() else pt
    record_path = pt.with_name("a0.json")
    if not pt.is_file() or not record_path.is_file():
        raise SystemExit(f"detection_int8.py: --a0 {path}: needs {pt} and {record_path} (experiments/train_a0.py "
                         "writes both)")
    record = json.loads(record_path.read_text())
    if record.get("task", "classification") != "detection":
        raise SystemExit(f"detection_int8.py: {record_path} is a {record.get('task', 'classification')} a0 "
                         f"({record.get('family')}); this study is for detectors")
    return pt, record


def relative(scores: dict[str, dict[str, float]], reference: dict[str, dict[str, float]],
             tau: float) -> dict[str, Any]:
    """Per split and metric, ``scores / reference - 1``; whether the held-out scores are >= ``tau`` x the reference."""
    change = {split: {k: (scores[split][k] / reference[split][k] - 1) if reference[split][k] > 0 else None
                      for k in METRICS} for split in scores}
    holds = {k: scores["holdout"][k] >= tau * reference["holdout"][k] for k in METRICS} if "holdout" in scores \
        else {}
    return {"relative_change": change, "holdout_holds": holds}


def study(args: argparse.Namespace, profile: DeviceProfile, isa: dict[str, Any]) -> dict[str, Any]:
    """Every variant's scores on both splits (see the module docstring)."""
    # imported here, after apply_isa_cap: ONEDNN_MAX_CPU_ISA acts only if set before OpenVINO loads
    import torch

    from rlnas import machinelock
    from rlnas.detection.evaluate import compile_detector, head_scope
    from rlnas.oracles.accuracy import AccuracyOracle
    from rlnas.oracles.device import host_cpu_model
    from rlnas.ovtools import int8_primitive_count, library_versions, quantize_int8, quiet
    from rlnas.spaces import create_supernet
    from rlnas.supernet.a0 import load_a0_weights, read_state
    from rlnas.tasks import build_data, get_task

    pt, record = a0_files(args.a0)
    threads = int(args.threads or profile.threads)
    torch.set_num_threads(threads)
    digest = hashlib.sha256(pt.read_bytes()).hexdigest()
    supernet = create_supernet(record["family"], num_classes=record["num_classes"], **record["model_kwargs"])
    load_a0_weights(supernet, read_state(pt), str(pt))
    model = supernet.extract(supernet.space.max_arch()).eval()
    data = build_data(record["dataset_config"], record["resolution"])
    splits = [s for s in SPLITS if s == "val" or data.holdout is not None]
    oracles = {split: AccuracyOracle(supernet, data, None, digest[:16], recal_images=0,
                                     calib_images=args.calib_images, eval_images=args.eval_images, threads=threads,
                                     inference_precision=profile.inference_precision, channels_last=False,
                                     split=split, pipeline=get_task("detection").pipeline)
               for split in splits}
    val = oracles["val"]
    variants: dict[str, dict[str, Any]] = {}

    def scored(name: str, compiled: Any, start: float, **info: Any) -> None:
        scores = {split: _keep(o.int8_scores(compiled)) for split, o in oracles.items()}
        variants[name] = {**info, "reported_precision": _precision(compiled),
                          "int8_primitives": int8_primitive_count(compiled), "scores": scores,
                          "seconds": time.perf_counter() - start}
        print(f"{name}: {_brief(scores)}", flush=True)

    start = time.perf_counter()
    fp32 = {split: _keep(o.fp32_scores(model)) for split, o in oracles.items()}
    reference = {"precision": "fp32", "runtime": "pytorch", "scores": fp32, "seconds": time.perf_counter() - start}
    print(f"fp32: {_brief(fp32)}", flush=True)
    if args.accuracy_control:  # first: a pipeline without it stops the study before its long part
        start = time.perf_counter()
        max_drop = args.max_drop * fp32["val"]["map50"]
        try:
            quantized = val.quantize_with_accuracy_control(model, max_drop)
        except NotImplementedError as err:
            raise SystemExit(f"detection_int8.py: --accuracy-control: {str(err).splitlines()[0]}") from None
        scored("int8_accuracy_control", val.compile(quantized), start, precision="int8",
               hint=profile.inference_precision, judged_on="val", metric="map50", max_drop_absolute=max_drop)
    start = time.perf_counter()
    with quiet():
        ov_fp32 = val.pipeline.convert(val, model)
    scored("fp32_ov", val.compile(ov_fp32), start, precision="fp32", hint=profile.inference_precision)
    if args.fp16:
        start = time.perf_counter()
        try:
            compiled = compile_detector(ov_fp32, data.image_size, "f16", threads)
        except RuntimeError as err:  # a plugin that refuses the hint (seen under an AVX2 cap): recorded
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            variants["fp16_ov"] = {"precision": "fp16", "hint": "f16", "native_f16": profile.supports("f16"),
                                   "error": f"compile_model refused the f16 hint: {lines[-1] if lines else err!r}",
                                   "error_full": " | ".join(lines)}
        else:
            scored("fp16_ov", compiled, start, precision="fp16", hint="f16",
                   native_f16=profile.supports("f16"))
    start = time.perf_counter()
    scored("int8_ptq", val.compile(val.quantize(model)), start, precision="int8", hint=profile.inference_precision)
    start = time.perf_counter()
    scope = head_scope(ov_fp32)
    with quiet(), machinelock.shared(val.lock_path):
        heads_fp32 = quantize_int8(ov_fp32.clone(), val.calibration(), ignored_scope=scope)
    scored("int8_ptq_heads_fp32", val.compile(heads_fp32), start, precision="int8",
           hint=profile.inference_precision, ignored=list(scope.names))

    ordered = {"fp32": reference, **{k: variants[k] for k in ORDER if k in variants}}
    for variant in ordered.values():
        if "scores" in variant:
            variant.update(relative(variant["scores"], fp32, args.tau))
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "a0": str(pt), "a0_sha256": digest,
            "a0_record_sha256": record.get("sha256"),
            "a0_record": {k: record.get(k) for k in ("family", "model_kwargs", "resolution", "num_classes",
                                                      "map_as_deployed", "train_seconds", "epochs")},
            "device": profile.to_dict(), "threads": threads, "isa": isa, "host_cpu": host_cpu_model(),
            "versions": library_versions(), "calib_images": min(args.calib_images, len(data.calib)),
            "eval_images": {split: o.eval_count for split, o in oracles.items()}, "tau": args.tau,
            "max_drop": args.max_drop if args.accuracy_control else None, "metrics": METRICS,
            "postprocessing": "decoding and NMS in PyTorch, outside the IR (rlnas.detection.boxes.postprocess)",
            "variants": ordered}


#: the variants in the order they are reported
ORDER = ("fp32_ov", "fp16_ov", "int8_ptq", "int8_ptq_heads_fp32", "int8_accuracy_control")


def _precision(compiled: Any) -> str:
    """The ``INFERENCE_PRECISION_HINT`` the CPU plugin reports for a compiled model (``f32``, ``f16``, ``bf16``)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _keep(scores: dict[str, float]) -> dict[str, float]:
    return {k: float(scores[k]) for k in (*METRICS, "map75") if k in scores}


def _brief(scores: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{split} {label} {scores[split][k]:.4f}" for split in scores for k, label in METRICS.items())


def table(result: dict[str, Any]) -> str:
    """The study as a text table: scores, the held-out change vs FP32 and the bound."""
    from tabulate import tabulate

    tau = result["tau"]
    rows = []
    for name, v in result["variants"].items():
        if "scores" not in v:
            rows.append([name, v.get("hint", "-"), "-", *["-"] * 7, v.get("error", "")])
            continue
        s, change = v["scores"], v.get("relative_change", {}).get("holdout", {})
        holds = v.get("holdout_holds", {})
        rows.append([name, v.get("hint", "-"), v.get("reported_precision", "-"),
                     *[f"{s[split][k]:.4f}" if split in s else "-" for split in SPLITS for k in METRICS],
                     *[f"{change[k]:+.2%}" if change.get(k) is not None else "-" for k in METRICS],
                     "yes" if holds and all(holds.values()) else ("no" if holds else "-"), ""])
    headers = ["variant", "hint", "runs", "val @.5", "val @[.5:.95]", "held-out @.5", "held-out @[.5:.95]",
               "held-out @.5 vs FP32", "@[.5:.95] vs FP32", f">= {tau} x FP32", "note"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = load_profile(args.device)
    isa = apply_isa_cap(profile)
    result = study(args, profile, isa)
    out = Path(args.json) if args.json else Path(result["a0"]).with_name(f"int8-{profile.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    holding = [k for k, v in result["variants"].items() if k != "fp32" and v.get("holdout_holds")
               and all(v["holdout_holds"].values())]
    print(f"\nheld-out mAP@.5 and mAP@[.5:.95] >= {args.tau} x FP32: {', '.join(holding) or 'no variant'}; "
          f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
