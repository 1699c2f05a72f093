"""Result tables and the export report (the Pareto front itself: :mod:`rlnas.search.pareto`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from rlnas.oracles.profiling import ratio_label, time_label
from rlnas.search.measurement import Measurement
from rlnas.search.pareto import pareto_figure, pareto_front

__all__ = ["comparison_rows", "pareto_figure", "pareto_front", "result_table", "write_report"]


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def comparison_rows(baseline: Measurement, best: Measurement | None) -> list[list[str]]:
    """Rows of the result table: the maximal subnet (a0's architecture with the supernet's weights:
    a0 itself is the constraint's reference, reported beside the table) and the best feasible
    architecture side by side; both ratios are to a0 timed alongside, in the search's latency metric."""
    rows = [["", "maximal subnet (a0's architecture)", "best feasible (search's timing, unconfirmed)"]]
    b = best
    time, ratio = time_label(baseline.latency_metric), ratio_label(baseline.latency_metric)
    fields = [
        ("architecture", lambda m: m.arch.short()),
        ("FP32 accuracy", lambda m: _fmt(m.acc_fp32, ".4f")),
        ("INT8 accuracy", lambda m: _fmt(m.acc_int8, ".4f")),
        (f"INT8 {time} (ms)", lambda m: _fmt(m.latency_ms, ".3f")),
        (f"a0 INT8 {time} timed alongside (ms)", lambda m: _fmt(m.ref_latency_ms, ".3f")),
        (f"{ratio} to a0 (interleaved)", lambda m: _fmt(m.latency_ratio, ".3f")),
        ("speed-up in the search (unconfirmed)", lambda m: _fmt(1 / m.latency_ratio if m.latency_ratio else None,
                                                                ".2f") + "x"),
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
    label, e.g. ``top-1`` or ``mAP@.5``; default ``accuracy``), ``latency_metric`` (what the
    latencies and ratios time: ``latency``, the default, or ``throughput``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md_path = out / "report.md"
    md_path.write_text(_markdown(summary))
    return md_path, json_path


#: (label, key, format); in a label ``{metric}`` is the accuracy's name (top-1, mAP@.5...), ``{time}``
#: and ``{ratio}`` what the latency metric times (:func:`time_label`, :func:`ratio_label`)
_REPORT_FIELDS = [
    ("architecture", "arch", None),
    ("FP32 {metric}", "acc_fp32", ".4f"),
    ("INT8 {metric}", "acc_int8", ".4f"),
    ("INT8 {metric} of the exported IR", "exported_ir_acc_int8", ".4f"),
    ("INT8 {time} (ms, profile)", "latency_ms", ".3f"),
    ("a0 INT8 {time} timed alongside (ms)", "ref_latency_ms", ".3f"),
    ("{ratio} to a0", "latency_ratio", ".3f"),
    ("params", "params", ",d"),
    ("MACs", "macs", ",d"),
    ("OpenVINO INT8 IR size (bytes)", "ir_size_bytes", ",d"),
    ("PyTorch FP32 size (bytes)", "torch_size_bytes", ",d"),
]


def _cell(value: Any, spec: str | None) -> str:
    return "-" if value is None else (format(value, spec) if spec else str(value))


def _a0_table(a0: dict[str, Any], found: dict[str, Any], metric: str, latency_metric: str) -> list[str]:
    """a0 as deployed beside the exported network, validation and held-out images."""
    fields = [("FP32 {m}, validation images", "val_fp32", "acc_fp32"),
              ("INT8 {m}, validation images", "val_int8", "acc_int8"),
              ("FP32 {m}, held-out images", "holdout_fp32", "holdout_fp32"),
              ("INT8 {m}, held-out images", "holdout_int8", "holdout_int8"),
              (f"INT8 {time_label(latency_metric)} in the confirmation (ms)", "latency_ms", "latency_ms")]
    rows = [[label.format(m=metric), _cell(a0.get(a), ".4f"), _cell(found.get(f), ".4f")] for label, a, f in fields]
    return ["## a0 (the model you deploy, as deployed) and the exported network", "",
            tabulate(rows, headers=["", "a0", "exported"], tablefmt="github"), ""]


def _finalists_table(finals: dict[str, Any], metric: str, latency_metric: str) -> list[str]:
    """Every finalist before/after fine-tuning, with its search and confirmation timings."""
    rows = []
    for f in finals.get("finalists", []):
        b, a = f["before"], f["after"]
        ci = f.get("confirmed_ci") or [None, None]
        passes = ", ".join(_cell(r, ".3f") for r in f.get("confirmed_passes") or [])
        rows.append([f["name"] + (" (exported)" if f["name"] == finals.get("chosen") else ""), f["short"],
                     _cell(f["search"].get("latency_ratio"), ".3f"), _cell(f.get("confirmed_ratio"), ".3f"),
                     f"[{_cell(ci[0], '.3f')}, {_cell(ci[1], '.3f')}]", passes,
                     f"{_cell(b['val_int8'], '.4f')} -> {_cell(a['val_int8'], '.4f')}",
                     f"{_cell(b['holdout_int8'], '.4f')} -> {_cell(a['holdout_int8'], '.4f')}",
                     _bound_cell(a.get("val_bound")), _interval_cell(a.get("holdout_int8_interval")),
                     _bound_cell(a.get("holdout_bound")), "yes" if f["feasible"] else "no"])
    conf = finals.get("confirmation") or {}
    return [f"## Finalists (target INT8 {metric} >= {finals.get('target', float('nan')):.4f} on validation images)",
            "", tabulate(rows, headers=["", "architecture", "ratio (search)", "ratio (confirmed, median)",
                                        "95 % CI (envelope of the passes)", "ratio by pass",
                                        f"INT8 {metric} val: before -> after fine-tune",
                                        f"INT8 {metric} held-out: before -> after",
                                        "bound on val: margin, lower bound (holds?)", "held-out INT8, 95 % CI",
                                        "bound on held-out: margin, lower bound (holds?)", "feasible (point)"],
                         tablefmt="github"), "",
            f"Confirmation: a0 and the finalists in {conf.get('passes', 1)} pass(es), "
            f"{conf.get('rounds_by_pass', conf.get('rounds', '?'))} interleaved rounds, on profile "
            f"{conf.get('profile', '?')} (IRs built the same way for all); ratios of the "
            f"{time_label(latency_metric)}, as in the search.", "",
            f"Bound tests: {finals.get('bound_test') or CLASSIFICATION_BOUND}; "
            f"one-sided {finals.get('confidence', 0.9):.0%} lower confidence bound; on validation images alpha is "
            "split over the finalists (Bonferroni), which chooses; held-out images only report. The finalists "
            "were selected by the search on the same validation images, which the split does not account for.",
            "", *_above_cap_note(conf)]


#: what the bound tests of a finalists record written before it said how they decide were
CLASSIFICATION_BOUND = "per-image paired differences INT8(finalist) - tau x FP32(a0) on the same images"


def _bound_cell(test: dict[str, Any] | None) -> str:
    if not test:
        return "-"
    return f"{test['margin']:+.4f}, {test['lower']:+.4f} ({'yes' if test['holds'] else 'no'})"


def _interval_cell(interval: list[float] | None) -> str:
    return "-" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def _throughput_lines(throughput: dict[str, Any]) -> list[str]:
    """INT8 images per second in OpenVINO's throughput mode and the exported IR's ratio, or why
    they were not measured."""
    fps = throughput.get("fps")
    if not fps:
        return ["## INT8 throughput (OpenVINO throughput mode)", "",
                f"Not measured: {throughput.get('reason', 'unknown reason')}.", ""]
    rows = [[name, f"{value:.1f}", _cell(throughput.get("ratio", {}).get(name), ".3f")] for name, value in fps.items()]
    return ["## INT8 throughput (OpenVINO throughput mode)", "",
            tabulate(rows, headers=["IR", "images/s", "ratio to the reference (time per image)"],
                     tablefmt="github", disable_numparse=True), "",
            f"PERFORMANCE_HINT THROUGHPUT on profile {throughput.get('profile', '?')} "
            f"({throughput.get('threads', '?')} threads; the plugin picks streams and requests), the IRs "
            f"timed in {throughput.get('rounds', '?')} interleaved rounds as the search's ratios are; images/s is "
            "1000 / the median time per image.", ""]


def _above_cap_note(conf: dict[str, Any]) -> list[str]:
    """What ran above the profile's ISA on this host, if anything (an emulation's limit)."""
    above = {name: kernels for name, kernels in (conf.get("above_cap") or {}).items() if kernels}
    if not above:
        return []
    listed = "; ".join(f"{name}: {', '.join(kernels)}" for name, kernels in above.items())
    return [f"Above the profile's ISA cap on this host (OpenVINO's own kernels follow the host's ISA, "
            f"not ONEDNN_MAX_CPU_ISA; they run faster here than on the CPU the profile stands for): {listed}.", ""]


def _markdown(summary: dict[str, Any]) -> str:
    base, found = summary.get("baseline", {}), summary.get("found", {})
    metric, latency_metric = summary.get("metric", "accuracy"), summary.get("latency_metric", "latency")
    labels = {"metric": metric, "time": time_label(latency_metric), "ratio": ratio_label(latency_metric)}
    rows = [[label.format(**labels), _cell(base.get(key), spec), _cell(found.get(key), spec)]
            for label, key, spec in _REPORT_FIELDS]
    lines = ["# rlnas search result", ""]
    setup = summary.get("setup", {})
    if setup:
        lines += [f"- **{k}**: {v}" for k, v in setup.items()] + [""]
    if summary.get("speedup"):
        where = "confirmed alongside a0" if found.get("confirmed_ratio") else "as measured in the search"
        measure = "" if latency_metric == "latency" else f" ({time_label(latency_metric)})"
        lines += [f"**INT8 speed-up on the profile{measure}: {summary['speedup']:.2f}x** ({where}; target: INT8 {metric} "
                  f">= {summary.get('target', float('nan')):.4f} on validation images; constraint "
                  f"{'met' if found.get('feasible') else 'NOT met'}).", ""]
        if found.get("holdout_int8") is not None and summary.get("a0"):
            tau = summary.get("setup", {}).get("tau", 0.99)
            held_target = tau * summary["a0"]["holdout_fp32"]
            ok = found["holdout_int8"] >= held_target
            lines += [f"On held-out images: INT8 {metric} {found['holdout_int8']:.4f} vs tau x a0 FP32 "
                      f"{held_target:.4f}: the constraint {'holds' if ok else 'does NOT hold'} there.", ""]
    if summary.get("a0"):
        lines += _a0_table(summary["a0"], found, metric, latency_metric)
    lines += ["## The maximal subnet of the supernet and the exported network (search numbers)", "",
              tabulate(rows, headers=["", "maximal subnet", "exported"], tablefmt="github"), ""]
    if summary.get("throughput"):
        lines += _throughput_lines(summary["throughput"])
    if summary.get("finalists") and summary["finalists"].get("finalists"):
        lines += _finalists_table(summary["finalists"], metric, latency_metric)
    files = summary.get("files", {})
    if files:
        lines += ["## Files", ""] + [f"- `{k}`: {v}" for k, v in files.items()] + [""]
    notes = summary.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
