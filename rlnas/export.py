"""``rlnas-export run=<dir>``: write the artefacts of a search run's chosen network: the finalist
that :func:`rlnas.finalists.run_finalists` chose (its scored and confirmed IR), or with
``finalists.k=0`` the best feasible candidate as the search measured it. Nothing is fine-tuned or
confirmed here, except ``export.finetune_epochs`` on the ``finalists.k=0`` path.

Writes under ``<run>/export/``:

- ``arch.json``: the architecture (and the family's builder kwargs);
- ``model.pt``: standalone PyTorch model, ``{"state_dict", "arch", "family", "kwargs", ...}``
  (BN statistics recalibrated as the accuracy oracle does; optionally fine-tuned for
  ``export.finetune_epochs`` epochs with distillation from a0); :func:`load_exported` rebuilds it;
- ``model.onnx``: FP32 ONNX of the network (dynamic batch; outputs ``logits``, or ``loc`` and
  ``conf`` for detection);
- ``model.xml``/``model.bin``: OpenVINO INT8 IR of the network, quantized by NNCF with real
  calibration images, static input ``[1, 3, R, R]`` (as timed), so ``benchmark_app -m model.xml``
  runs it as is. Detectors give raw ``loc``/``conf``: box decoding and NMS stay in Python
  (:func:`rlnas.detection.boxes.postprocess` with the model's ``priors``);
- ``report.md`` + ``report.json``: a0 vs found: FP32/INT8 accuracy (top-1, or mAP@.5 for
  detection), INT8 latency and throughput on the profile, speed-up, IR and PyTorch sizes, params, MACs.

The numbers come from the run's measurements (the oracles' cache); the saved IR's INT8 accuracy is
measured again (``export.verify_images``) by the accuracy oracle's own task pipeline
(:class:`~rlnas.oracles.accuracy.TaskPipeline`), which also converts and calibrates it, so the
artefact is checked exactly as the search measured. What else differs by task (distillation loss,
``model.pt`` metadata, how to run the IR) is in the task registry (:mod:`rlnas.tasks`). Overrides after ``run=`` change
the run's saved config, e.g. ``rlnas-export run=<dir> export.verify_images=0``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from rlnas.arch import Arch
from rlnas.errors import UserError
from rlnas.finalists import A0_NAME, FINALISTS_DIR, load_finalists, save_int8_ir, teacher_of, write_int8_ir
from rlnas.oracles.accuracy import TaskPipeline
from rlnas.oracles.device import host_cpu_model
from rlnas.oracles.profiling import images_per_second, metric_config
from rlnas.ovtools import ir_size, with_image_preprocessing
from rlnas.report import pareto_figure, time_label, write_report
from rlnas.runsetup import HISTORY_NAME, SUPERNET_META_NAME, RunSetup, SetupError, build_setup
from rlnas.search.evaluator import accuracy_target
from rlnas.search.history import read_history
from rlnas.search.measurement import Measurement
from rlnas.spaces import create_supernet
from rlnas.supernet.checkpoint import plain_tree, safe_load
from rlnas.supernet.finetune import FineTune, FineTuneOptions
from rlnas.tasks import Task, TaskError, get_task
from rlnas.validate import check_search

log = logging.getLogger("rlnas.export")

USAGE = "usage: rlnas-export run=<search run directory> [config overrides, e.g. export.verify_images=0]"
HELP = ("rlnas-export writes the chosen network of a finished rlnas-search run (arch.json, model.pt, ONNX, the "
        "INT8 OpenVINO IR) and its report under <run>/export, with the run's saved config and the overrides given.")


class ExportError(UserError, RuntimeError):
    """The run cannot be exported; the message says what is missing and how to get it."""


# -- reading a run -------------------------------------------------------------------------------


def load_run(run_dir: Path) -> tuple[Measurement, list[Measurement]]:
    """The baseline and the candidates measured by the run in ``run_dir``."""
    path = run_dir / HISTORY_NAME
    if not path.is_file():
        raise ExportError(f"{path} not found: {run_dir} holds no search measurements yet. Run "
                          f"`rlnas-search run_dir={run_dir}` (it resumes a run that was interrupted).")
    records = read_history(path)
    baselines = [m for kind, _, m in records if kind == "baseline"]
    if not baselines:
        raise ExportError(f"{path} has no baseline record; rerun `rlnas-search run_dir={run_dir}`")
    seen, candidates = set(), []
    for kind, _, m in records:
        if kind == "candidate" and m.arch not in seen:
            seen.add(m.arch)
            candidates.append(m)
    return baselines[0], candidates


def run_target(cfg: DictConfig, setup: RunSetup, baseline: Measurement) -> float:
    """The run's INT8 accuracy target on validation images (:func:`accuracy_target`)."""
    a0 = setup.a0_accuracy("val")
    return accuracy_target(float(cfg.tau), a0.acc_fp32 if a0 is not None else None, baseline.acc_fp32)


