"""``rlnas-latency``: PyTorch FP32 vs OpenVINO FP32/FP16/INT8 latency of torchvision models.

Hydra root config ``conf/latency.yaml``; profiles come from the shared ``conf/device`` group.
Prints one table row per (model, profile) and writes every result as JSON in the run directory.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlnas import machinelock
from rlnas.errors import ConfigError
from rlnas.oracles.device import DeviceProfile, load_profile, profile_from_config
from rlnas.oracles.irbuild import PRECISIONS, QuantizationConfig
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.latency_results import LatencyResult
from rlnas.oracles.ratios import TimingConfig, percentile
from rlnas.oracles.worker_client import DEFAULT_LOCK_PATH


@dataclass(frozen=True)
class TorchTiming:
    """How long to time PyTorch FP32 inference in-process."""

    warmup_iters: int = 3
    min_iters: int = 10
    min_time_s: float = 2.0


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_models(names: Sequence[str]) -> list[str]:
    """The names, if all are torchvision classification models; else ValueError naming them."""
    valid = classification_models()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"unknown torchvision models {unknown}; valid: {valid}")
    return list(names)


def build_model(name: str, num_classes: int = 1000) -> Any:
    """A torchvision model with random weights (never downloads)."""
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()


def input_shape(resolution: int | Sequence[int]) -> tuple[int, int, int, int]:
    """``(1, 3, H, W)`` from an int or ``[H, W]``; ValueError otherwise."""
    try:
        hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    except TypeError:
        hw = ()
    if len(hw) != 2 or not all(isinstance(d, int) and d > 0 for d in hw):
        raise ConfigError(f"resolution must be a positive int or [H, W], got {resolution!r}")
    return (1, 3, hw[0], hw[1])


def resolve_profiles(cfg: DictConfig) -> list[DeviceProfile]:
    """Profiles named in ``cfg.profiles`` (the composed ``device`` node for its own name),
    validated against this host; unsupported ones raise, or are skipped with ``skip_unsupported``."""
    device = OmegaConf.to_container(cfg.device, resolve=True)
    overrides = {"threads": int(cfg.threads)} if cfg.get("threads") else {}
    out = []
    for name in cfg.profiles:
        try:
            if name == device["name"]:
                profile = profile_from_config({**device, **overrides})
            else:
                profile = load_profile(str(name), **overrides)
        except ValueError as err:
            if not cfg.get("skip_unsupported"):
                raise
            print(f"skipping profile {name}: {err}")
            continue
        out.append(profile)
    return out


def torch_latency(model: Any, shape: Sequence[int], threads: int, timing: TorchTiming,
                  lock_path: str | None) -> dict[str, float]:
    """PyTorch FP32 single-image latency (median, p10, p90 in ms) with ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(*shape)
    times: list[float] = []
    try:
        with machinelock.exclusive(lock_path or DEFAULT_LOCK_PATH), torch.inference_mode():
            for _ in range(timing.warmup_iters):
                model(x)
            start = time.perf_counter()
            while len(times) < timing.min_iters or time.perf_counter() - start < timing.min_time_s:
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return {"latency_ms": statistics.median(times), "p10_ms": percentile(times, 10),
            "p90_ms": percentile(times, 90), "iterations": len(times)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(num: float | None, den: float | None) -> str:
    return "-" if not num or not den else f"{num / den:.2f}x"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f}"


def table_row(model: str, profile: str, resolution: int, torch_ms: float | None,
              results: dict[str, LatencyResult]) -> dict[str, str]:
    """One printed row: latencies, speedups and sizes of a (model, profile)."""
    def lat(p: str) -> float | None:
        r = results.get(p)
        return r.latency_ms if r is not None and r.ok else None

    def cell(p: str) -> str:
        r = results.get(p)
        if r is None:
            return "-"
        if not r.ok:
            return "failed"
        return f"{r.latency_ms:.2f} ({r.inference_precision})"

    row = {"model": model, "profile": profile, "res": str(resolution), "torch fp32 ms": _ms(torch_ms)}
    row.update({f"ov {p} ms": cell(p) for p in results})
    row["int8 vs fp32"] = _ratio(lat("fp32"), lat("int8"))
    row["int8 vs fp16"] = _ratio(lat("fp16"), lat("int8"))
    row["int8 vs torch"] = _ratio(torch_ms, lat("int8"))
    row.update({f"{p} IR MB": _mb(r.ir_size_bytes) for p, r in results.items()})
    return row


