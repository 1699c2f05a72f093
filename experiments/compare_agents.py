"""PPO vs random search vs regularized evolution on the same budget and seeds.

For each agent and seed: a fresh evaluator (own history and budget of unique evaluations) over the
same supernet, oracles and measurement cache; the best feasible INT8 latency ratio (to a0) after
each unique evaluation. Prints a table, writes ``curves.png``, ``results.json`` and ``results.md``
under ``outputs/compare_agents/<name>/``.

Every measurement is cached in the shared store, so agents and seeds share measurements: an
architecture proposed by two runs is measured once (the second gets the cached numbers, and still
pays one unit of its own budget). The comparison is therefore fair in budget and in measurement
noise (identical architectures get identical numbers), and cheaper than 9 independent searches.

    .venv/bin/python experiments/compare_agents.py --quick                # experiment=tiny, budget 8
    .venv/bin/python experiments/compare_agents.py --budget 100 experiment=quick
    .venv/bin/python experiments/compare_agents.py --seeds 0 1 2 --agents ppo random -- device=host

Rerunning with the same ``--name`` resumes: each (agent, seed) run replays its measurements from
its JSONL log for free.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tabulate import tabulate

import rlnas
from rlnas.runsetup import build_setup

AGENTS = ("ppo", "random", "evolution")
#: quick mode: a population smaller than the budget, or evolution never gets past initialisation
QUICK_AGENT_OVERRIDES = {"evolution": ["agent.population_size=4", "agent.sample_size=2"]}
SHARED_NOTE = ("All runs share one measurement cache: an architecture measured by one agent/seed is "
               "returned from the cache to any other run that proposes it (still counted in that run's "
               "budget), so numbers for identical architectures are identical across agents. Random "
               "search and evolution (random initial population) with the same seed draw the same first "
               "samples (common random numbers).")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="experiment=tiny, budget 8, evolution population 4 (about 10 minutes)")
    p.add_argument("--budget", type=int, default=None, help="unique evaluations per run (default: config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    p.add_argument("--name", default=None, help="output folder under outputs/compare_agents/")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the search config")
    return p.parse_args()


def best_curve(history, budget: int) -> list[float]:
    """Best feasible latency ratio after each unique evaluation (1.0 = nothing better than a0)."""
    best, curve = 1.0, []
    for m in history:
        if m.feasible and m.latency_ratio is not None:
            best = min(best, m.latency_ratio)
        curve.append(best)
    return curve + [best] * (budget - len(curve))


def run_one(setup, cfg, agent_name: str, seed: int, budget: int, out: Path, agent_overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        agent_cfg = compose(config_name="config", overrides=[f"agent={agent_name}", *agent_overrides]).agent
    run_dir = out / f"{agent_name}_seed{seed}"
    evaluator = setup.evaluator(run_dir / "evaluations.jsonl", budget=budget)
    agent = instantiate(agent_cfg)
    reward = instantiate(cfg.reward)
    t0 = time.perf_counter()
    result = agent.run(evaluator, budget=budget, seed=seed, reward=reward, run_dir=run_dir)
    curve = best_curve(evaluator.history, budget)
    return {"agent": agent_name, "seed": seed, "curve": curve, "final": curve[-1],
            "unique_evaluations": evaluator.unique_evaluations, "feasible": sum(m.feasible for m in evaluator.history),
            "cache_hits": evaluator.stats.oracle_cache_hits, "agent_steps": result.agent_steps,
            "seconds": time.perf_counter() - t0,
            "best_arch": result.best.arch.short() if result.best else None}


def summarize(runs: list[dict], agents: list[str], budget: int) -> tuple[list[list], list[str]]:
    checkpoints = sorted({max(1, budget // 4), max(1, budget // 2), budget})
    headers = ["agent"] + [f"best ratio @{n} (mean ± sd)" for n in checkpoints] + ["feasible found", "cache hits"]
    rows = []
    for a in agents:
        rs = [r for r in runs if r["agent"] == a]
        row = [a]
        for n in checkpoints:
            vals = [r["curve"][n - 1] for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        row += [sum(r["feasible"] for r in rs), sum(r["cache_hits"] for r in rs)]
        rows.append(row)
    return rows, headers


def plot(runs: list[dict], agents: list[str], budget: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    x = np.arange(1, budget + 1)
    for a in agents:
        curves = np.array([r["curve"] for r in runs if r["agent"] == a])
        mean = curves.mean(0)
        ax.plot(x, mean, label=f"{a} (n={len(curves)})")
        ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15)
    ax.set_xlabel("unique evaluations")
    ax.set_ylabel("best feasible INT8 latency / a0")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, "shared measurement cache across agents and seeds", fontsize=6, alpha=0.7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    overrides = (["experiment=tiny", "budget=8"] if args.quick else []) + list(args.overrides)
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    budget = args.budget or int(cfg.budget)
    name = args.name or ("quick" if args.quick else time.strftime("%Y-%m-%d_%H-%M-%S"))
    out = Path("outputs/compare_agents") / name
    out.mkdir(parents=True, exist_ok=True)
    setup = build_setup(cfg)
    runs = []
    try:
        for seed in args.seeds:
            for agent in args.agents:
                extra = QUICK_AGENT_OVERRIDES.get(agent, []) if args.quick else []
                r = run_one(setup, cfg, agent, seed, budget, out, extra)
                print(f"{agent:>9} seed {seed}: best ratio {r['final']:.3f} after {r['unique_evaluations']} "
                      f"evaluations ({r['cache_hits']} from the shared cache, {r['seconds']:.0f} s)", flush=True)
                runs.append(r)
    finally:
        setup.close()
    rows, headers = summarize(runs, args.agents, budget)
    table = tabulate(rows, headers=headers, tablefmt="github")
    title = (f"{cfg.model.name} / {cfg.dataset.name} / {cfg.device.name}, budget {budget}, "
             f"seeds {args.seeds}, reward {cfg.reward._target_.rsplit('.', 1)[-1]}")
    plot(runs, args.agents, budget, out / "curves.png", title)
    (out / "results.json").write_text(json.dumps({"title": title, "overrides": overrides, "budget": budget,
                                                   "runs": runs, "note": SHARED_NOTE}, indent=2))
    text = (f"# Agents compared: {title}\n\n{table}\n\nBest feasible latency ratio to a0 (1.000 = nothing "
            f"feasible better than a0 yet).\n\n{SHARED_NOTE}\n\n![curves](curves.png)\n")
    (out / "results.md").write_text(text)
    print(f"\n{title}\n{table}\n\n{SHARED_NOTE}\nwritten: {out}/curves.png, results.md, results.json")
    if any(math.isnan(r["final"]) for r in runs):
        raise SystemExit("a run produced no result")


if __name__ == "__main__":
    main()
