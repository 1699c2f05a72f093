"""What a user would pick instead (issue 23): torchvision baselines, trained with a0's recipe,
quantized and timed like a search's finalists, in the same confirmation as a0 and the finalists.

    .venv/bin/python experiments/baselines.py --run outputs/search/<run> \\
        --baseline outputs/a0/resnet18-imagenette-128/a0.pt --baseline outputs/a0/mobilenet_v2-imagenette-128/a0.pt
    .venv/bin/python experiments/baselines.py --run ... --baseline ... --device icelake_vnni   # another profile

A baseline is a torchvision-format state dict of a registered family whose maximal network is
torchvision's (``experiments/train_a0.py --model resnet18`` / ``--model mobilenet_v2`` write one):
``--baseline PATH`` takes the family (and its model kwargs) from the ``a0.json`` beside it, else
tells a torchvision ResNet from its tensors; ``--baseline FAMILY=PATH`` names it.

For the run (its saved config and supernet, as ``rlnas-export`` rebuilds it; ``--device`` times on
another profile, ``--override`` adds Hydra overrides):

- each baseline is loaded strictly as deployed (its own BN statistics), scored FP32 and NNCF INT8
  (real calibration images) on the validation and the held-out images, and its INT8 IR written the
  way the finalists' are (``rlnas.finalists.accuracy_row`` and ``save_int8_ir``, the run's
  ``finalists.calib_images``), under ``--out``;
- a0 (the run's, else its maximal subnet) and the finalists (``<run>/finalists/``; without them the
  exported IR ``<run>/export/model.xml``, scored here) come with their IRs and scores;
- all are timed in one interleaved confirmation per pass (``LatencyOracle.confirm``, the run's
  ``finalists.confirm_timing`` and ``--timing key=value`` over it), ``--passes`` passes (default
  the run's ``finalists.confirm_passes``); a network's ratio is its median over the passes.

Prints per network its INT8 held-out top-1 with the 95 % Wilson interval (``rlnas.stats``), the
paired held-out test of the bound ``INT8 >= tau * a0 FP32``, the confirmed latency and the ratio to
a0; writes ``--out``/baselines.json (default ``<run>/baselines/``) and ``baselines.png`` (INT8
held-out top-1 against the confirmed ratio, beside the search's Pareto front in the search's own
ratios and validation top-1). Scores and confirmations are kept in the run's measurement store: a
rerun only measures what is new (and keeps the baselines' IRs it wrote).

``--reference NAME`` (a baseline's name) makes that network the bound's reference and the ratios'
denominator instead of the run's a0: for a run whose a0 is not the model you deploy (a search in
the ResNet-18 space, judged against the ResNet-50 you have). Every network is then judged against
its FP32 scores on the same images, and each ratio is that of the same confirmation rounds divided
by the reference's, pass by pass (the timing itself stays interleaved with the run's a0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import openvino as ov
from hydra.errors import HydraException
from latency_agreement import confirm_timing, timing_overrides  # experiments/ (the script's directory)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tabulate import tabulate
from torch import nn

import rlnas
from rlnas.errors import UserError
from rlnas.export import compose_run_config, load_run, setup_of_run
from rlnas.finalists import (
    A0_NAME,
    FINALISTS_DIR,
    accuracy_row,
    combine_passes,
    correct_of,
    judge,
    load_finalists,
    save_int8_ir,
    teacher_of,
)
from rlnas.oracles.device import device_conf_dir, host_cpu_model, load_profile
from rlnas.oracles.ratios import median_ci
from rlnas.runsetup import RunSetup, plain
from rlnas.search.measurement import Measurement
from rlnas.search.pareto import pareto_front
from rlnas.spaces import list_families
from rlnas.stats import accuracy_interval, pack_bits
from rlnas.supernet.a0 import build_a0, detect_a0_family, file_sha256, read_state
from rlnas.validate import check_search

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the non-interactive backend is chosen)


class BaselineError(UserError):
    """A baseline this experiment cannot use (unknown family, another resolution...): one line."""


@dataclass(frozen=True)
class Baseline:
    """One trained network a user would pick instead: a family's maximal network with these weights."""

    name: str
    family: str
    path: Path
    kwargs: dict[str, Any]
    record: dict[str, Any]

    @property
    def key(self) -> str:
        """Its weights and build, as the accuracy store keys a plain model."""
        digest = hashlib.sha256(json.dumps(self.kwargs, sort_keys=True).encode()).hexdigest()[:8]
        return f"baseline:{self.family}:{digest}:{file_sha256(self.path)[:16]}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a search's run directory (.hydra/config.yaml, its supernet)")
    p.add_argument("--baseline", action="append", required=True, metavar="[FAMILY=]PATH",
                   help="a trained baseline's state dict (repeatable)")
    p.add_argument("--device", help="device profile to time on (default: the run's)")
    p.add_argument("--passes", type=int, help="confirmation passes (default: the run's finalists.confirm_passes)")
    p.add_argument("--timing", action="append", default=[], metavar="KEY=VALUE",
                   help="confirmation TimingConfig override (repeatable), e.g. min_rounds=10")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of the run's config (repeatable)")
    p.add_argument("--out", help="output directory (default <run>/baselines)")
    p.add_argument("--reference", default=A0_NAME, metavar="NAME",
                   help="the network the bound and the ratios refer to: a0 (default) or a baseline's name")
    args = p.parse_args(argv)
    if args.passes is not None and args.passes < 1:
        p.error("--passes must be at least 1")
    return args