def wants_finalists(cfg: DictConfig, setup: RunSetup, candidates: list[Measurement]) -> bool:
    """Whether the run's result is a finalist: ``finalists.k > 0`` and candidates (any task: its
    pipeline scores, packs and tests the per-image records, :mod:`rlnas.finalists`)."""
    return int(cfg.finalists.k) > 0 and bool(candidates)


def without_records(value: Any, field: str) -> Any:
    """``value`` (the finalists' record) without the per-image records under ``field`` (the task
    pipeline's ``row_field``): ``finalists.json`` keeps them for the bound tests; a detector's
    are ~0.2 MB per network and split, too much to repeat in the report."""
    if isinstance(value, dict):
        return {k: without_records(v, field) for k, v in value.items() if k != field}
    if isinstance(value, list):
        return [without_records(v, field) for v in value]
    return value


def best_feasible(candidates: list[Measurement]) -> Measurement | None:
    feasible = [m for m in candidates if m.feasible]
    return min(feasible, key=lambda m: m.latency_ratio) if feasible else None


def run_supernet_path(run_dir: Path) -> str:
    """The supernet checkpoint the run searched (recorded in ``<run>/supernet.json``)."""
    meta_path = run_dir / SUPERNET_META_NAME
    if not meta_path.is_file():
        raise ExportError(f"{meta_path} not found: not a finished rlnas-search setup; run "
                          f"`rlnas-search run_dir={run_dir}` first")
    path = json.loads(meta_path.read_text())["path"]
    if not Path(path).is_file():
        raise ExportError(f"the run used the supernet at {path}, which is gone; retrain it with the run's "
                          f"config (`rlnas-search run_dir={run_dir}` trains it when missing) or restore the file")
    return path


# -- building the artefacts ------------------------------------------------------------------------


def task_of(accuracy: Any) -> tuple[TaskPipeline, Task]:
    """The accuracy oracle's :class:`~rlnas.oracles.accuracy.TaskPipeline` and its task's
    registry entry; ExportError for a task that is not registered."""
    try:
        return accuracy.pipeline, get_task(accuracy.task)
    except TaskError as err:
        raise ExportError(str(err)) from err


def torch_size_bytes(model: nn.Module) -> int:
    """Bytes of the FP32 state dict as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def export_onnx(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int,
                output_names: tuple[str, ...] = ("logits",)) -> None:
    """FP32 ONNX with a dynamic batch (TorchScript exporter: needs no onnxscript); one name per
    output of the network (e.g. ``loc``, ``conf`` for a detector)."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    dynamic = {name: {0: "batch"} for name in ("input", *output_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=list(output_names), dynamic_axes=dynamic)


