"""``rlnas-export run=<dir>``: ship the best feasible architecture of a search run.

Writes under ``<run>/export/``:

- ``arch.json``: the architecture (and the family's builder kwargs);
- ``model.pt``: standalone PyTorch model, ``{"state_dict", "arch", "family", "kwargs", ...}``
  (BN statistics recalibrated as the accuracy oracle does; optionally fine-tuned for
  ``export.finetune_epochs`` epochs with distillation from a0); :func:`load_exported` rebuilds it;
- ``model.onnx``: FP32 ONNX (dynamic batch);
- ``model.xml``/``model.bin``: OpenVINO INT8 IR, quantized by NNCF with real calibration images,
  static input ``[1, 3, R, R]`` (as timed), so ``benchmark_app -m model.xml`` runs it as is;
- ``report.md`` + ``report.json``: a0 vs found: FP32/INT8 accuracy, INT8 latency and throughput on
  the profile, speed-up, IR and PyTorch sizes, params, MACs.

The numbers come from the run's measurements (the oracles' cache); the exported IR's INT8 accuracy
is measured again (``export.verify_images``) to check the artefact itself. Overrides after
``run=`` change the run's saved config, e.g. ``rlnas-export run=<dir> export.finetune_epochs=2``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from rlnas.arch import Arch
from rlnas.oracles.evaluator import Measurement, read_history

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


def finetune_distill(student: nn.Module, teacher: nn.Module, data: Any, epochs: int, lr: float,
                     batch_size: int, temperature: float, seed: int = 0) -> nn.Module:
    """Fine-tune ``student`` on the training split with distillation from ``teacher`` (a0):
    SGD with a cosine schedule, loss = KL(teacher || student) at ``temperature``."""
    from rlnas.supernet.train import kd_loss

    teacher.eval()
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    total = max(1, epochs * data.steps_per_epoch(batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for epoch in range(epochs):
        for x, _ in data.train_batches(batch_size, epoch, seed=seed + 1000):
            with torch.no_grad():
                target = teacher(x)
            loss = kd_loss(student(x), target, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("fine-tune epoch %d/%d: kd loss %.4f", epoch + 1, epochs, loss.item())
    return student.eval()


def torch_size_bytes(model: nn.Module) -> int:
    """Bytes of the FP32 state dict as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def export_onnx(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int) -> None:
    """FP32 ONNX with a dynamic batch (TorchScript exporter: needs no onnxscript)."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_int8_ir(model: nn.Module, accuracy: Any, calib_images: int, path: Path,
                   verify_images: int | None) -> tuple[int, float | None]:
    """Quantize with real calibration images, save with a static batch-1 input; returns the IR
    size and (unless ``verify_images == 0``) the IR's INT8 top-1 on the validation images."""
    import openvino as ov

    from rlnas.oracles.accuracy import (
        CALIB_SEED,
        compile_cpu,
        convert_to_openvino,
        openvino_top1,
        quantize_int8,
        quiet,
    )
    from rlnas.oracles.latency import ir_size

    data = accuracy.data
    images = data.train_subset(calib_images, CALIB_SEED)
    calibration = [x.numpy() for x in data.batches(images, accuracy.calib_batch_size)]
    with quiet():
        quantized = quantize_int8(convert_to_openvino(model, data.resolution), calibration)
    acc = None
    if verify_images != 0:
        compiled = compile_cpu(quantized, accuracy.batch_size, data.resolution, accuracy.inference_precision,
                               accuracy.threads)
        x, y = data.val_images(verify_images)
        acc = openvino_top1(compiled, data.batches(x, accuracy.batch_size), y)
    quantized.reshape([1, 3, data.resolution, data.resolution])
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return ir_size(path), acc


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild the model saved as ``model.pt`` by :func:`export_run` (eval mode)."""
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
    notes = []
    if best is None:
        notes.append("no feasible candidate was found: exporting a0 itself (the constraint holds for it)")
    chosen = best or baseline
    supernet, meta, accuracy, latency = _materials(cfg, run_dir, setup)
    if getattr(supernet, "task", "classification") != "classification":
        raise ExportError(f"export of {supernet.task} models is not implemented (classification only); the "
                          f"measurements are in {run_dir}/evaluations.jsonl")
    out = run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    arch = chosen.arch
    (out / "arch.json").write_text(json.dumps({"arch": arch.to_dict(), "family": meta["family"],
                                               "kwargs": meta["kwargs"], "short": arch.short()}, indent=2) + "\n")
    model = accuracy.prepare(arch).to(memory_format=torch.contiguous_format)
    found = _numbers(chosen)
    epochs = int(cfg.export.finetune_epochs)
    if epochs > 0:
        teacher = accuracy.prepare(baseline.arch).to(memory_format=torch.contiguous_format)
        model = finetune_distill(model, teacher, accuracy.data, epochs, float(cfg.export.finetune_lr),
                                 int(cfg.export.finetune_batch_size), float(cfg.export.kd_temperature),
                                 int(cfg.seed))
        found["acc_fp32"] = accuracy.fp32_accuracy(model)
        notes.append(f"fine-tuned {epochs} epoch(s) with distillation from a0; FP32/INT8 accuracy re-measured")
    shape = (1, 3, accuracy.data.resolution, accuracy.data.resolution)
    torch.save({"state_dict": model.state_dict(), "arch": arch.to_dict(), "family": meta["family"],
                "kwargs": meta["kwargs"], "resolution": accuracy.data.resolution,
                "mean": list(accuracy.data.spec.mean), "std": list(accuracy.data.spec.std),
                "classes": list(accuracy.data.classes)}, out / "model.pt")
    export_onnx(model, shape, out / "model.onnx", int(cfg.export.onnx_opset))
    verify = cfg.export.verify_images
    verify = accuracy._eval_count() if verify is None else int(verify)
    ir_bytes, ir_acc = export_int8_ir(model, accuracy, int(cfg.export.calib_images), out / "model.xml", verify)
    found["ir_size_bytes"] = ir_bytes
    found["exported_ir_acc_int8"] = ir_acc
    if epochs > 0 and ir_acc is not None:
        found["acc_int8"] = ir_acc
    found["torch_size_bytes"] = torch_size_bytes(model)
    base = _numbers(baseline)
    base["torch_size_bytes"] = torch_size_bytes(supernet.extract(baseline.arch))
    target = float(cfg.tau) * float(baseline.acc_fp32)
    timed = _time_ir(latency, out / "model.xml")
    if timed is not None:
        found["exported_ir_latency_ms"], found["exported_ir_ratio"] = timed.latency_ms, timed.ratio
        notes.append(f"exported IR timed on the profile alongside a0: {timed.latency_ms:.3f} ms, ratio "
                     f"{timed.ratio:.3f} (search measured {chosen.latency_ratio:.3f})")
    if ir_acc is not None:
        notes.append(f"exported INT8 IR re-measured on {verify} validation images: top-1 {ir_acc:.4f} "
                     f"(search measured {chosen.acc_int8:.4f})")
    notes += ["latency/throughput: OpenVINO INT8, batch 1, on the profile (median; throughput = 1000 / "
              "latency). Absolute medians of a0 and the found network come from different moments; the "
              "speed-up uses the ratio timed alongside a0 (interleaved rounds), robust to machine load",
              "IR: static input [1, 3, R, R]; run it with `benchmark_app -m model.xml -d CPU -hint latency`"]
    summary = {
        "setup": {"model": meta["family"], "dataset": cfg.dataset.name, "device profile": cfg.device.name,
                  "tau": float(cfg.tau), "supernet checkpoint": meta.get("path"), "run": str(run_dir),
                  "candidates measured": len(candidates)},
        "baseline": base, "found": found, "target": target, "feasible_found": best is not None,
        "speedup": (1.0 / chosen.latency_ratio) if chosen.latency_ratio else None,
        "files": {name: str(out / name) for name in ("arch.json", "model.pt", "model.onnx", "model.xml",
                                                     "model.bin", "report.md", "report.json")},
        "notes": notes, "out_dir": str(out), "export_seconds": time.perf_counter() - t0,
    }
    from rlnas.report import write_report

    write_report(out, summary)
    _pareto_png(out, baseline, candidates, target, best)
    if setup is None and latency is not None:
        latency.close()
    return summary


def _pareto_png(out: Path, baseline: Measurement, candidates: list[Measurement], target: float,
                best: Measurement | None) -> None:
    import matplotlib.pyplot as plt

    from rlnas.report import pareto_figure

    fig = pareto_figure(candidates, baseline, target, best)
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
    except (DatasetError, SetupError) as err:
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

