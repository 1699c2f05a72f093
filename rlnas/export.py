"""``rlnas-export run=<dir>``: ship the best feasible architecture of a search run.

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
``model.pt`` metadata, how to run the IR) is :data:`EXPORT_TASKS`. Overrides after ``run=`` change
the run's saved config, e.g. ``rlnas-export run=<dir> export.finetune_epochs=2``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from rlnas.arch import Arch
from rlnas.oracles.evaluator import Measurement, read_history

if TYPE_CHECKING:
    from rlnas.oracles.accuracy import TaskPipeline

log = logging.getLogger("rlnas.export")

USAGE = "usage: rlnas-export run=<search run directory> [config overrides, e.g. export.finetune_epochs=2]"


class ExportError(RuntimeError):
    """The run cannot be exported; the message says what is missing and how to get it."""


# -- reading a run -------------------------------------------------------------------------------


def load_run(run_dir: Path) -> tuple[Measurement, list[Measurement]]:
    """The baseline and the candidates measured by the run in ``run_dir``."""
    from rlnas.search.app import HISTORY_NAME

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


def best_feasible(candidates: list[Measurement]) -> Measurement | None:
    feasible = [m for m in candidates if m.feasible]
    return min(feasible, key=lambda m: m.latency_ratio) if feasible else None


def load_run_supernet(run_dir: Path):
    """The supernet the run searched (path recorded in ``<run>/supernet.json``)."""
    from rlnas.search.app import SUPERNET_META_NAME
    from rlnas.supernet import CheckpointError, load_supernet

    meta_path = run_dir / SUPERNET_META_NAME
    if not meta_path.is_file():
        raise ExportError(f"{meta_path} not found: not a finished rlnas-search setup; run "
                          f"`rlnas-search run_dir={run_dir}` first")
    meta = json.loads(meta_path.read_text())
    try:
        return load_supernet(meta["path"])
    except CheckpointError as err:
        raise ExportError(f"{err}. The run used the supernet at {meta['path']}; retrain it with the run's "
                          f"config (`rlnas-search run_dir={run_dir}` trains it when missing) or restore "
                          "the file.") from err


# -- building the artefacts ------------------------------------------------------------------------


#: ``(student output, teacher output, the batch's targets) -> loss`` of one fine-tuning step
DistillLoss = Callable[[Any, Any, Any], Tensor]


def finetune_distill(student: nn.Module, teacher: nn.Module, data: Any, loss_fn: DistillLoss, epochs: int,
                     lr: float, batch_size: int, seed: int = 0) -> nn.Module:
    """Fine-tune ``student`` on the training split with distillation from ``teacher`` (a0):
    SGD with a cosine schedule, loss ``loss_fn(student(x), teacher(x), targets)``."""
    teacher.eval()
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    total = max(1, epochs * data.steps_per_epoch(batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for epoch in range(epochs):
        for x, targets in data.train_batches(batch_size, epoch, seed=seed + 1000):
            with torch.no_grad():
                taught = teacher(x)
            loss = loss_fn(student(x), taught, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("fine-tune epoch %d/%d: kd loss %.4f", epoch + 1, epochs, loss.item())
    return student.eval()


def classification_distill(student: nn.Module, temperature: float) -> DistillLoss:
    """KL(teacher || student) on the logits at ``temperature`` (the supernet trainer's ``kd_loss``)."""
    from rlnas.supernet.train import kd_loss

    return lambda out, taught, _labels: kd_loss(out, taught, temperature)


def detection_distill(student: nn.Module, temperature: float) -> DistillLoss:
    """The detection trainer's distillation: KL on every prior's class scores at ``temperature`` +
    smooth L1 on the offsets of the priors matched to the batch's ground truth."""
    from rlnas.detection.evaluate import priors_of
    from rlnas.detection.loss import MultiBoxLoss
    from rlnas.detection.train import distill_loss

    matcher = MultiBoxLoss(priors_of(student))
    return lambda out, taught, targets: distill_loss(out, taught, matcher.targets(targets)[1], temperature)


def classification_meta(data: Any) -> dict[str, Any]:
    """``model.pt`` entries of a classifier: input normalisation and class names."""
    return {"mean": list(data.spec.mean), "std": list(data.spec.std), "classes": list(data.classes)}


def detection_meta(data: Any) -> dict[str, Any]:
    """``model.pt`` entries of a detector: input normalisation, class names (label ``i`` is
    ``classes[i - 1]``, 0 is background) and the post-processing settings the mAP was scored with."""
    from rlnas.data.detection import MEAN, STD
    from rlnas.detection.boxes import PostProcess

    return {"mean": list(MEAN), "std": list(STD), "classes": list(data.class_names),
            "num_classes": int(data.num_classes), "postprocess": asdict(PostProcess())}


def classification_usage(model: nn.Module, resolution: int) -> str:
    """The report's note on the classifier IR's input and output."""
    return (f"IR: static input [1, 3, {resolution}, {resolution}], output logits; run it with "
            "`benchmark_app -m model.xml -d CPU -hint latency`")


def detection_usage(model: nn.Module, resolution: int) -> str:
    """The report's note on the detector IR's input, raw outputs and the Python post-processing."""
    n, classes = len(model.priors), model.num_classes + 1
    return (f"IR: static input [1, 3, {resolution}, {resolution}]; outputs loc [1, {n}, 4] (box offsets) and "
            f"conf [1, {n}, {classes}] (logits, class 0 = background) for the {n} default boxes; no decoding or "
            "NMS in the graph: `rlnas.detection.boxes.postprocess(loc, conf, load_exported('model.pt').priors)` "
            "gives the boxes. `benchmark_app -m model.xml -d CPU -hint latency` runs it as is")


@dataclass(frozen=True)
class TaskExport:
    """What the export does per task beyond the accuracy oracle's task pipeline.

    :param distill: ``(student, temperature) -> DistillLoss`` for ``export.finetune_epochs``.
    :param meta: ``data -> dict`` of preprocessing and class entries saved in ``model.pt``.
    :param usage: ``(model, resolution) -> str``: how to run the IR (a note of the report).
    """

    distill: Callable[[nn.Module, float], DistillLoss]
    meta: Callable[[Any], dict[str, Any]]
    usage: Callable[[nn.Module, int], str]


#: ``supernet.task`` -> what its export does differently
EXPORT_TASKS: dict[str, TaskExport] = {
    "classification": TaskExport(classification_distill, classification_meta, classification_usage),
    "detection": TaskExport(detection_distill, detection_meta, detection_usage),
}


def task_of(accuracy: Any) -> tuple[TaskPipeline, TaskExport]:
    """The accuracy oracle's :class:`~rlnas.oracles.accuracy.TaskPipeline` and the
    :data:`EXPORT_TASKS` entry of its task; ExportError when either is missing."""
    try:
        pipeline = accuracy.pipeline
    except ValueError as err:
        raise ExportError(str(err)) from err
    task = EXPORT_TASKS.get(accuracy.task)
    if task is None:
        raise ExportError(f"export of {accuracy.task} models is not implemented (known: {sorted(EXPORT_TASKS)})")
    return pipeline, task


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


def export_int8_ir(model: nn.Module, accuracy: Any, calib_images: int, path: Path,
                   verify_images: int | None) -> tuple[int, dict[str, float] | None]:
    """Quantize ``model`` as the accuracy oracle does (its task's conversion, NNCF with
    ``calib_images`` real calibration images), save it with a static batch-1 input, then (unless
    ``verify_images == 0``) score the saved IR with the oracle's INT8 evaluation on
    ``verify_images`` validation images (None: the oracle's evaluation set).

    :returns: the IR size in bytes and the scores (keys of the task's ``metrics``) or None.
    """
    import openvino as ov

    from rlnas.oracles.latency import ir_size

    resolution = accuracy.data.resolution
    quantized = accuracy.quantize(model, calib_images)
    quantized.reshape([1, 3, resolution, resolution])
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    scores = None
    if verify_images != 0:
        saved = ov.Core().read_model(str(path))
        scores = accuracy.int8_scores(accuracy.compile(saved), verify_images)
    return ir_size(path), scores


def save_model(model: nn.Module, arch: Arch, meta: dict[str, Any], accuracy: Any, task: TaskExport,
               path: Path) -> None:
    """``model.pt``: the state dict with what :func:`load_exported` needs to rebuild the network,
    and the task's preprocessing and class entries."""
    data = accuracy.data
    torch.save({"state_dict": model.state_dict(), "arch": arch.to_dict(), "family": meta["family"],
                "kwargs": meta["kwargs"], "task": accuracy.task, "resolution": data.resolution,
                **task.meta(data)}, path)


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild the model saved as ``model.pt`` by :func:`export_run` (eval mode); a detector
    returns ``(loc, conf)`` and carries its ``priors``."""
    from rlnas.spaces import create_supernet

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = create_supernet(ckpt["family"], **ckpt["kwargs"]).extract(Arch.from_dict(ckpt["arch"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


# -- the export ---------------------------------------------------------------------------------------


def _numbers(m: Measurement) -> dict[str, Any]:
    return {"arch": m.arch.short(), "arch_json": m.arch.to_json(), "acc_fp32": m.acc_fp32,
            "acc_int8": m.acc_int8, "latency_ms": m.latency_ms, "ref_latency_ms": m.ref_latency_ms,
            "throughput_fps": m.throughput_fps,
            "latency_ratio": m.latency_ratio, "params": m.params, "macs": m.macs,
            "ir_size_bytes": m.ir_size_bytes, "feasible": m.feasible}


NO_FEASIBLE_NOTE = "no feasible candidate was found: exporting a0 itself (the constraint holds for it)"
LATENCY_NOTE = ("latency/throughput: OpenVINO INT8, batch 1, on the profile (median; throughput = 1000 / "
                "latency). Absolute medians of a0 and the found network come from different moments; the "
                "speed-up uses the ratio timed alongside a0 (interleaved rounds), robust to machine load")


def export_run(cfg: DictConfig, run_dir: str | Path, setup: Any = None) -> dict[str, Any]:
    """Export the best feasible architecture of the run in ``run_dir`` (see module doc).

    :param setup: the search's :class:`~rlnas.search.app.SearchSetup` (reuses its supernet, data
        and accuracy oracle); None builds them from the run's files (``rlnas-export``).
    :returns: the report summary (also written as ``report.json``).
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    baseline, candidates = load_run(run_dir)
    best = best_feasible(candidates)
    chosen = best or baseline
    supernet, meta, accuracy, latency = _materials(cfg, run_dir, setup)
    pipeline, task = task_of(accuracy)
    out = run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    found, notes = _numbers(chosen), ([] if best else [NO_FEASIBLE_NOTE])
    model = _network(cfg, accuracy, chosen.arch, baseline.arch, task, found, notes)
    verify = _write_artefacts(cfg, out, model, chosen.arch, meta, accuracy, task, found)
    notes += _timing_notes(found, latency, out / "model.xml", chosen)
    if found["exported_ir_int8"]:
        notes.append(f"exported INT8 IR re-measured on {verify} validation images: "
                     f"{_scores_text(found['exported_ir_int8'], pipeline)} (search measured {pipeline.metric} "
                     f"{_fmt(chosen.acc_int8)})")
    notes += [LATENCY_NOTE, task.usage(model, accuracy.data.resolution)]
    base = {**_numbers(baseline), "torch_size_bytes": torch_size_bytes(supernet.extract(baseline.arch))}
    target = float(cfg.tau) * float(baseline.acc_fp32)
    summary = {
        "setup": {"model": meta["family"], "task": accuracy.task, "dataset": cfg.dataset.name,
                  "device profile": cfg.device.name, "tau": float(cfg.tau), "supernet checkpoint": meta.get("path"),
                  "run": str(run_dir), "candidates measured": len(candidates)},
        "metric": pipeline.metric, "metrics": dict(pipeline.metrics),
        "baseline": base, "found": found, "target": target, "feasible_found": best is not None,
        "speedup": (1.0 / chosen.latency_ratio) if chosen.latency_ratio else None,
        "files": {name: str(out / name) for name in ("arch.json", "model.pt", "model.onnx", "model.xml",
                                                     "model.bin", "report.md", "report.json")},
        "notes": notes, "out_dir": str(out), "export_seconds": time.perf_counter() - t0,
    }
    from rlnas.report import write_report

    write_report(out, summary)
    _pareto_png(out, baseline, candidates, target, best, pipeline.metric)
    if setup is None and latency is not None:
        latency.close()
    return summary


