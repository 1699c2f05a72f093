"""A surrogate benchmark from real measurements: build the table, fit and score the surrogates.

    # measure samples with the real oracles (random and evolution), add earlier runs, write the table
    .venv/bin/python experiments/surrogate_benchmark.py build \
        --supernet outputs/supernet/resnet50-cifar10-from_a0 --sample random:150 evolution:100 \
        --runs outputs/search/resnet50_cifar10_avx2/from_a0_b100 outputs/hardware_awareness_search/kabylake_avx2
    # held-out quality of every model (k-fold over networks): Kendall tau, MAE, feasibility agreement
    .venv/bin/python experiments/surrogate_benchmark.py fit
    # then: rlnas-search oracle=surrogate ..., or experiments/compare_agents.py --surrogate <table>

``build`` runs ``rlnas-search`` (experiment ``resnet50_cifar10_avx2``, device ``kabylake_avx2``
unless overridden after ``--``) once per ``--sample agent:budget``, without finalists or export,
into ``<out>/runs/<agent>-seed<seed>`` (rerun to resume; every measurement is cached in the shared
store, so architectures measured before cost nothing). Then it collects the successful candidates
of those runs and of ``--runs`` whose context matches (same supernet checkpoint, network builder,
device and a0), keeps one row per distinct network (the family's channel plan), and writes
``<out>/table.json`` with a0's measured accuracy and latency as the reference. The table is a
generated artifact: not in git; this command rebuilds it. Reading it (``oracle=surrogate``) needs
only the installed package (rlnas/oracles/surrogate.py), not this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tabulate import tabulate

import rlnas
from rlnas.oracles.device import RELEVANT_FLAGS, host_cpu_flags, host_cpu_model
from rlnas.oracles.surrogate import (
    MATCHING_CONTEXT,
    MODELS,
    TARGETS,
    BenchmarkTable,
    Featurizer,
    cross_validate,
)
from rlnas.pipeline import run_search
from rlnas.runsetup import HISTORY_NAME, RunSetup, build_setup
from rlnas.search.history import read_history

DEFAULT_OUT = "outputs/benchmark/resnet50-cifar10-kabylake_avx2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="measure samples, collect runs, write the table")
    b.add_argument("--supernet", default=None,
                   help="supernet.pt or its training directory (default: the one the search finds or trains)")
    b.add_argument("--experiment", default="resnet50_cifar10_avx2")
    b.add_argument("--sample", nargs="*", default=[], metavar="AGENT:BUDGET",
                   help="real searches to run first, e.g. random:150 evolution:100")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--runs", nargs="*", default=[], help="earlier run directories (their evaluations.jsonl)")
    b.add_argument("--out", default=DEFAULT_OUT)
    b.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    f = sub.add_parser("fit", help="cross-validate the surrogate models on the table")
    f.add_argument("--table", default=f"{DEFAULT_OUT}/table.json")
    f.add_argument("--folds", type=int, default=5)
    f.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def search_config(args: argparse.Namespace, extra: list[str]) -> DictConfig:
    overrides = [f"experiment={args.experiment}", f"seed={args.seed}", "finalists.k=0", "export.enabled=false",
                 *([f"supernet.checkpoint={args.supernet}"] if args.supernet else []), *args.overrides, *extra]
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def parse_sample(text: str) -> tuple[str, int]:
    agent, _, budget = text.partition(":")
    if agent not in ("random", "evolution", "ppo") or not budget.isdigit() or int(budget) < 1:
        raise SystemExit(f"--sample {text!r}: expected AGENT:BUDGET with AGENT random, evolution or ppo")
    return agent, int(budget)


def run_samples(args: argparse.Namespace, out: Path) -> list[Path]:
    runs = []
    for text in args.sample:
        agent, budget = parse_sample(text)
        run_dir = out / "runs" / f"{agent}-seed{args.seed}"
        print(f"## sample: {agent}, budget {budget} -> {run_dir}", flush=True)
        run_search(search_config(args, [f"agent={agent}", f"budget={budget}", f"run_dir={run_dir}"]), run_dir)
        runs.append(run_dir)
    return runs


def collect(setup: RunSetup, runs: list[Path]) -> tuple[list[dict], dict[str, int], list[float]]:
    """One row per distinct network among the runs' successful candidates of this setup; the
    count per source; a0's latency in every run's baseline."""
    evaluator = setup.evaluator()
    rows: dict[str, dict] = {}
    sources: dict[str, int] = {}
    a0_ms: list[float] = []
    for run in runs:
        history = Path(run) / HISTORY_NAME
        if not history.is_file():
            raise SystemExit(f"{run} has no {HISTORY_NAME}")
        taken = skipped = 0
        for kind, context, m in read_history(history):
            if any(json.dumps((context or {}).get(k), sort_keys=True) != json.dumps(setup.context.get(k), sort_keys=True)
                   for k in MATCHING_CONTEXT):
                skipped += 1
                continue
            if kind == "baseline":
                a0_ms.append(m.ref_latency_ms or m.latency_ms)
                continue
            if not m.ok or m.latency_ratio is None or m.acc_int8 is None:
                continue
            network = evaluator.model_key(m.arch)
            if network not in rows:
                rows[network] = {"arch": m.arch.to_dict(), "network": network, "latency_ratio": m.latency_ratio,
                                 "latency_ms": m.latency_ms, "ref_latency_ms": m.ref_latency_ms,
                                 "acc_int8": m.acc_int8, "macs": m.macs, "params": m.params, "source": str(run)}
                taken += 1
        sources[str(run)] = taken
        if skipped:
            print(f"  {run}: {skipped} records of another setup skipped", file=sys.stderr)
    return list(rows.values()), sources, a0_ms


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    runs = run_samples(args, out) + [Path(r) for r in args.runs]
    if not runs:
        raise SystemExit("nothing to collect: give --sample and/or --runs")
    setup = build_setup(search_config(args, []))
    try:
        rows, sources, a0_ms = collect(setup, runs)
        a0 = setup.a0_accuracy("val")
        reference = ({"acc_fp32": a0.acc_fp32, "acc_int8": a0.acc_int8} if a0 is not None else
                     {"acc_fp32": setup.evaluator().baseline.acc_fp32, "acc_int8": setup.evaluator().baseline.acc_int8})
    finally:
        setup.close()
    flags = host_cpu_flags()
    header = {"context": setup.context, "reference": reference, "tau": float(setup.cfg.tau),
              "resolution": int(setup.cfg.resolution),
              "a0_latency_ms": statistics.median(a0_ms) if a0_ms else statistics.median(r["ref_latency_ms"] for r in rows),
              "host": {"cpu": host_cpu_model(), "flags": sorted(f for f in RELEVANT_FLAGS if f in flags)},
              "sources": sources, "built_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    table = BenchmarkTable(header, rows)
    table.save(out / "table.json")
    target = header["tau"] * reference["acc_fp32"]
    feasible = sum(r["acc_int8"] >= target for r in rows)
    print(f"{len(rows)} distinct networks ({feasible} feasible at target {target:.4f}) from "
          + ", ".join(f"{k}: {v}" for k, v in sources.items()) + f"\nwritten {out / 'table.json'}")
    return 0


def feasibility_agreement(table: BenchmarkTable, residuals: list[float]) -> float:
    """Share of networks whose held-out predicted accuracy falls on the same side of the target."""
    target = table.header["tau"] * table.header["reference"]["acc_fp32"]
    measured = table.targets("acc_int8")
    predicted = measured - np.asarray(residuals)
    return float(np.mean((measured >= target) == (predicted >= target)))


def fit(args: argparse.Namespace) -> int:
    table = BenchmarkTable.load(args.table)
    featurizer = Featurizer(table.supernet(), int(table.header["resolution"]))
    reports = []
    for target in TARGETS:
        for model in MODELS:
            r = cross_validate(table, featurizer, target, model, args.folds, args.seed)
            extra = feasibility_agreement(table, r.residuals) if target == "acc_int8" else None
            reports.append({**r.summary(), "feasibility_agreement": extra})
    rows = [[r["target"], r["model"], f"{r['kendall_tau']:.3f}", f"{r['spearman']:.3f}", f"{r['mae']:.4f}",
             f"{r['rmse']:.4f}", "-" if r["feasibility_agreement"] is None else f"{r['feasibility_agreement']:.1%}"]
            for r in reports]
    headers = ["target", "model", "Kendall tau", "Spearman", "MAE", "RMSE", "feasible agrees"]
    text = tabulate(rows, headers=headers, tablefmt="github")
    host = table.header["host"]
    note = (f"{len(table.rows)} networks, {args.folds}-fold cross-validation over networks (held-out predictions); "
            f"measured on {host['cpu']} ({' '.join(host['flags'])}), device {table.header['context']['device']['name']}")
    print(f"{text}\n\n{note}")
    (Path(args.table).parent / "fit.json").write_text(json.dumps({"reports": reports, "note": note}, indent=2))
    (Path(args.table).parent / "fit.md").write_text(f"{text}\n\n{note}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return build(args) if args.command == "build" else fit(args)


if __name__ == "__main__":
    sys.exit(main())
