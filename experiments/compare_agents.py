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
    # on the surrogate benchmark (experiments/surrogate_benchmark.py): 10 seeds, budget 300, the
    # best of each run then re-measured with the real oracles
    .venv/bin/python experiments/compare_agents.py --surrogate outputs/benchmark/resnet50-cifar10-kabylake_avx2/table.json \
        --budget 300 --report-at 50 100 300 --seeds 0 1 2 3 4 5 6 7 8 9 --confirm-real -- \
        experiment=resnet50_cifar10_avx2 supernet.checkpoint=outputs/supernet/resnet50-cifar10-from_a0

With ``--surrogate`` the oracles are the surrogate's (``oracle=surrogate``): every agent runs
unchanged through the same Evaluator, budget in unique networks; ``--noise 1`` adds the
surrogate's held-out residuals per network. ``--confirm-real`` measures each run's best
architecture with the real oracles afterwards (cached where the table has it).

Rerunning with the same ``--name`` resumes: each (agent, seed) run replays its measurements from
its JSONL log for free.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tabulate import tabulate

import rlnas
from rlnas.arch import Arch
from rlnas.runsetup import build_setup

AGENTS = tuple(sorted(p.stem for p in (rlnas.CONF_DIR / "agent").glob("*.yaml")))  # evolution, ppo, ppo_model, random
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
    p.add_argument("--surrogate", default=None, help="table.json of a surrogate benchmark: oracle=surrogate")
    p.add_argument("--noise", type=float, default=0.0, help="surrogate noise (x held-out residuals)")
    p.add_argument("--report-at", type=int, nargs="*", default=None, help="budgets reported (default: 1/4, 1/2, all)")
    p.add_argument("--confirm-real", action="store_true",
                   help="re-measure every run's best architecture with the real oracles")
    p.add_argument("--confirm-top", type=int, default=None,
                   help="with --confirm-real: only the K runs of each agent with the best surrogate result")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel processes (surrogate only: real timing must run alone), 1 thread each")
    p.add_argument("--agent-overrides", nargs="*", default=[], metavar="AGENT:KEY=VALUE",
                   help="e.g. ppo:agent.ent_coef=0.05 (tuning trials)")
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


def objective_curve(history, budget: int, reward, target: float) -> list[float]:
    """Best objective (the run's reward) of a feasible candidate after each unique evaluation
    (0.0 = a0's; the reward of a feasible network is -log(latency ratio))."""
    best, curve = 0.0, []
    for m in history:
        if m.feasible:
            best = max(best, reward(m, target))
        curve.append(best)
    return curve + [best] * (budget - len(curve))


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and its 95 % bootstrap interval over seeds."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float(values.mean()), float(values.mean())
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, len(values), (2000, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run_one(setup, cfg, agent_name: str, seed: int, budget: int, out: Path, agent_overrides: list[str]) -> dict:
    """One (agent, seed) run; a finished one is read back from its ``result.json`` when the agent
    config and budget are the same (a campaign stopped half-way loses no finished run)."""
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        agent_cfg = compose(config_name="config", overrides=[f"agent={agent_name}", *agent_overrides]).agent
    run_dir = out / f"{agent_name}_seed{seed}"
    done = run_dir / "result.json"
    identity = {"agent": OmegaConf.to_container(agent_cfg), "budget": budget}
    if done.exists() and json.loads(done.read_text()).get("identity") == identity:
        return json.loads(done.read_text())["result"]
    result = _run(setup, cfg, agent_cfg, agent_name, seed, budget, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"identity": identity, "result": result}, default=str) + "\n")
    return result


def _run(setup, cfg, agent_cfg, agent_name: str, seed: int, budget: int, run_dir: Path) -> dict:
    evaluator = setup.evaluator(run_dir / "evaluations.jsonl", budget=budget)
    agent = instantiate(agent_cfg)
    reward = instantiate(cfg.reward)
    t0 = time.perf_counter()
    result = agent.run(evaluator, budget=budget, seed=seed, reward=reward, run_dir=run_dir)
    curve = best_curve(evaluator.history, budget)
    best = result.best
    return {"agent": agent_name, "seed": seed, "curve": curve, "final": curve[-1],
            "objective": objective_curve(evaluator.history, budget, reward, evaluator.target_accuracy),
            "best": best.to_dict() if best else None,
            "unique_evaluations": evaluator.unique_evaluations, "feasible": sum(m.feasible for m in evaluator.history),
            "cache_hits": evaluator.stats.oracle_cache_hits, "agent_steps": result.agent_steps,
            "seconds": time.perf_counter() - t0,
            "best_arch": result.best.arch.short() if result.best else None}