def _network(cfg: DictConfig, accuracy: Any, arch: Arch, a0: Arch, task: TaskExport, found: dict[str, Any],
             notes: list[str]) -> nn.Module:
    """``arch`` prepared as the oracle measured it (BN recalibrated), fine-tuned with the task's
    distillation from a0 when ``export.finetune_epochs > 0`` (its FP32 accuracy then re-measured)."""
    model = accuracy.prepare(arch).to(memory_format=torch.contiguous_format)
    epochs = int(cfg.export.finetune_epochs)
    if epochs <= 0:
        return model
    teacher = accuracy.prepare(a0).to(memory_format=torch.contiguous_format)
    loss_fn = task.distill(model, float(cfg.export.kd_temperature))
    model = finetune_distill(model, teacher, accuracy.data, loss_fn, epochs, float(cfg.export.finetune_lr),
                             int(cfg.export.finetune_batch_size), int(cfg.seed))
    found["acc_fp32"] = accuracy.fp32_accuracy(model)
    notes.append(f"fine-tuned {epochs} epoch(s) with distillation from a0; FP32/INT8 {accuracy.metric} re-measured")
    return model


def _write_artefacts(cfg: DictConfig, out: Path, model: nn.Module, arch: Arch, meta: dict[str, Any],
                     accuracy: Any, task: TaskExport, found: dict[str, Any]) -> int:
    """Write arch.json, model.pt, model.onnx and the INT8 IR; record sizes and the IR's re-measured
    INT8 scores in ``found``. Returns how many validation images scored the IR."""
    pipeline, resolution = accuracy.pipeline, accuracy.data.resolution
    (out / "arch.json").write_text(json.dumps({"arch": arch.to_dict(), "family": meta["family"],
                                               "kwargs": meta["kwargs"], "task": accuracy.task,
                                               "short": arch.short()}, indent=2) + "\n")
    save_model(model, arch, meta, accuracy, task, out / "model.pt")
    export_onnx(model, (1, 3, resolution, resolution), out / "model.onnx", int(cfg.export.onnx_opset),
                pipeline.output_names)
    verify = accuracy.eval_count if cfg.export.verify_images is None else int(cfg.export.verify_images)
    ir_bytes, scores = export_int8_ir(model, accuracy, int(cfg.export.calib_images), out / "model.xml", verify)
    found.update(ir_size_bytes=ir_bytes, torch_size_bytes=torch_size_bytes(model), exported_ir_int8=scores,
                 exported_ir_acc_int8=scores[pipeline.accuracy_key] if scores else None)
    if scores and int(cfg.export.finetune_epochs) > 0:
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

    from rlnas.report import pareto_figure

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