def export_int8_ir(setup: RunSetup, model: nn.Module, calib_images: int, path: Path, verify_images: int | None,
                   normalisation: tuple[list[float], list[float]] | None = None,
                   quantized: Any = None) -> tuple[int, dict[str, float] | None]:
    """Quantize ``model`` as the accuracy oracle does (its task's conversion, NNCF with
    ``calib_images`` real calibration images), save it as the finalists' IRs are saved
    (:func:`~rlnas.finalists.write_int8_ir`: static batch-1 input ``input``, outputs named by the
    task), then (unless ``verify_images == 0``) score the saved IR with the oracle's INT8
    evaluation on ``verify_images`` validation images (None: the oracle's evaluation set). With
    ``normalisation`` (mean, std), a second IR beside it, ``<name>_uint8.xml``, takes uint8 NHWC
    images and normalises them inside the graph.

    ``quantized``: an INT8 ``ov.Model`` of ``model`` made already (the finalist's, quantized with
    accuracy control), written instead of quantizing anew.

    :returns: the IR size in bytes and the scores (keys of the task's ``metrics``) or None.
    """
    accuracy = setup.accuracy
    if quantized is None:
        quantized = accuracy.quantize(model, calib_images)
    write_int8_ir(setup, quantized, path)
    if normalisation is not None:
        ov.save_model(with_image_preprocessing(quantized, *normalisation), str(path.with_name(f"{path.stem}_uint8.xml")),
                      compress_to_fp16=False)
    scores = None
    if verify_images != 0:
        saved = ov.Core().read_model(str(path))
        scores = accuracy.int8_scores(accuracy.compile(saved), verify_images)
    return ir_size(path), scores


def save_model(model: nn.Module, arch: Arch, meta: dict[str, Any], accuracy: Any, task: Task,
               path: Path) -> None:
    """``model.pt``: the state dict with what :func:`load_exported` needs to rebuild the network,
    and the task's preprocessing and class entries."""
    data = accuracy.data
    torch.save(plain_tree({"state_dict": model.state_dict(), "arch": arch.to_dict(), "family": meta["family"],
                           "kwargs": meta["kwargs"], "task": accuracy.task, "resolution": data.resolution,
                           **task.meta(data)}), path)


def read_model_file(path: str | Path) -> dict[str, Any]:
    """A ``model.pt`` (exported, or a fine-tuned finalist's), loaded without running code.

    :raises ExportError: missing, unreadable, or needing code to load (naming ``rlnas-convert-checkpoint``).
    """
    if not Path(path).is_file():
        raise ExportError(f"model file {path} does not exist")
    ckpt = safe_load(path, ExportError, "the model file")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"{path} is not a model file written by rlnas (no state_dict)")
    return ckpt


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild the model saved as ``model.pt`` by :func:`export_run` (eval mode); a detector
    returns ``(loc, conf)`` and carries its ``priors``. Nothing in the file is run.

    :raises ExportError: see :func:`read_model_file`.
    """
    ckpt = read_model_file(path)
    model = create_supernet(ckpt["family"], **ckpt["kwargs"]).extract(Arch.from_dict(ckpt["arch"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


# -- the export ---------------------------------------------------------------------------------------


def _numbers(m: Measurement) -> dict[str, Any]:
    return {"arch": m.arch.short(), "arch_json": m.arch.to_json(), "acc_fp32": m.acc_fp32,
            "acc_int8": m.acc_int8, "latency_ms": m.latency_ms, "ref_latency_ms": m.ref_latency_ms,
            "latency_ratio": m.latency_ratio, "params": m.params, "macs": m.macs,
            "ir_size_bytes": m.ir_size_bytes, "feasible": m.feasible}


NO_FEASIBLE_NOTE = "no feasible candidate was found: exporting a0 itself (the constraint holds for it)"
LATENCY_NOTE = ("latency: OpenVINO INT8, batch 1, on the profile (median). Absolute medians of a0 and the found "
                "network come from different moments; the speed-up uses the ratio timed alongside a0 "
                "(interleaved rounds), robust to machine load. Throughput: OpenVINO's throughput mode "
                "(PERFORMANCE_HINT THROUGHPUT, the plugin's streams and requests) on the profile's threads, a0's "
                "and the exported IR timed in interleaved rounds")
THROUGHPUT_NOTE = ("latency.metric=throughput: the search, the confirmation and the speed-up time OpenVINO's "
                   "throughput mode (PERFORMANCE_HINT THROUGHPUT on the profile's threads and precision hint, the "
                   "plugin's streams and requests), as the median time per image (1000 / images per second) in "
                   "interleaved rounds alongside a0; every latency and ratio of this report is that time")


def _choice_reason(finals: dict[str, Any]) -> str:
    """How ``finalists.choose`` picked the exported finalist, from what it recorded."""
    confidence = finals.get("confidence", 0.9)
    if finals.get("chosen_with_confidence"):
        return (f"the fastest in the confirmation for which the bound holds on validation images with "
                f"{confidence:.0%} confidence (paired test against a0's FP32, alpha split over "
                f"{len(finals['finalists'])} finalists)")
    return (f"the finalist most likely to meet the bound (highest lower confidence bound): for none did the "
            f"bound hold on validation images with {confidence:.0%} confidence")


def export_run(cfg: DictConfig, run_dir: str | Path, setup: RunSetup | None = None) -> dict[str, Any]:
    """Export the run's result (see module doc): with ``finalists.k > 0`` the finalist that
    :func:`rlnas.finalists.run_finalists` chose (fine-tuned, confirmed; the search's finalists
    stage ran it), else the best feasible candidate as the search measured it. Writes artefacts
    only: nothing is fine-tuned or confirmed here.

    :param setup: the search's :class:`~rlnas.runsetup.RunSetup` (reuses its supernet, a0, data and
        oracles); None builds it from the run's config and supernet (``rlnas-export``).
    :returns: the report summary (also written as ``report.json``).
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    baseline, candidates = load_run(run_dir)
    own = setup is None
    setup = setup or setup_of_run(cfg, run_dir)
    try:
        return _export(cfg, run_dir, setup, baseline, candidates, t0)
    finally:
        if own:
            setup.close()