def summarize(runs: list[dict], agents: list[str], checkpoints: list[int]) -> tuple[list[list], list[str]]:
    headers = (["agent", "runs"] + [f"best ratio @{n}: mean [95 % CI] (sd)" for n in checkpoints]
               + ["feasible found", "cache hits"])
    rows = []
    for a in agents:
        rs = [r for r in runs if r["agent"] == a]
        row = [a, len(rs)]
        for n in checkpoints:
            vals = [r["curve"][n - 1] for r in rs]
            mean, low, high = mean_ci(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row.append(f"{mean:.3f} [{low:.3f}, {high:.3f}] ({sd:.3f})")
        row += [sum(r["feasible"] for r in rs), sum(r["cache_hits"] for r in rs)]
        rows.append(row)
    return rows, headers


def confirm_real(runs: list[dict], overrides: list[str]) -> list[dict]:
    """Each run's best architecture measured with the real oracles (the surrogate's verdict
    checked on real numbers); cached where the benchmark table measured it."""
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[o for o in overrides if not o.startswith("oracle")])
    setup = build_setup(cfg)
    out = []
    try:
        evaluator = setup.evaluator()
        for r in runs:
            if r["best"] is None:
                continue
            m = evaluator.evaluate(Arch.from_dict(r["best"]["arch"]))
            if not m.ok:
                print(f"  real: {r['agent']:>9} seed {r['seed']}: measurement failed: {m.reason}", flush=True)
                continue
            out.append({"agent": r["agent"], "seed": r["seed"], "arch": m.arch.short(),
                        "predicted_ratio": r["best"]["latency_ratio"], "predicted_acc": r["best"]["acc_int8"],
                        "ratio": m.latency_ratio, "acc_int8": m.acc_int8, "feasible": m.feasible,
                        "target": evaluator.target_accuracy})
            print(f"  real: {r['agent']:>9} seed {r['seed']}: ratio {m.latency_ratio:.3f} (predicted "
                  f"{r['best']['latency_ratio']:.3f}), INT8 {m.acc_int8:.4f} (predicted {r['best']['acc_int8']:.4f}), "
                  f"{'feasible' if m.feasible else 'INFEASIBLE'}", flush=True)
    finally:
        setup.close()
    return out


def top_runs(runs: list[dict], agents: list[str], k: int | None) -> list[dict]:
    """Each agent's k runs with the lowest final ratio (all runs when k is None)."""
    if k is None:
        return runs
    return [r for a in agents for r in sorted((r for r in runs if r["agent"] == a), key=lambda r: r["final"])[:k]]


def confirm_table(confirmed: list[dict], agents: list[str]) -> str:
    rows = []
    for a in agents:
        rs = [c for c in confirmed if c["agent"] == a]
        if not rs:
            continue
        feasible = [c["ratio"] for c in rs if c["feasible"]]
        rows.append([a, len(rs), f"{statistics.mean(c['predicted_ratio'] for c in rs):.3f}",
                     f"{statistics.mean(c['ratio'] for c in rs):.3f}", f"{len(feasible)} of {len(rs)}",
                     f"{min(feasible):.3f}" if feasible else "-"])
    return tabulate(rows, headers=["agent", "runs", "predicted ratio (mean)", "measured ratio (mean)",
                                   "really feasible", "best really feasible ratio"], tablefmt="github")


def plot(runs: list[dict], agents: list[str], budget: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    x = np.arange(1, budget + 1)
    for key, ax, label in (("curve", axes[0], "best feasible INT8 latency / a0"),
                           ("objective", axes[1], "best feasible objective (-log ratio)")):
        for a in agents:
            curves = np.array([r[key] for r in runs if r["agent"] == a])
            bands = np.array([mean_ci(curves[:, i]) for i in range(budget)])
            ax.plot(x, bands[:, 0], label=f"{a} (n={len(curves)})")
            ax.fill_between(x, bands[:, 1], bands[:, 2], alpha=0.2)
        ax.set_xlabel("unique evaluations")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.text(0.01, 0.01, "mean over seeds, band: 95 % bootstrap CI of the mean", fontsize=6, alpha=0.7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(r: dict) -> dict:
    print(f"{r['agent']:>9} seed {r['seed']}: best ratio {r['final']:.3f} after {r['unique_evaluations']} "
          f"evaluations ({r['cache_hits']} from the shared cache, {r['seconds']:.0f} s)", flush=True)
    return r


def run_serial(cfg, budget: int, out: Path, tasks: list[tuple]) -> list[dict]:
    setup = build_setup(cfg)
    try:
        return [report(run_one(setup, cfg, agent, seed, budget, out, extra)) for agent, seed, extra in tasks]
    finally:
        setup.close()


_WORKER: dict = {}


def _init_worker(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "threads=1"])
    _WORKER.update(cfg=cfg, setup=build_setup(cfg))


def _run_in_worker(agent: str, seed: int, budget: int, out: str, extra: list[str]) -> dict:
    return run_one(_WORKER["setup"], _WORKER["cfg"], agent, seed, budget, Path(out), extra)


def run_parallel(overrides: list[str], budget: int, out: Path, tasks: list[tuple], jobs: int) -> list[dict]:
    """The runs in ``jobs`` processes (each its own setup over the same surrogate table)."""
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker, initargs=(overrides,)) as pool:
        results = [pool.apply_async(_run_in_worker, (agent, seed, budget, str(out), extra))
                   for agent, seed, extra in tasks]
        return [report(r.get()) for r in results]


