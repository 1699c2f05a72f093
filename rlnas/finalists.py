"""Finalists: the search's best candidates fine-tuned from a0, re-quantized, scored on held-out
images and confirmed in one interleaved latency measurement with a0.

    select   the k best candidates by the reward's objective (or the k fastest: ``rank=latency``,
             the fastest feasible one among them),
             feasible or within ``margin`` below the target (fine-tuning can lift them over it)
    tune     each one: its supernet weights (BN recalibrated), fine-tuned on the training images
             with distillation from a0 (frozen, as deployed); resumable, TensorBoard ``finetune/``
    score    FP32 and NNCF INT8 (real calibration images) on validation images (the choice) and on
             held-out images (the report: nothing was selected on them), with what the network did
             on each image (the task pipeline's per-image record: which images a classifier gets
             right, a detector's matched detections)
    confirm  a0 and every finalist, INT8 IRs built the same way, timed in the same interleaved
             rounds with more rounds than the search (:meth:`LatencyOracle.confirm`), in
             ``confirm_passes`` passes: on the AVX2 VM two passes minutes apart differed by 5-7 %,
             on the Zen 4 VM back-to-back passes by up to 39 %, while each pass's own CI is
             +-0.5 %, so a finalist's ratio is its median over passes
    choose   the fastest finalist in the confirmation for which the bound holds on validation
             images with ``confidence`` (the task's bound test, :mod:`rlnas.stats`: top-1's paired
             per-image difference to a0's FP32, mAP@.5's paired bootstrap over images; alpha split
             over the finalists); none: the one whose lower confidence bound is
             highest, marked as not established. Its held-out accuracy, with its interval and the
             paired held-out test, is what the report states (choosing by held-out accuracy would
             bias it again)

Everything lands in ``<run>/finalists/``: a killed run resumes its fine-tuning from the last
checkpoint and takes its measurements from the store.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from torch import nn

from rlnas.arch import Arch
from rlnas.oracles.accuracy import TaskPipeline
from rlnas.oracles.latency_results import Confirmation
from rlnas.oracles.ratios import TimingConfig
from rlnas.ovtools import name_tensors, reshaped
from rlnas.runsetup import RunSetup
from rlnas.schema import FinalistsConfig
from rlnas.search.measurement import Measurement
from rlnas.stats import unpack_bits
from rlnas.supernet.a0 import frozen_teacher
from rlnas.supernet.checkpoint import weights_hash
from rlnas.supernet.finetune import FineTune
from rlnas.tasks import get_task

log = logging.getLogger("rlnas.finalists")

FINALISTS_DIR = "finalists"
FINALISTS_JSON = "finalists.json"
A0_NAME = "a0"


@dataclass
class Finalist:
    """One finalist before and after fine-tuning (accuracies: ``val`` chooses, ``holdout`` reports)."""

    name: str
    arch: Arch
    search: dict[str, Any]
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    ir_path: str = ""
    weights_path: str = ""
    confirmed_ratio: float | None = None
    confirmed_passes: list[float] = field(default_factory=list)
    confirmed_ci: list[float] | None = None
    confirmed_latency_ms: float | None = None
    feasible: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "arch": self.arch.to_dict(), "short": self.arch.short()}


def select(candidates: list[Measurement], reward: Callable[[Measurement, float], float], target: float,
           k: int, margin: float, rank: str = "objective") -> list[Measurement]:
    """The ``k`` best candidates among those measured fine with INT8 accuracy at least
    ``target - margin``: by ``reward`` (``rank="objective"``) or by latency ratio (``"latency"``).

    Ranked by latency, the fastest candidate that meets the target as searched always has a slot:
    if none of the ``k`` fastest meets it, it takes the last one. Near-misses are a bet on
    fine-tuning lifting them (it lifted MobileNetV2-space ones by only 0.3-0.7 points, session 16,
    and none of them then held the bound), so a feasible candidate stays in the running."""
    eligible = [m for m in candidates if m.ok and m.acc_int8 is not None and m.acc_int8 >= target - margin]
    if rank != "latency":
        return sorted(eligible, key=lambda m: -reward(m, target))[:k]
    fastest = sorted(eligible, key=lambda m: (m.latency_ratio, -m.acc_int8))
    chosen = fastest[:k]
    meets = [m for m in fastest if m.acc_int8 >= target]
    if chosen and meets and not any(m.acc_int8 >= target for m in chosen):
        chosen[-1] = meets[0]
    return chosen


# -- the stage ---------------------------------------------------------------------------------------


def accuracy_row(setup: RunSetup, model: nn.Module, key: str) -> dict[str, Any]:
    """FP32 and INT8 accuracy of a prepared model on validation and held-out images (cached), its
    ``task`` and what it did on each image: the task pipeline's packed per-image records under its
    ``row_field`` (a classifier's ``bits``: which images it gets right; a detector's ``matches``),
    keyed ``<split>_<precision>``."""
    pipeline = setup.accuracy.pipeline
    val = setup.accuracy.evaluate_model(model, key)
    held = setup.holdout.evaluate_model(model, key)
    if not (val.ok and held.ok):
        raise RuntimeError(f"scoring {key} failed: {val.reason or held.reason}")
    records = {f"{split}_{p}": r.details[f"{p}_{pipeline.per_image}"] for split, r in (("val", val), ("holdout", held))
               for p in ("fp32", "int8") if f"{p}_{pipeline.per_image}" in r.details}
    return {"task": setup.accuracy.task, "val_fp32": val.acc_fp32, "val_int8": val.acc_int8,
            "holdout_fp32": held.acc_fp32, "holdout_int8": held.acc_int8,
            "images": {"val": val.details["eval_images"], "holdout": held.details["eval_images"]},
            pipeline.row_field: records}


def pipeline_of(row: dict[str, Any]) -> TaskPipeline:
    """The task pipeline whose per-image records and bound test an :func:`accuracy_row` holds
    (its ``task``; a row without one is a classifier's)."""
    return get_task(row.get("task")).pipeline


def per_image_of(row: dict[str, Any], split: str, precision: str) -> Any:
    """The per-image record of an :func:`accuracy_row` on ``split`` in ``precision``, unpacked by its
    task's pipeline (a classifier's per-image correctness, a detector's matches).

    :raises ValueError: the row has none (e.g. a detection set with crowd ground truth)."""
    pipeline = pipeline_of(row)
    packed = row.get(pipeline.row_field, {}).get(f"{split}_{precision}")
    if packed is None:
        raise ValueError(f"this {row.get('task') or 'classification'} accuracy row has no per-image record of "
                         f"{split} {precision} ({pipeline.row_field}: {sorted(row.get(pipeline.row_field, {}))}): "
                         "its bound cannot be tested")
    return pipeline.unpack_per_image(packed, int(row["images"][split]))


def correct_of(row: dict[str, Any], split: str, precision: str) -> np.ndarray:
    """Per-image correctness of a classifier's :func:`accuracy_row` on ``split`` in ``precision``."""
    return unpack_bits(row["bits"][f"{split}_{precision}"], int(row["images"][split]))


def judge(row: dict[str, Any], a0_row: dict[str, Any], tau: float, confidence: float, finalists: int) -> None:
    """The finalist's bound tests into ``row``, by its task's pipeline (:meth:`TaskPipeline.bound_test`:
    top-1's paired per-image test, mAP@.5's paired bootstrap over images): on validation images
    with alpha split over the ``finalists`` (what chooses), on held-out images alone (what the
    report states), and the held-out INT8 accuracy's 95 % interval (Wilson's for top-1, the
    bootstrap percentile one for mAP)."""
    pipeline = pipeline_of(row)
    if pipeline is not pipeline_of(a0_row):
        raise ValueError(f"a {row.get('task')} row judged against a0's {a0_row.get('task')} row")
    val = pipeline.bound_test(per_image_of(row, "val", "int8"), per_image_of(a0_row, "val", "fp32"), tau,
                              confidence, finalists)
    held_int8 = per_image_of(row, "holdout", "int8")
    held = pipeline.bound_test(held_int8, per_image_of(a0_row, "holdout", "fp32"), tau, confidence)
    row.update(val_bound=asdict(val) | {"holds": val.holds}, holdout_bound=asdict(held) | {"holds": held.holds},
               holdout_int8_interval=list(pipeline.interval(held_int8)))


def save_int8_ir(setup: RunSetup, model: nn.Module, path: Path, calib_images: int) -> Path:
    """``model`` quantized by NNCF on real calibration images (as the accuracy oracle does), saved
    by :func:`write_int8_ir`."""
    quantized = setup.accuracy.quantize(model.to(memory_format=torch.contiguous_format), calib_images)
    return write_int8_ir(setup, quantized, path)


def accuracy_controlled(setup: RunSetup, model: nn.Module, key: str, path: Path,
                        cfg: FinalistsConfig) -> tuple[dict[str, Any], Path]:
    """``model`` quantized with NNCF's accuracy control (judged on the validation images), its
    scores (FP32 as :func:`accuracy_row`, INT8 of this model on validation and held-out images;
    ``ptq_*``: the plain quantization's) and its IR."""
    ptq = accuracy_row(setup, model, key)
    quantized = setup.accuracy.quantize_with_accuracy_control(
        model.to(memory_format=torch.contiguous_format), cfg.max_drop, cfg.calib_images)
    field = setup.accuracy.pipeline.row_field
    row = {**ptq, "ptq_val_int8": ptq["val_int8"], "ptq_holdout_int8": ptq["holdout_int8"], field: dict(ptq[field])}
    for split, oracle in (("val", setup.accuracy), ("holdout", setup.holdout)):
        scores, record = oracle.pipeline.int8_eval(oracle, oracle.compile(quantized), oracle.eval_count)
        row[f"{split}_int8"] = scores[oracle.pipeline.accuracy_key]
        row[field].pop(f"{split}_int8", None)  # the plain quantization's record is not this model's
        if record is not None:
            row[field][f"{split}_int8"] = oracle.pipeline.pack_per_image(record)
    return row, write_int8_ir(setup, quantized, path)


def write_int8_ir(setup: RunSetup, quantized: Any, path: Path) -> Path:
    """An INT8 ``ov.Model`` saved as an IR with a static batch-1 input, named input ``input``
    and output(s) as the task names them."""
    resolution = setup.data.resolution
    reshaped(quantized, [1, 3, resolution, resolution])
    name_tensors(quantized, "input", setup.accuracy.pipeline.output_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def teacher_of(setup: RunSetup) -> tuple[nn.Module, str]:
    """a0 as deployed (frozen), or without one the maximal subnet prepared like a candidate."""
    if setup.a0 is not None:
        return frozen_teacher(setup.a0.model), setup.a0.key
    top = setup.supernet.space.max_arch()
    return frozen_teacher(setup.accuracy.prepare(top)), f"max:{setup.meta['checkpoint_id']}"


def combine_passes(passes: list[Confirmation]) -> dict[str, Any]:
    """One record of several confirmation passes: per model the median ratio and latency over the
    passes, every pass's ratio, and the envelope of the passes' 95 % CIs (lowest low, highest high)."""
    first = passes[0]
    names = list(first.ratio)
    return {"reference": first.reference, "profile": first.profile, "passes": len(passes),
            "rounds": sum(c.rounds for c in passes), "rounds_by_pass": [c.rounds for c in passes],
            "ratio": {n: statistics.median(c.ratio[n] for c in passes) for n in names},
            "ratio_by_pass": {n: [c.ratio[n] for c in passes] for n in names},
            "ratio_ci": {n: [min(c.ratio_ci[n][0] for c in passes), max(c.ratio_ci[n][1] for c in passes)]
                         for n in names},
            "latency_ms": {n: statistics.median(c.latency_ms[n] for c in passes) for n in names},
            "kernels": first.kernels,
            "above_cap": {n: sorted({k for c in passes for k in c.above_cap.get(n, [])}) for n in names},
            "inference_precision": first.inference_precision,
            "runs": [c.to_dict() for c in passes]}


def choose(finalists: list[Finalist]) -> tuple[Finalist, bool]:
    """The fastest confirmed finalist for which the bound holds with the stated confidence on
    validation images (:func:`judge`); else the one whose lower confidence bound is highest (the
    most likely to hold it), faster first among equals. Also: whether the bound was established."""
    established = [f for f in finalists if f.after["val_bound"]["holds"]]
    if established:
        return min(established, key=lambda f: f.confirmed_ratio), True
    return max(finalists, key=lambda f: (f.after["val_bound"]["lower"], -f.confirmed_ratio)), False


def tune_all(setup: RunSetup, models: dict[str, nn.Module], teacher: nn.Module, out: Path, cfg: FinalistsConfig,
             seed: int, writer: Any, on_step: Callable[[int], None] | None) -> dict[str, nn.Module]:
    """Every finalist fine-tuned from ``teacher``: one after the other here, or as many at once as
    the Ray backend has fine-tuning workers (each on a node, checkpoints kept by this driver)."""
    backend, task, options = setup.backend, get_task(setup.accuracy.task), cfg.tuning()

    def tune(name: str) -> nn.Module:
        if backend is None:  # the task's distillation (a detector's: the detection trainer's)
            return FineTune(models[name], teacher, setup.data, out / name, options, name, seed, writer,
                            on_step, loss_fn=task.distill(models[name], options)).run()
        return backend.fine_tune(models[name], teacher, setup.cfg.dataset, int(setup.cfg.resolution), out / name,
                                 options, name, seed, writer)  # the actor takes the dataset's task's loss

    workers = backend.accuracy_workers if backend is not None else 1
    with ThreadPoolExecutor(max(1, min(workers, len(models))), thread_name_prefix="rlnas-finetune") as pool:
        return dict(zip(models, pool.map(tune, models), strict=True))


def recorded_result(out: Path, cfg: FinalistsConfig, chosen: list[Measurement]) -> dict[str, Any] | None:
    """What a finished run of this stage wrote in ``out``, when it was for the same finalists and
    settings and its IRs are still there: a resumed run reuses it (timing the same IRs again would
    report another, slightly different speed-up for the same network)."""
    path = out / FINALISTS_JSON
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    settings = {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=str)).items() if k != "progress"}
    same_settings = {k: v for k, v in recorded.get("config", {}).items() if k != "progress"} == settings
    rows = recorded.get("finalists", [])
    same_finalists = [r["arch"] for r in rows] == json.loads(json.dumps([m.arch.to_dict() for m in chosen]))
    complete = not rows or ("confirmation" in recorded and all(Path(r["ir_path"]).is_file() for r in rows))
    return recorded if same_settings and same_finalists and complete else None