def _materials(cfg: DictConfig, run_dir: Path, setup: Any) -> tuple[nn.Module, dict[str, Any], Any, Any]:
    """Supernet, its meta, the accuracy and latency oracles: from the running search, or rebuilt."""
    if setup is not None:
        return setup.supernet, setup.meta, setup.accuracy, setup.latency
    from rlnas.data import DatasetError, build_data
    from rlnas.oracles.store import MeasurementStore
    from rlnas.search.app import SetupError, build_accuracy_oracle, build_latency_oracle, load_profile

    supernet, meta = load_run_supernet(run_dir)
    try:
        data = build_data(cfg.dataset, int(cfg.resolution))
        profile = load_profile(cfg)
    except (DatasetError, SetupError, FileNotFoundError) as err:
        raise ExportError(str(err)) from err
    store = MeasurementStore(Path(cfg.cache_dir) / "measurements.sqlite")
    return (supernet, meta, build_accuracy_oracle(cfg, supernet, meta, data, store),
            build_latency_oracle(cfg, supernet, meta, store, profile))


# -- command line ------------------------------------------------------------------------------------


def compose_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's saved config (``<run>/.hydra/config.yaml``) with Hydra overrides applied; an
    unknown key fails with Hydra's message."""
    from hydra import compose, initialize_config_dir

    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ExportError(f"{saved} not found: {run_dir} is not an rlnas-search run directory. Run "
                          f"`rlnas-search run_dir={run_dir}` first, or pass the directory it printed.")
    with initialize_config_dir(config_dir=str(saved.parent.resolve()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``rlnas-export run=<dir> [overrides]``."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    runs = [a for a in args if a.startswith("run=")]
    if len(runs) != 1 or args in (["-h"], ["--help"]):
        print(USAGE, file=sys.stderr)
        return 2
    run_dir = Path(runs[0].split("=", 1)[1])
    overrides = [a for a in args if not a.startswith("run=")]
    if not run_dir.is_dir():
        print(f"run directory {run_dir} does not exist; search first: `rlnas-search run_dir={run_dir}`",
              file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_run_config(run_dir, overrides)
        summary = export_run(cfg, run_dir)
    except (ExportError, HydraException, OmegaConfBaseException) as err:
        print(f"rlnas-export: {err}", file=sys.stderr)
        return 2
    print((Path(summary["out_dir"]) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