def _export(cfg: DictConfig, run_dir: Path, setup: RunSetup, baseline: Measurement, candidates: list[Measurement],
            t0: float) -> dict[str, Any]:
    supernet, meta, accuracy, latency = setup.supernet, setup.meta, setup.accuracy, setup.latency
    pipeline, task = task_of(accuracy)
    out = run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    target = run_target(cfg, setup, baseline)
    finals = None
    if wants_finalists(cfg, setup, candidates):
        finals = load_finalists(run_dir)
        if finals is None:
            raise ExportError(f"the finalists of {run_dir} have not run: `rlnas-search run_dir={run_dir}` runs them "
                              "(what is measured already is reused), or export without them: finalists.k=0")
    best = best_feasible(candidates)
    notes: list[str] = []
    if finals and finals["finalists"]:
        row = next(f for f in finals["finalists"] if f["name"] == finals["chosen"])
        chosen_arch = Arch.from_dict(row["arch"])
        chosen = next((m for m in candidates if m.arch == chosen_arch), None)
        if chosen is None:
            raise ExportError(f"{run_dir / FINALISTS_DIR / 'finalists.json'} names {chosen_arch.short()}, which the "
                              f"run's log no longer holds: rerun `rlnas-search run_dir={run_dir}` to choose again")
        model = supernet.extract(chosen_arch)
        model.load_state_dict(read_model_file(row["weights_path"])["state_dict"])
        model.eval()
        found = {**_numbers(chosen), **_finalist_numbers(row), "feasible": row["feasible"]}
        notes.append(f"finalist {row['name']} of {len(finals['finalists'])}: fine-tuned "
                     f"{finals['config']['epochs']:g} epoch(s) "
                     f"from a0 by distillation, chosen as {_choice_reason(finals)}; "
                     f"{'feasible' if row['feasible'] else 'NO finalist is feasible'}")
    else:
        chosen = best or baseline
        found = _numbers(chosen)
        notes += [] if best else [NO_FEASIBLE_NOTE]
        if finals is not None:
            notes.append(finals.get("note", ""))
        model = _network(cfg, accuracy, chosen.arch, baseline.arch, task, found, notes, out)
    quantized = None  # a finalist ships the very IR that was scored and confirmed
    if finals and finals["finalists"]:
        quantized = ov.Core().read_model(next(f for f in finals["finalists"] if f["name"] == finals["chosen"])["ir_path"])
    verify = _write_artefacts(cfg, out, setup, model, chosen.arch, task, found, quantized)
    if not finals or not finals["finalists"]:
        notes += _timing_notes(found, latency, out / "model.xml", chosen)
    if found["exported_ir_int8"]:
        notes.append(f"exported INT8 IR re-measured on {verify} validation images: "
                     f"{_scores_text(found['exported_ir_int8'], pipeline)} (search measured {pipeline.metric} "
                     f"{_fmt(chosen.acc_int8)})")
    base = {**_numbers(baseline), "torch_size_bytes": torch_size_bytes(supernet.extract(baseline.arch))}
    profile_notes, throughput = _profile_artefacts(out, setup, run_dir)
    notes += profile_notes
    latency_metric = latency.metric if latency is not None else "latency"
    notes += [LATENCY_NOTE if latency_metric == "latency" else THROUGHPUT_NOTE, task.usage(model, accuracy.data.resolution)]
    scope = pipeline.fp32_scope()  # what every INT8 IR of the run left in FP32 (a detector's heads)
    summary = {
        "setup": {"model": meta["family"], "task": accuracy.task, "dataset": cfg.dataset.name,
                  "device profile": cfg.device.name, "tau": float(cfg.tau), "supernet checkpoint": meta.get("path"),
                  "a0": str(setup.a0.path) if setup.a0 else None, "run": str(run_dir),
                  "candidates measured": len(candidates), "host cpu": host_cpu_model(),
                  **(scope.identity() if scope is not None else {})},
        "metric": pipeline.metric, "metrics": dict(pipeline.metrics), "latency_metric": latency_metric,
        "a0": _a0_numbers(setup, finals), "baseline": base, "found": found, "target": target,
        "feasible_found": bool(found.get("feasible")), "finalists": without_records(finals, pipeline.row_field),
        "speedup": _speedup(found, chosen), "throughput": throughput,
        "files": {name: str(out / name) for name in ("arch.json", "model.pt", "model.onnx", "model.xml",
                                                     "model.bin", "model_uint8.xml", "model_uint8.bin",
                                                     "benchmark_app_config.json", "report.md", "report.json")},
        "notes": [n for n in notes if n], "out_dir": str(out), "export_seconds": time.perf_counter() - t0,
    }
    write_report(out, summary)
    _pareto_png(out, baseline, candidates, target, best, pipeline.metric)
    return summary