SURROGATE_NOTE = ("Oracles: the surrogate benchmark (oracle=surrogate), latency ratio and INT8 accuracy predicted "
                  "by models fitted on real measurements (experiments/surrogate_benchmark.py); every agent runs "
                  "through the same Evaluator, budget in unique networks.")


def agent_overrides(args: argparse.Namespace, agent: str) -> list[str]:
    extra = list(QUICK_AGENT_OVERRIDES.get(agent, [])) if args.quick else []
    for item in args.agent_overrides:
        name, _, override = item.partition(":")
        if name not in AGENTS or "=" not in override:
            raise SystemExit(f"--agent-overrides {item!r}: expected AGENT:KEY=VALUE, AGENT one of {AGENTS}")
        if name == agent:
            extra.append(override)
    return extra


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    overrides = (["experiment=tiny", "budget=8"] if args.quick else []) + list(args.overrides)
    if args.surrogate:
        overrides += ["oracle=surrogate", f"oracle.table={args.surrogate}", f"oracle.noise={args.noise}"]
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    budget = args.budget or int(cfg.budget)
    checkpoints = sorted(set(args.report_at or [max(1, budget // 4), max(1, budget // 2), budget]))
    if checkpoints[-1] > budget or checkpoints[0] < 1:
        raise SystemExit(f"--report-at {checkpoints}: every budget must be in 1..{budget}")
    name = args.name or ("quick" if args.quick else time.strftime("%Y-%m-%d_%H-%M-%S"))
    out = Path("outputs/compare_agents") / name
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and not args.surrogate:
        raise SystemExit("--jobs > 1 needs --surrogate: real latency measurements must run alone on the machine")
    tasks = [(agent, seed, agent_overrides(args, agent)) for seed in args.seeds for agent in args.agents]
    runs = run_parallel(overrides, budget, out, tasks, args.jobs) if args.jobs > 1 else run_serial(cfg, budget, out, tasks)
    rows, headers = summarize(runs, args.agents, checkpoints)
    table = tabulate(rows, headers=headers, tablefmt="github")
    title = (f"{cfg.model.name} / {cfg.dataset.name} / {cfg.device.name}, budget {budget}, "
             f"{len(args.seeds)} seeds, reward {cfg.reward._target_.rsplit('.', 1)[-1]}"
             + (f", surrogate (noise {args.noise})" if args.surrogate else ""))
    note = SURROGATE_NOTE if args.surrogate else SHARED_NOTE
    plot(runs, args.agents, budget, out / "curves.png", title)
    confirmed = confirm_real(top_runs(runs, args.agents, args.confirm_top), overrides) if args.confirm_real else []
    real = f"\n\nEach run's best, measured with the real oracles:\n\n{confirm_table(confirmed, args.agents)}" if confirmed else ""
    (out / "results.json").write_text(json.dumps({"title": title, "overrides": overrides, "budget": budget,
                                                   "agent_overrides": args.agent_overrides, "runs": runs,
                                                   "confirmed": confirmed, "note": note}, indent=2, default=str))
    text = (f"# Agents compared: {title}\n\n{table}\n\nBest feasible latency ratio to a0 (1.000 = nothing "
            f"feasible better than a0 yet).{real}\n\n{note}\n\n![curves](curves.png)\n")
    (out / "results.md").write_text(text)
    print(f"\n{title}\n{table}{real}\n\n{note}\nwritten: {out}/curves.png, results.md, results.json")
    if any(math.isnan(r["final"]) for r in runs):
        raise SystemExit("a run produced no result")


if __name__ == "__main__":
    main()
