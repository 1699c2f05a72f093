"""Result tables, the Pareto front (INT8 latency vs INT8 accuracy) and the export report."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from rlnas.oracles.evaluator import Measurement


def pareto_front(measurements: Iterable[Measurement]) -> list[Measurement]:
    """Successful measurements not dominated in (lower latency ratio, higher INT8 accuracy),
    sorted by latency ratio."""
    ok = sorted((m for m in measurements if m.ok and m.latency_ratio is not None and m.acc_int8 is not None),
                key=lambda m: (m.latency_ratio, -m.acc_int8))
    front, best_acc = [], float("-inf")
    for m in ok:
        if m.acc_int8 > best_acc:
            front.append(m)
            best_acc = m.acc_int8
    return front


def pareto_figure(measurements: Sequence[Measurement], baseline: Measurement, target: float,
                  best: Measurement | None = None, title: str = "", metric: str = "top-1 accuracy"):
    """Matplotlib figure: every candidate, the Pareto front, a0, the accuracy target and the best
    feasible architecture; ``metric`` labels the accuracy axis (e.g. ``mAP@.5``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    ok = [m for m in measurements if m.ok and m.latency_ratio is not None]
    feas = [m for m in ok if m.feasible]
    infeas = [m for m in ok if not m.feasible]
    ax.scatter([m.latency_ratio for m in infeas], [m.acc_int8 for m in infeas], s=14, c="tab:gray",
               alpha=0.6, label="infeasible")
    ax.scatter([m.latency_ratio for m in feas], [m.acc_int8 for m in feas], s=14, c="tab:blue",
               label="feasible")
    front = pareto_front(list(measurements) + [baseline])
    ax.step([m.latency_ratio for m in front], [m.acc_int8 for m in front], where="post", c="tab:blue",
            lw=1, label="Pareto front")
    ax.scatter([baseline.latency_ratio or 1.0], [baseline.acc_int8], marker="*", s=120, c="black",
               label="a0 (original)")
    if best is not None:
        ax.scatter([best.latency_ratio], [best.acc_int8], marker="o", s=90, facecolors="none",
                   edgecolors="tab:red", lw=2, label="best feasible")
    ax.axhline(target, ls="--", c="tab:red", lw=1, label="accuracy target")
    ax.set_xlabel("INT8 latency / a0 INT8 latency")
    ax.set_ylabel(f"INT8 {metric}")
    ax.set_title(title or f"{len(ok)} measured architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def comparison_rows(baseline: Measurement, best: Measurement | None) -> list[list[str]]:
    """Rows of the result table: a0 and the best feasible architecture side by side."""
    rows = [["", "a0 (original)", "best feasible"]]
    b = best
    fields = [
        ("architecture", lambda m: m.arch.short()),
        ("FP32 accuracy", lambda m: _fmt(m.acc_fp32, ".4f")),
        ("INT8 accuracy", lambda m: _fmt(m.acc_int8, ".4f")),
        ("INT8 latency (ms)", lambda m: _fmt(m.latency_ms, ".3f")),
        ("a0 INT8 latency timed alongside (ms)", lambda m: _fmt(m.ref_latency_ms, ".3f")),
        ("latency ratio to a0 (interleaved)", lambda m: _fmt(m.latency_ratio, ".3f")),
        ("speed-up", lambda m: _fmt(1 / m.latency_ratio if m.latency_ratio else None, ".2f") + "x"),
        ("params (M)", lambda m: _fmt(m.params / 1e6 if m.params else None, ".3f")),
        ("MACs (M)", lambda m: _fmt(m.macs / 1e6 if m.macs else None, ".2f")),
    ]
    for name, get in fields:
        rows.append([name, get(baseline), get(b) if b is not None else "none found"])
    return rows


def result_table(baseline: Measurement, best: Measurement | None, target: float,
                 unique_evaluations: int, budget: int | None, extra: dict[str, Any] | None = None) -> str:
    """The console table printed at the end of a search."""
    rows = comparison_rows(baseline, best)
    table = tabulate(rows[1:], headers=rows[0], tablefmt="github")
    lines = [table, "",
             f"accuracy target (INT8 >= tau * a0 FP32): {target:.4f}",
             f"unique evaluations: {unique_evaluations}" + (f" / budget {budget}" if budget else "")]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return "\n".join(lines)


def write_report(out_dir: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` (the summary as is) and ``report.md`` (its human-readable form).

    ``summary`` keys: ``baseline`` and ``found`` (dicts of numbers), ``setup`` (profile, dataset,
    tau...), ``files`` (name -> path), ``notes`` (list of strings), ``metric`` (the accuracy's
    label, e.g. ``top-1`` or ``mAP@.5``; default ``accuracy``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md_path = out / "report.md"
    md_path.write_text(_markdown(summary))
    return md_path, json_path


#: (label, key, format); ``{metric}`` in a label is the accuracy's name (top-1, mAP@.5...)
_REPORT_FIELDS = [
    ("architecture", "arch", None),
    ("FP32 {metric}", "acc_fp32", ".4f"),
    ("INT8 {metric}", "acc_int8", ".4f"),
    ("INT8 {metric} of the exported IR", "exported_ir_acc_int8", ".4f"),
    ("INT8 latency (ms, profile)", "latency_ms", ".3f"),
    ("a0 INT8 latency timed alongside (ms)", "ref_latency_ms", ".3f"),
    ("INT8 throughput (FPS, batch 1)", "throughput_fps", ".1f"),
    ("latency ratio to a0", "latency_ratio", ".3f"),
    ("params", "params", ",d"),
    ("MACs", "macs", ",d"),
    ("OpenVINO INT8 IR size (bytes)", "ir_size_bytes", ",d"),
    ("PyTorch FP32 size (bytes)", "torch_size_bytes", ",d"),
]


def _markdown(summary: dict[str, Any]) -> str:
    base, found = summary.get("baseline", {}), summary.get("found", {})
    metric = summary.get("metric", "accuracy")
    rows = []
    for label, key, spec in _REPORT_FIELDS:
        cell = [base.get(key), found.get(key)]
        rows.append([label.format(metric=metric)]
                    + [("-" if v is None else (format(v, spec) if spec else str(v))) for v in cell])
    lines = ["# rlnas search result", ""]
    setup = summary.get("setup", {})
    if setup:
        lines += [f"- **{k}**: {v}" for k, v in setup.items()] + [""]
    lines += [tabulate(rows, headers=["", "a0 (original)", "found"], tablefmt="github"), ""]
    if summary.get("speedup"):
        lines += [f"**INT8 speed-up on the profile: {summary['speedup']:.2f}x** "
                  f"(target: INT8 {metric} >= {summary.get('target', float('nan')):.4f}).", ""]
    files = summary.get("files", {})
    if files:
        lines += ["## Files", ""] + [f"- `{k}`: {v}" for k, v in files.items()] + [""]
    notes = summary.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