def _profile_artefacts(out: Path, setup: RunSetup, run_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """``benchmark_app_config.json`` (the profile's CPU properties in the search's latency metric)
    and the throughput-mode images per second of the reference (a0, else the maximal subnet) and
    of the exported IR: the report's notes and its ``throughput`` entry (``fps`` per IR, or
    ``None`` and the reason it was not measured)."""
    latency = setup.latency
    if latency is None:
        return [], {"fps": None, "reason": "no latency oracle"}
    profile = latency.profile
    config = metric_config(profile.compile_config(profile.inference_precision), latency.metric)
    (out / "benchmark_app_config.json").write_text(json.dumps({"CPU": config}, indent=2) + "\n")
    env = " ".join(f"{k}={v}" for k, v in profile.env().items())
    requests = " -nireq 1" if latency.metric == "latency" else ""
    notes = [f"reproduce the profile's {time_label(latency.metric)}: `{env + ' ' if env else ''}benchmark_app -m "
             f"model.xml -d CPU -load_config benchmark_app_config.json{requests}` ({profile.isa or 'native'} ISA, "
             f"{profile.threads} threads, INFERENCE_PRECISION_HINT {profile.inference_precision}); model_uint8.xml "
             "takes uint8 NHWC images and normalises them inside the graph"]
    reference = "a0" if setup.a0 is not None else "maximal subnet"
    a0_ir = run_dir / FINALISTS_DIR / A0_NAME / "model.xml"
    if not a0_ir.is_file():
        a0_ir = save_int8_ir(setup, teacher_of(setup)[0], out / "reference" / "a0.xml", int(setup.cfg.export.calib_images))
    try:
        timed = latency.confirm({reference: a0_ir, "exported": out / "model.xml"}, reference, metric="throughput")
    except Exception as err:  # the artefacts exist either way; the throughput is a report figure
        log.warning("throughput not measured: %s", err)
        return notes, {"fps": None, "reason": f"{type(err).__name__}: {err}"}
    return notes, {"fps": images_per_second(timed.latency_ms), "ratio": timed.ratio, "rounds": timed.rounds,
                   "infer_requests": timed.infer_requests, "streams": timed.streams,
                   "inference_precision": timed.inference_precision, "profile": profile.name,
                   "threads": profile.threads}


def _finalist_numbers(row: dict[str, Any]) -> dict[str, Any]:
    """A finalist's fine-tuned accuracies and confirmed timing, in the report's ``found`` keys."""
    after = row["after"]
    return {"acc_fp32": after["val_fp32"], "acc_int8": after["val_int8"], "holdout_fp32": after["holdout_fp32"],
            "holdout_int8": after["holdout_int8"], "confirmed_ratio": row["confirmed_ratio"],
            "confirmed_ci": row["confirmed_ci"], "latency_ms": row["confirmed_latency_ms"]}


def _a0_numbers(setup: RunSetup, finals: dict[str, Any] | None) -> dict[str, Any] | None:
    """a0's own row: FP32/INT8 accuracy as deployed on validation and held-out images, and its
    latency in the confirmation."""
    if setup.a0 is None:
        return None
    val, held = setup.a0_accuracy("val"), setup.a0_accuracy("holdout")
    row = {"checkpoint": str(setup.a0.path), "sha256": setup.a0.sha256, "val_fp32": val.acc_fp32,
           "val_int8": val.acc_int8, "holdout_fp32": held.acc_fp32, "holdout_int8": held.acc_int8,
           "torch_size_bytes": torch_size_bytes(setup.a0.model)}
    if finals and finals.get("confirmation"):
        row["latency_ms"] = finals["confirmation"]["latency_ms"]["a0"]
    return row


def _speedup(found: dict[str, Any], chosen: Measurement) -> float | None:
    """1 / the confirmed ratio when there is one, else the search's ratio."""
    ratio = found.get("confirmed_ratio") or chosen.latency_ratio
    return 1.0 / ratio if ratio else None


def _network(cfg: DictConfig, accuracy: Any, arch: Arch, a0: Arch, task: Task, found: dict[str, Any],
             notes: list[str], out: Path) -> nn.Module:
    """``arch`` prepared as the oracle measured it (BN recalibrated), fine-tuned with the task's
    distillation from a0 when ``export.finetune_epochs > 0`` (resumable from ``out/finetune``; its
    FP32 accuracy then re-measured)."""
    model = accuracy.prepare(arch).to(memory_format=torch.contiguous_format)
    epochs = int(cfg.export.finetune_epochs)
    if epochs <= 0:
        return model
    teacher = accuracy.prepare(a0).to(memory_format=torch.contiguous_format)
    options = FineTuneOptions(epochs=epochs, lr=float(cfg.export.finetune_lr), weight_decay=5e-5,
                              batch_size=int(cfg.export.finetune_batch_size), kd_alpha=1.0,
                              kd_temperature=float(cfg.export.kd_temperature), progress=bool(cfg.logging.progress))
    model = FineTune(model, teacher, accuracy.data, out / "finetune", options, "export", int(cfg.seed),
                     loss_fn=task.distill(model, options)).run()
    found["acc_fp32"] = accuracy.fp32_accuracy(model)
    notes.append(f"fine-tuned {epochs} epoch(s) with distillation from a0; FP32/INT8 {accuracy.metric} re-measured")
    return model


def _write_artefacts(cfg: DictConfig, out: Path, setup: RunSetup, model: nn.Module, arch: Arch, task: Task,
                     found: dict[str, Any], quantized: Any = None) -> int:
    """Write arch.json, model.pt, model.onnx and the INT8 IR; record sizes and the IR's re-measured
    INT8 scores in ``found``. Returns how many validation images scored the IR."""
    meta, accuracy = setup.meta, setup.accuracy
    pipeline, resolution = accuracy.pipeline, accuracy.data.resolution
    (out / "arch.json").write_text(json.dumps({"arch": arch.to_dict(), "family": meta["family"],
                                               "kwargs": meta["kwargs"], "task": accuracy.task,
                                               "short": arch.short()}, indent=2) + "\n")
    save_model(model, arch, meta, accuracy, task, out / "model.pt")
    export_onnx(model, (1, 3, resolution, resolution), out / "model.onnx", int(cfg.export.onnx_opset),
                pipeline.output_names)
    verify = accuracy.eval_count if cfg.export.verify_images is None else int(cfg.export.verify_images)
    entries = task.meta(accuracy.data)
    ir_bytes, scores = export_int8_ir(setup, model, int(cfg.export.calib_images), out / "model.xml", verify,
                                      (entries["mean"], entries["std"]), quantized)
    found.update(ir_size_bytes=ir_bytes, torch_size_bytes=torch_size_bytes(model), exported_ir_int8=scores,
                 exported_ir_acc_int8=scores[pipeline.accuracy_key] if scores else None)
    if scores and int(cfg.export.finetune_epochs) > 0 and quantized is None:  # the export's own fine-tuning
        found["acc_int8"] = found["exported_ir_acc_int8"]
    return verify


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _scores_text(scores: dict[str, float], pipeline: TaskPipeline) -> str:
    """``"mAP@.5 0.4120, mAP@[.5:.95] 0.2011, ..."``: every score with its label."""
    return ", ".join(f"{label} {_fmt(scores[k])}" for k, label in pipeline.metrics.items() if k in scores)


def _timing_notes(found: dict[str, Any], latency: Any, xml: Path, chosen: Measurement) -> list[str]:
    """Time the exported IR alongside a0 (into ``found``); the note saying so, if it worked."""
    timed = _time_ir(latency, xml)
    if timed is None:
        return []
    found["exported_ir_latency_ms"], found["exported_ir_ratio"] = timed.latency_ms, timed.ratio
    return [f"exported IR timed on the profile alongside a0: {timed.latency_ms:.3f} ms, ratio "
            f"{timed.ratio:.3f} (search measured {chosen.latency_ratio:.3f})"]


def _pareto_png(out: Path, baseline: Measurement, candidates: list[Measurement], target: float,
                best: Measurement | None, metric: str) -> None:
    import matplotlib.pyplot as plt

    fig = pareto_figure(candidates, baseline, target, best, metric=metric)
    fig.savefig(out / "pareto.png")
    plt.close(fig)


def _time_ir(latency: Any, xml: Path) -> Any:
    """The exported IR timed by the latency oracle (interleaved with a0), or None if that fails."""
    if latency is None or not hasattr(latency, "measure_ir"):
        return None
    try:
        result = latency.measure_ir(xml, precision="int8")
    except Exception as err:  # the artefact exists either way; timing it is a bonus
        log.warning("could not time %s: %s", xml, err)
        return None
    return result if result.ok else None


def setup_of_run(cfg: DictConfig, run_dir: Path) -> RunSetup:
    """The run's setup rebuilt from its config, on the supernet it searched."""
    cfg = cfg.copy()
    cfg.supernet.checkpoint = run_supernet_path(run_dir)
    try:
        return build_setup(cfg)
    except SetupError as err:
        raise ExportError(str(err)) from err


# -- command line ------------------------------------------------------------------------------------


def compose_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's saved config (``<run>/.hydra/config.yaml``) with Hydra overrides applied; an
    unknown key fails with Hydra's message."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ExportError(f"{saved} not found: {run_dir} is not an rlnas-search run directory. Run "
                          f"`rlnas-search run_dir={run_dir}` first, or pass the directory it printed.")
    # rlnas-export is itself a Hydra app: its global Hydra is set aside while the saved config is
    # composed, and put back after
    outer = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(saved.parent.resolve()), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        restore_gh_from_backup(outer)


def export_command(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """``rlnas-export run=<dir> [overrides]``: the run's saved config with ``overrides``, checked,
    then :func:`export_run`; every way it can be refused is an :class:`ExportError` (one line)."""
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist; search first: `rlnas-search run_dir={run_dir}`")
    try:
        cfg = check_search(compose_run_config(run_dir, overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ExportError(str(err)) from err
    return export_run(cfg, run_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlnas.export run=<dir> [overrides]`` (the console command is the Hydra app
    ``rlnas-export`` in :mod:`rlnas.cli`)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    runs = [a for a in args if a.startswith("run=")]
    if args in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{HELP}")
        return 0
    if len(runs) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        summary = export_command(Path(runs[0].split("=", 1)[1]), [a for a in args if not a.startswith("run=")])
    except UserError as err:
        print(f"rlnas-export: {err}", file=sys.stderr)
        return 2
    print((Path(summary["out_dir"]) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