def make_oracle(cfg: DictConfig, profile: DeviceProfile,
                reference: Callable[[], Any] | None) -> LatencyOracle:
    return LatencyOracle(
        profile, cache_dir=cfg.cache_dir, reference=reference,
        reference_key=f"torchvision:{cfg.reference}" if reference is not None else None,
        timing=TimingConfig(**OmegaConf.to_container(cfg.timing, resolve=True)),
        quantization=QuantizationConfig(**OmegaConf.to_container(cfg.quantization, resolve=True)),
        ratio_method=cfg.ratio_method, timeout_s=float(cfg.timeout_s),
        lock_path=cfg.lock_path or DEFAULT_LOCK_PATH, retry_failed=bool(cfg.retry_failed))


def run(cfg: DictConfig) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Measure everything the config asks for; return (table rows, raw result dicts)."""
    from tqdm import tqdm

    models = check_models(list(cfg.models))
    resolution = cfg.resolution
    shape = input_shape(OmegaConf.to_container(resolution) if OmegaConf.is_list(resolution) else resolution)
    precisions = list(cfg.precisions)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"unknown precisions {bad}; valid: {list(PRECISIONS)}")
    profiles = resolve_profiles(cfg)
    builders = {m: functools.lru_cache(maxsize=1)(functools.partial(build_model, m, int(cfg.num_classes)))
                for m in models}
    reference = None
    if cfg.reference:
        check_models([cfg.reference])
        reference = functools.partial(build_model, cfg.reference, int(cfg.num_classes))
    torch_timing = TorchTiming(**OmegaConf.to_container(cfg.torch_timing, resolve=True))
    total = len(models) * len(profiles) * (len(precisions) + int(bool(cfg.torch_fp32)))
    rows, raw = [], []
    torch_cache: dict[tuple[str, int], dict[str, float]] = {}
    with tqdm(total=total, desc="latency", unit="meas") as bar:
        for profile in profiles:
            with make_oracle(cfg, profile, reference) as oracle:
                for model in models:
                    torch_ms = None
                    if cfg.torch_fp32:
                        bar.set_postfix_str(f"{model} {profile.name} torch")
                        tkey = (model, profile.threads)
                        if tkey not in torch_cache:
                            torch_cache[tkey] = torch_latency(builders[model](), shape, profile.threads,
                                                              torch_timing, cfg.lock_path)
                        torch_ms = torch_cache[tkey]["latency_ms"]
                        bar.update()
                    results = {}
                    for precision in precisions:
                        bar.set_postfix_str(f"{model} {profile.name} {precision}")
                        results[precision] = oracle.measure(builders[model], shape, precision,
                                                            model_key=f"torchvision:{model}:{cfg.num_classes}",
                                                            force=bool(cfg.force))
                        raw.append({"model": model, "torch_fp32": torch_cache.get((model, profile.threads)),
                                    **results[precision].to_dict()})
                        bar.update()
                    rows.append(table_row(model, profile.name, shape[2], torch_ms, results))
    return rows, raw


def report(rows: list[dict[str, str]], raw: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    text = tabulate(rows, headers="keys", tablefmt="github")
    failed = [r for r in raw if r["status"] != "ok"]
    for r in failed:
        text += f"\nFAILED {r['model']} {r['profile']} {r['precision']}: {r['reason']}"
    return text


def app_body(cfg: DictConfig) -> None:
    """Measure, print the table, write the JSON (``rlnas-latency``'s task; see :mod:`rlnas.cli`)."""
    rows, raw = run(cfg)
    print(report(rows, raw))
    if cfg.output_json:
        out = Path(HydraConfig.get().runtime.output_dir) / cfg.output_json
        out.write_text(json.dumps(raw, indent=1))
        print(f"results: {out}")