def run_finalists(setup: RunSetup, candidates: list[Measurement], reward: Any, target: float, tau: float,
                  run_dir: Path, cfg: FinalistsConfig, seed: int = 0, writer: Any = None,
                  on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Select, fine-tune, score and confirm the finalists; returns (and writes
    ``<run>/finalists/finalists.json``) the rows, the confirmation and the choice."""
    out = run_dir / FINALISTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    chosen = select(candidates, reward, target, cfg.k, cfg.margin, cfg.rank)
    recorded = recorded_result(out, cfg, chosen)
    if recorded is not None:
        log.info("finalists: reusing %s (same finalists and settings; delete it to fine-tune, score and "
                 "confirm again)", out / FINALISTS_JSON)
        return recorded
    if not chosen:
        result = {"finalists": [], "note": f"no candidate within {cfg.margin} of the target {target:.4f}",
                  "target": target, "config": asdict(cfg)}
        (out / FINALISTS_JSON).write_text(json.dumps(result, indent=2, default=str) + "\n")
        return result
    teacher, teacher_key = teacher_of(setup)
    a0_row = accuracy_row(setup, teacher, teacher_key)
    irs = {A0_NAME: save_int8_ir(setup, teacher, out / A0_NAME / "model.xml", cfg.calib_images)}
    finalists = [Finalist(f"f{i}", m.arch, {"latency_ratio": m.latency_ratio, "val_int8": m.acc_int8,
                                            "val_fp32": m.acc_fp32}) for i, m in enumerate(chosen)]
    models = {}
    for f in finalists:
        models[f.name] = setup.accuracy.prepare(f.arch).to(memory_format=torch.channels_last)
        f.before = accuracy_row(setup, models[f.name], f"subnet:{setup.meta['checkpoint_id']}:{f.arch.to_json()}")
    if cfg.epochs > 0:
        models = tune_all(setup, models, teacher, out, cfg, seed, writer, on_step)
    for f in finalists:
        model = models[f.name]
        f.weights_path = str(out / f.name / "model.pt")
        (out / f.name).mkdir(parents=True, exist_ok=True)  # not there when nothing was fine-tuned (epochs 0)
        torch.save({"state_dict": model.state_dict(), "arch": f.arch.to_dict()}, f.weights_path)
        key, ir = f"finetuned:{weights_hash(model.state_dict())}", out / f.name / "model.xml"
        if cfg.quantization == "accuracy_control":
            f.after, ir = accuracy_controlled(setup, model, key, ir, cfg)
        else:
            f.after, ir = accuracy_row(setup, model, key), save_int8_ir(setup, model, ir, cfg.calib_images)
        f.feasible = f.after["val_int8"] >= target
        judge(f.after, a0_row, tau, cfg.confidence, len(finalists))
        f.ir_path = str(ir)
        irs[f.name] = Path(f.ir_path)
    timing = TimingConfig(**{**asdict(setup.latency.timing), **dict(cfg.confirm_timing)})
    confirmation = combine_passes([setup.latency.confirm(irs, A0_NAME, timing, repeat=i)
                                   for i in range(cfg.confirm_passes)])
    for f in finalists:
        f.confirmed_ratio = confirmation["ratio"][f.name]
        f.confirmed_passes = confirmation["ratio_by_pass"][f.name]
        f.confirmed_ci = confirmation["ratio_ci"][f.name]
        f.confirmed_latency_ms = confirmation["latency_ms"][f.name]
    best, established = choose(finalists)
    result = {"finalists": [f.to_dict() for f in finalists], "a0": a0_row, "a0_key": teacher_key,
              "target": target, "chosen": best.name, "chosen_feasible": best.feasible,
              "chosen_with_confidence": established, "confidence": cfg.confidence, "tau": tau,
              "task": setup.accuracy.task, "metric": setup.accuracy.metric,
              "bound_test": setup.accuracy.pipeline.bound_method,
              "confirmation": confirmation, "config": asdict(cfg), "seconds": time.perf_counter() - t0}
    (out / FINALISTS_JSON).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def load_finalists(run_dir: Path) -> dict[str, Any] | None:
    """What :func:`run_finalists` wrote for the run in ``run_dir``, or None before it ran."""
    path = Path(run_dir) / FINALISTS_DIR / FINALISTS_JSON
    return json.loads(path.read_text()) if path.is_file() else None