# -- baselines ---------------------------------------------------------------------------------------


def model_kwargs(family: str) -> dict[str, Any]:
    """The model kwargs of ``conf/model/<family>.yaml`` (what ``train_a0.py`` trains with by default)."""
    path = rlnas.CONF_DIR / "model" / f"{family}.yaml"
    if not path.is_file():
        return {}
    return plain(OmegaConf.load(path).get("kwargs")) or {}


def parse_baseline(spec: str) -> Baseline:
    """``[FAMILY=]PATH`` as a :class:`Baseline`: the family named, else the one of the ``a0.json``
    beside ``PATH`` (what ``train_a0.py`` writes), else the torchvision ResNet its tensors are;
    kwargs from that ``a0.json`` (when it is of this family), else the family's config."""
    family, sep, path_text = spec.partition("=")
    path = Path(path_text if sep else spec)
    if not path.is_file():
        raise BaselineError(f"--baseline {spec!r}: {path} does not exist")
    record_path = path.with_name("a0.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    family = family if sep else record.get("family") or detect_a0_family(read_state(path))[0]
    record = record if record.get("family", family) == family else {}  # another network's record
    if family not in list_families():
        raise BaselineError(f"--baseline {spec!r}: unknown family {family!r}; registered: {', '.join(list_families())}")
    kwargs = {k: v for k, v in (record.get("model_kwargs") or model_kwargs(family)).items() if k != "num_classes"}
    return Baseline(family, family, path, kwargs, record)


def unique_names(baselines: list[Baseline]) -> list[Baseline]:
    """The baselines, a second one of a family named ``<family>-2`` and so on."""
    seen: dict[str, int] = {}
    out = []
    for b in baselines:
        seen[b.family] = seen.get(b.family, 0) + 1
        out.append(b if seen[b.family] == 1 else Baseline(f"{b.family}-{seen[b.family]}", b.family, b.path,
                                                          b.kwargs, b.record))
    return out


def check_resolution(baseline: Baseline, resolution: int) -> None:
    """A baseline trained at another resolution than the run's is refused (its record says)."""
    trained = baseline.record.get("resolution")
    if trained is not None and int(trained) != resolution:
        raise BaselineError(f"{baseline.path} was trained at {trained} px, the run at {resolution} px")


def load_baseline(setup: RunSetup, baseline: Baseline) -> nn.Module:
    """The baseline as deployed (eval mode, its own BN statistics), for the run's class count."""
    kwargs = {**baseline.kwargs, "num_classes": int(setup.data.num_classes)}
    return build_a0(baseline.family, kwargs, baseline.path)


# -- rows ----------------------------------------------------------------------------------------------


def holdout_of(row: dict[str, Any]) -> dict[str, Any]:
    """INT8 held-out top-1 of an :func:`rlnas.finalists.accuracy_row` with its 95 % Wilson interval."""
    correct = correct_of(row, "holdout", "int8")
    return {"holdout_int8": float(correct.mean()), "holdout_int8_interval": list(accuracy_interval(correct)),
            "holdout_images": len(correct)}


def score_ir(setup: RunSetup, xml: Path) -> dict[str, Any]:
    """An INT8 IR scored on the held-out images as the oracle scores INT8 (for an exported IR
    without finalists): the row :func:`holdout_of` reads."""
    oracle = setup.holdout
    scores, correct = oracle.pipeline.int8_eval(oracle, oracle.compile(ov.Core().read_model(str(xml))),
                                                oracle.eval_count)
    return {"holdout_int8": scores[oracle.pipeline.accuracy_key], "images": {"holdout": len(correct)},
            "bits": {"holdout_int8": pack_bits(correct)}}


def int8_ir(setup: RunSetup, model: nn.Module, key: str, path: Path, calib_images: int) -> Path:
    """``model`` (weights named by ``key``) as the finalists' INT8 IR at ``path``; the one written
    before for the same weights, data, calibration and library versions is kept (``model.key``
    beside it says what it is), since rewriting one changes its bytes and so its timing cache key."""
    identity = json.dumps({**setup.accuracy.cache_key(setup.supernet.space.max_arch()), "model": key,
                           "calib_images": calib_images}, sort_keys=True, default=str)
    stamp = path.with_suffix(".key")
    if path.is_file() and path.with_suffix(".bin").is_file() and stamp.is_file() and stamp.read_text() == identity:
        return path
    save_int8_ir(setup, model, path, calib_images)
    stamp.write_text(identity)
    return path


def a0_entry(setup: RunSetup, run: Path, out: Path, calib_images: int) -> tuple[dict[str, Any], Path]:
    """a0's accuracy row and INT8 IR: the finalists' IR where they ran, else written under ``out``."""
    teacher, key = teacher_of(setup)
    row = accuracy_row(setup, teacher, key)
    ir = run / FINALISTS_DIR / A0_NAME / "model.xml"
    if not ir.is_file():
        ir = int8_ir(setup, teacher, key, out / A0_NAME / "model.xml", calib_images)
    return row, ir


def run_entries(setup: RunSetup, run: Path) -> list[dict[str, Any]]:
    """The run's networks to time beside a0: its finalists (the chosen one marked), else its
    exported IR, else none."""
    finals = load_finalists(run)
    if finals and finals.get("finalists"):
        return [{"name": f["name"], "kind": "finalist (chosen)" if f["name"] == finals["chosen"] else "finalist",
                 "network": f["short"], "ir": Path(f["ir_path"]), "row": f["after"]} for f in finals["finalists"]]
    exported = run / "export" / "model.xml"
    if exported.is_file():
        return [{"name": "exported", "kind": "exported", "network": _exported_arch(run), "ir": exported,
                 "row": score_ir(setup, exported)}]
    return []


def _exported_arch(run: Path) -> str:
    path = run / "export" / "arch.json"
    return json.loads(path.read_text()).get("short", "") if path.is_file() else ""


def baseline_entry(setup: RunSetup, baseline: Baseline, out: Path, calib_images: int) -> dict[str, Any]:
    """A baseline scored and quantized like a finalist (judged by :func:`judge_entries`)."""
    model = load_baseline(setup, baseline)
    row = accuracy_row(setup, model, baseline.key)
    ir = int8_ir(setup, model, baseline.key, out / baseline.name / "model.xml", calib_images)
    record = {k: baseline.record.get(k) for k in ("command", "epochs", "train_seconds", "top1_as_deployed", "sha256")}
    return {"name": baseline.name, "kind": "baseline", "network": f"torchvision {baseline.family}", "ir": ir,
            "row": row, "checkpoint": str(baseline.path), "kwargs": baseline.kwargs, "trained": record}


def judge_entries(entries: list[dict[str, Any]], reference: str, tau: float, confidence: float) -> None:
    """The bound tests against ``reference``'s FP32 scores into the rows, one comparison each. Against
    a0, the finalists keep their run's tests (which allowed for how many finalists it compared). An
    exported IR without finalists is never judged: it has held-out INT8 scores only."""
    ref_row = next(e["row"] for e in entries if e["name"] == reference)
    for e in entries:
        if e["kind"] != "exported" and (reference != A0_NAME or not e["kind"].startswith("finalist")):
            judge(e["row"], ref_row, tau, confidence, 1)


# -- confirmation ----------------------------------------------------------------------------------------


def confirm_all(setup: RunSetup, irs: dict[str, Path], passes: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every IR timed with a0 in the same interleaved rounds, ``passes`` times (the finalists' protocol)."""
    timing = confirm_timing(setup.cfg, setup.latency, overrides)
    runs = []
    for p in range(passes):
        t0 = time.perf_counter()
        runs.append(setup.latency.confirm(irs, A0_NAME, timing, repeat=p))
        print(f"confirmation pass {p + 1}/{passes}: {len(irs)} IRs, {runs[-1].rounds} rounds, "
              f"{'cached' if runs[-1].cached else 'timed'} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return {**combine_passes(runs), "timing": asdict(timing), "cached": [r.cached for r in runs]}


def relative_to(confirmation: dict[str, Any], reference: str) -> dict[str, Any]:
    """``confirmation`` with every ratio taken to ``reference`` instead, round by round: in each pass
    the median over its rounds of the model's p10 time over the reference's in the same round, and
    the bootstrap 95 % CI of that median (both models' spread counted); over the passes the median
    and the CIs' envelope, as :func:`~rlnas.finalists.combine_passes`."""
    passes = confirmation["runs"]
    if not all(reference in run.get("round_p10", {}) for run in passes):
        raise BaselineError("the confirmation has no per-round times (timed before they were kept): "
                            "rerun with a fresh measurement store to compare against another reference")
    per_pass = [{n: round_ratio_to(run["round_p10"], n, reference) for n in run["round_p10"]} for run in passes]
    names = list(per_pass[0])
    return {**confirmation, "reference": reference,
            "ratio_by_pass": {n: [p[n][0] for p in per_pass] for n in names},
            "ratio": {n: statistics.median(p[n][0] for p in per_pass) for n in names},
            "ratio_ci": {n: [min(p[n][1][0] for p in per_pass), max(p[n][1][1] for p in per_pass)] for n in names},
            "timed_with": confirmation["reference"],
            "reference_ratio_to_timed_with": confirmation["ratio"][reference]}


def round_ratio_to(p10: dict[str, list[float]], name: str, reference: str) -> tuple[float, list[float]]:
    """The median over rounds of ``name``'s p10 time over ``reference``'s, and its 95 % CI."""
    ratios = [t / ref for t, ref in zip(p10[name], p10[reference], strict=True)]
    return statistics.median(ratios), median_ci(ratios)


def table_rows(entries: list[dict[str, Any]], confirmation: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON row per network: scores, held-out interval, confirmed latency and ratio."""
    rows = []
    for e in entries:
        name, row = e["name"], e["row"]
        ratio = confirmation["ratio"][name]
        rows.append({**{k: v for k, v in e.items() if k not in ("row", "ir")}, "ir": str(e["ir"]),
                     **holdout_of(row), "val_int8": row.get("val_int8"), "val_fp32": row.get("val_fp32"),
                     "holdout_fp32": row.get("holdout_fp32"), "holdout_bound": row.get("holdout_bound"),
                     "latency_ms": confirmation["latency_ms"][name], "ratio": ratio,
                     "ratio_ci": confirmation["ratio_ci"][name], "ratio_by_pass": confirmation["ratio_by_pass"][name],
                     "speedup": 1.0 / ratio if ratio else None})
    return rows


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    def bound(r: dict[str, Any]) -> str:
        b = r.get("holdout_bound")
        return "-" if not b else f"{'holds' if b['holds'] else 'not shown'} ({b['margin']:+.4f})"

    table = [{"model": r["name"], "kind": r["kind"], "network": r["network"],
              "INT8 held-out top-1 [95% CI]": f"{r['holdout_int8']:.4f} [{r['holdout_int8_interval'][0]:.4f}, "
                                              f"{r['holdout_int8_interval'][1]:.4f}]",
              "bound (held-out)": bound(r), "latency ms": f"{r['latency_ms']:.3f}",
              f"ratio to {summary['reference']}": f"{r['ratio']:.3f}", "speed-up": f"{r['speedup']:.2f}x"}
             for r in rows]
    print(tabulate(table, headers="keys", tablefmt="github"))
    p = summary["profile"]
    print(f"held-out images {rows[0]['holdout_images']}; bound: INT8 >= tau * {summary['reference']} FP32 "
          f"(tau {summary['tau']}), paired "
          f"test at {summary['confidence']:.0%}; ratio: median over {summary['passes']} confirmation pass(es), "
          f"profile {p['name']} (ISA {p['isa'] or 'native'}, {p['threads']} threads), host CPU {summary['host_cpu']}")


def run_config(run: Path, overrides: list[str], device: str | None) -> DictConfig:
    """The run's saved config with ``overrides``, on the profile ``device`` (default: the run's), checked."""
    cfg = compose_run_config(run, overrides)
    if device:
        load_profile(device)  # unknown, or not runnable on this host: one line
        cfg.device = OmegaConf.load(device_conf_dir() / f"{device}.yaml")
    return check_search(cfg)


def figure(rows: list[dict[str, Any]], front: list[Measurement], path: Path, reference: str = A0_NAME,
           front_scale: float = 1.0) -> Path:
    """INT8 held-out top-1 (95 % Wilson interval) against the confirmed ratio to ``reference`` of
    every timed network, beside the search's Pareto front (its own ratios to a0 divided by
    ``front_scale``, the reference's confirmed ratio to a0; validation INT8 top-1)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    if front:
        ax.plot([m.latency_ratio / front_scale for m in front], [m.acc_int8 for m in front], "o--", color="0.6", ms=3,
                label="search's Pareto front (search ratio, validation INT8)")
    for r in rows:
        low, high = r["holdout_int8_interval"]
        ax.errorbar(r["ratio"], r["holdout_int8"], yerr=[[r["holdout_int8"] - low], [high - r["holdout_int8"]]],
                    fmt="s" if r["kind"] == "baseline" else "o", capsize=3, label=f"{r['name']} ({r['kind']})")
    ax.set_xlabel(f"latency / {reference}'s (confirmed, INT8)")
    ax.set_ylabel("INT8 top-1 (held-out, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- main ----------------------------------------------------------------------------------------------


def compare(setup: RunSetup, run: Path, baselines: list[Baseline], out: Path, passes: int | None,
            overrides: dict[str, Any], reference: str = A0_NAME) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score, quantize and confirm a0, the run's networks and the baselines: rows and confirmation
    (bounds and ratios against ``reference``)."""
    finalists_cfg = setup.cfg.finalists
    calib, confidence = int(finalists_cfg.calib_images), float(finalists_cfg.confidence)
    a0_row, a0_ir = a0_entry(setup, run, out, calib)
    a0 = {"name": A0_NAME, "kind": "a0" if setup.a0 is not None else "maximal subnet", "network": "a0",
          "ir": a0_ir, "row": a0_row}
    entries = [a0, *run_entries(setup, run), *[baseline_entry(setup, b, out, calib) for b in baselines]]
    judge_entries(entries, reference, float(setup.cfg.tau), confidence)
    confirmation = confirm_all(setup, {e["name"]: e["ir"] for e in entries},
                               passes or int(finalists_cfg.confirm_passes), overrides)
    if reference != A0_NAME:
        confirmation = relative_to(confirmation, reference)
    return table_rows(entries, confirmation), confirmation


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join([sys.executable, str(Path(__file__)), *argv])
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "baselines"
    t0 = time.perf_counter()
    try:
        overrides = timing_overrides(args.timing)
        baselines = unique_names([parse_baseline(spec) for spec in args.baseline])
        if args.reference not in (A0_NAME, *(b.name for b in baselines)):
            raise BaselineError(f"--reference {args.reference!r}: not a0 nor a baseline "
                                f"({', '.join(b.name for b in baselines)})")
        cfg = run_config(run, args.override, args.device)
        for b in baselines:
            check_resolution(b, int(cfg.resolution))
        setup = setup_of_run(cfg, run)
        try:
            rows, confirmation = compare(setup, run, baselines, out, args.passes, overrides, args.reference)
            front = pareto_front(load_run(run)[1])
            profile = setup.latency.profile.to_dict()
        finally:
            setup.close()
    except (UserError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
        print(f"baselines: {err}", file=sys.stderr)
        return 2
    summary = {"run": str(run), "command": command, "profile": profile, "host_cpu": host_cpu_model(),
               "tau": float(cfg.tau), "confidence": float(cfg.finalists.confidence), "passes": confirmation["passes"],
               "reference": args.reference,
               "seconds": time.perf_counter() - t0}
    print_table(rows, summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps({"summary": summary, "rows": rows, "confirmation": confirmation},
                                                   indent=1, default=str) + "\n")
    png = figure(rows, front, out / "baselines.png", args.reference,
                 confirmation.get("reference_ratio_to_timed_with", 1.0))
    print(f"written: {out / 'baselines.json'}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
