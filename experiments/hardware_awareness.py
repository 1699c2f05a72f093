"""Does the best network differ per CPU? One supernet searched on every CPU profile this host can
run, each profile's winner re-timed on every profile, and the layers that explain the difference.

    .venv/bin/python experiments/hardware_awareness.py \
        --supernet outputs/supernet/resnet50-cifar10-from_a0 --budget 40 --agent evolution --repeats 3
    .venv/bin/python experiments/hardware_awareness.py ... -- accuracy.eval_images=2000   # Hydra overrides

1. search: ``rlnas-search`` (experiment ``resnet50_cifar10_avx2`` by default) once per profile,
   same supernet, budget, agent and seed; no finalists. Accuracy is cached per network, so the
   second profile pays mostly for latency.
   With ``--candidates-from <run dir>`` the profiles instead time the same candidates (that run's),
   accuracy coming from the cache: one candidate pool, each profile's own winner among it.
2. confirmation: a0 and every profile's winner (INT8 IRs built the same way, real calibration
   images) timed in one interleaved measurement per profile, repeated ``--repeats`` times; each
   ratio gets the range of its repeats' 95 % bootstrap intervals.
3. matrix: rows = the winner of profile P, columns = its latency ratio to a0 on profile Q, and
   each winner's loss on the other profiles against that profile's own winner; the claim holds
   for a pair when each winner is >= 5 % slower on the other profile with the intervals apart.
4. rank correlation (Kendall tau, Spearman rho) of the latency ratios of a sample of the searched
   candidates between profiles.
5. per-layer times (OpenVINO PERF_COUNT) of the winners on every profile, by layer class.

The ISA cap (``ONEDNN_MAX_CPU_ISA``) emulates the instruction set only, not the target's core
count, caches, clock or memory; the printout says which host ran it (CPU model and flags).
Writes ``<out>/hardware_awareness.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from scipy.stats import kendalltau, spearmanr

import rlnas
from rlnas.arch import Arch
from rlnas.finalists import save_int8_ir
from rlnas.oracles.device import RELEVANT_FLAGS, host_cpu_flags, host_cpu_model, runnable_profiles
from rlnas.oracles.profiling import LAYER_CLASSES
from rlnas.oracles.ratios import TimingConfig
from rlnas.pipeline import run_search
from rlnas.runsetup import build_setup
from rlnas.search.history import read_history

CLAIM_MARGIN = 0.05
ISA_NOTE = ("ISA cap only (ONEDNN_MAX_CPU_ISA): the instruction set of the target, not its core count, "
            "caches, clock or memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", required=True, help="supernet.pt or its training directory")
    p.add_argument("--profiles", nargs="*", help="default: every profile this host can run except host")
    p.add_argument("--experiment", default="resnet50_cifar10_avx2")
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--agent", default="evolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="confirmation measurements per profile")
    p.add_argument("--rank-sample", type=int, default=30, help="candidates timed on every profile")
    p.add_argument("--confirm-seconds", type=float, default=30.0, help="minimum timing per confirmation")
    p.add_argument("--candidates-from", help="instead of searching on every profile: time this run's candidates "
                   "(its evaluations.jsonl) on every profile (accuracy comes from the cache), and take each "
                   "profile's best feasible among them")
    p.add_argument("--out", default="outputs/hardware_awareness")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    return p.parse_args(argv)


def profile_config(args: argparse.Namespace, profile: str) -> DictConfig:
    overrides = [f"experiment={args.experiment}", f"device={profile}", f"supernet.checkpoint={args.supernet}",
                 f"budget={args.budget}", f"agent={args.agent}", f"seed={args.seed}", "finalists.k=0",
                 "export.enabled=false", f"run_dir={Path(args.out) / profile}", *args.overrides]
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def search_all(args: argparse.Namespace, profiles: list[str]) -> dict[str, dict]:
    """The search on every profile (resumed where its run directory has measurements)."""
    out = {}
    for profile in profiles:
        print(f"\n## search on {profile}", flush=True)
        cfg = profile_config(args, profile)
        summary = run_search(cfg, Path(cfg.run_dir))
        if not summary["best"]:
            raise SystemExit(f"no feasible architecture on {profile}: raise --budget")
        out[profile] = {"cfg": cfg, "best": Arch.from_dict(summary["best"]["arch"]),
                        "history": [m for kind, _, m in read_history(Path(cfg.run_dir) / "evaluations.jsonl")
                                    if kind == "candidate" and m.ok]}
    return out


def replay_all(args: argparse.Namespace, profiles: list[str]) -> dict[str, dict]:
    """Every profile measures the same candidates (those of ``--candidates-from``) through its own
    Evaluator; its winner is its best feasible one."""
    archs = [m.arch for kind, _, m in read_history(Path(args.candidates_from) / "evaluations.jsonl")
             if kind == "candidate"]
    out = {}
    for profile in profiles:
        print(f"\n## {len(archs)} candidates of {args.candidates_from} on {profile}", flush=True)
        cfg = profile_config(args, profile)
        setup = build_setup(cfg)
        try:
            evaluator = setup.evaluator(Path(cfg.run_dir) / "evaluations.jsonl", budget=len(archs))
            history = [evaluator.evaluate(a) for a in archs]
            best = evaluator.best_feasible()
        finally:
            setup.close()
        if best is None:
            raise SystemExit(f"no feasible candidate on {profile}")
        out[profile] = {"cfg": cfg, "best": best.arch, "history": [m for m in history if m.ok]}
        print(f"best on {profile}: {best.arch.short()} ratio {best.latency_ratio:.3f} acc {best.acc_int8:.4f}",
              flush=True)
    return out


def winner_irs(searches: dict[str, dict], out: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """INT8 IRs of a0 and of every profile's winner (profile-independent), and winner -> arch."""
    cfg = next(iter(searches.values()))["cfg"]
    setup = build_setup(cfg)
    try:
        teacher = setup.a0.model if setup.a0 else setup.accuracy.prepare(setup.supernet.space.max_arch())
        irs = {"a0": save_int8_ir(setup, teacher, out / "irs" / "a0.xml", int(cfg.finalists.calib_images))}
        archs = {}
        for profile, search in searches.items():
            name = f"best@{profile}"
            model = setup.accuracy.prepare(search["best"])
            irs[name] = save_int8_ir(setup, model, out / "irs" / f"{profile}.xml", int(cfg.finalists.calib_images))
            archs[name] = search["best"].short()
    finally:
        setup.close()
    return irs, archs


def confirm_all(searches: dict[str, dict], irs: dict[str, Path], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Per profile: ``repeats`` confirmations of a0 and every winner."""
    out = {}
    for profile, search in searches.items():
        setup = build_setup(search["cfg"])
        try:
            timing = TimingConfig(**{**vars(setup.latency.timing), "min_rounds": 30,
                                     "min_time_s": args.confirm_seconds, "max_time_s": 4 * args.confirm_seconds})
            out[profile] = [setup.latency.confirm(irs, "a0", timing, force=True).to_dict()
                            for _ in range(args.repeats)]
            print(f"confirmed on {profile}: " + ", ".join(
                f"{n} {np.median([c['ratio'][n] for c in out[profile]]):.3f}" for n in irs), flush=True)
        finally:
            setup.close()
    return out


def matrix(confirmations: dict[str, list[dict]], winners: list[str]) -> dict[str, dict[str, dict]]:
    """``[winner][profile] -> {ratio (median over repeats), low, high (range of the CIs), repeats}``."""
    out: dict[str, dict[str, dict]] = {}
    for w in winners:
        out[w] = {}
        for profile, reps in confirmations.items():
            ratios = [c["ratio"][w] for c in reps]
            out[w][profile] = {"ratio": float(np.median(ratios)), "low": min(c["ratio_ci"][w][0] for c in reps),
                               "high": max(c["ratio_ci"][w][1] for c in reps), "repeats": ratios}
    return out


def claims(table: dict[str, dict[str, dict]], profiles: list[str]) -> list[dict]:
    """For each pair of profiles: each winner's loss on the other's profile, and whether it is
    >= 5 % with the intervals apart."""
    out = []
    for i, p in enumerate(profiles):
        for q in profiles[i + 1:]:
            row = {"profiles": [p, q]}
            holds = True
            for here, there in ((p, q), (q, p)):
                own, other = table[f"best@{there}"][there], table[f"best@{here}"][there]
                loss = other["ratio"] / own["ratio"] - 1
                apart = other["low"] > own["high"]
                row[f"best@{here} on {there}"] = {"loss": loss, "intervals_apart": apart}
                holds &= loss >= CLAIM_MARGIN and apart
            row["holds"] = holds
            out.append(row)
    return out


def rank_correlation(searches: dict[str, dict], profiles: list[str], sample: int, seed: int) -> dict[str, dict]:
    """Kendall tau / Spearman rho of latency ratios between profiles over a sample of the
    searched candidates, each timed on every profile (cached where the search timed it)."""
    candidates = {m.arch: m for s in searches.values() for m in s["history"]}
    rng = np.random.default_rng(seed)
    archs = [list(candidates)[i] for i in rng.permutation(len(candidates))[:sample]]
    ratios: dict[str, list[float]] = {}
    for profile in profiles:
        setup = build_setup(searches[profile]["cfg"])
        try:
            evaluator, supernet = setup.evaluator(), setup.supernet
            ratios[profile] = [setup.latency.measure(lambda a=a, s=supernet: s.extract(a).eval(), setup.input_shape,
                                                     model_key=evaluator.model_key(a)).ratio for a in archs]
        finally:
            setup.close()
    out = {}
    for i, p in enumerate(profiles):
        for q in profiles[i + 1:]:
            tau, tau_p = kendalltau(ratios[p], ratios[q])
            rho, _ = spearmanr(ratios[p], ratios[q])
            out[f"{p} vs {q}"] = {"kendall_tau": float(tau), "p_value": float(tau_p), "spearman_rho": float(rho),
                                  "n": len(archs)}
    return out


def layer_breakdown(searches: dict[str, dict], irs: dict[str, Path]) -> dict[str, dict[str, dict]]:
    """``[profile][model] -> ms per layer class`` (OpenVINO per-layer counters)."""
    out = {}
    for profile, search in searches.items():
        setup = build_setup(search["cfg"])
        try:
            out[profile] = {name: setup.latency.layer_times(xml) for name, xml in irs.items()}
        finally:
            setup.close()
    return out


def markdown(result: dict) -> str:
    profiles, table = result["profiles"], result["matrix"]
    lines = [f"Host: {result['host']['cpu']} (flags: {' '.join(result['host']['flags'])}); {ISA_NOTE}.", "",
             "Latency ratio to a0 (INT8, batch 1; median of repeats, [range of 95 % CIs]):", "",
             "| winner of | arch | " + " | ".join(f"on {q}" for q in profiles) + " |",
             "|---|---|" + "---|" * len(profiles)]
    for w in [f"best@{p}" for p in profiles]:
        cells = [f"{table[w][q]['ratio']:.3f} [{table[w][q]['low']:.3f}, {table[w][q]['high']:.3f}]" for q in profiles]
        lines.append(f"| {w[5:]} | `{result['archs'][w]}` | " + " | ".join(cells) + " |")
    lines += ["", "Each winner's loss on the other profile (vs that profile's own winner):", ""]
    for c in result["claims"]:
        parts = [f"{k}: {v['loss']:+.1%} ({'intervals apart' if v['intervals_apart'] else 'intervals overlap'})"
                 for k, v in c.items() if isinstance(v, dict)]
        lines.append(f"- {' vs '.join(c['profiles'])}: " + "; ".join(parts)
                     + f" -> claim {'HOLDS' if c['holds'] else 'does not hold'}")
    lines += ["", "Rank correlation of candidates' latency ratios between profiles:", ""]
    lines += [f"- {k}: Kendall tau {v['kendall_tau']:.3f} (p {v['p_value']:.2g}), Spearman rho "
              f"{v['spearman_rho']:.3f}, n = {v['n']}" for k, v in result["rank_correlation"].items()]
    lines += ["", "Per-layer time (ms per inference, OpenVINO PERF_COUNT):", "",
              "| profile | model | " + " | ".join(LAYER_CLASSES) + " | total |", "|---|---|" + "---|" * (len(LAYER_CLASSES) + 1)]
    for profile, models in result["layers"].items():
        for name, times in models.items():
            lines.append(f"| {profile} | {name} | " + " | ".join(f"{times[c]:.3f}" for c in LAYER_CLASSES)
                         + f" | {sum(times.values()):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profiles = args.profiles or [p for p in runnable_profiles() if p != "host"]
    if len(profiles) < 2:
        print(f"this host runs only {profiles}: nothing to compare", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    searches = replay_all(args, profiles) if args.candidates_from else search_all(args, profiles)
    irs, archs = winner_irs(searches, out)
    confirmations = confirm_all(searches, irs, args)
    winners = [f"best@{p}" for p in profiles]
    table = matrix(confirmations, winners)
    result = {"host": {"cpu": host_cpu_model(), "flags": sorted(f for f in host_cpu_flags() if f in RELEVANT_FLAGS)},
              "profiles": profiles, "archs": archs, "matrix": table, "claims": claims(table, profiles),
              "rank_correlation": rank_correlation(searches, profiles, args.rank_sample, args.seed),
              "layers": layer_breakdown(searches, irs), "confirmations": confirmations,
              "args": {k: v for k, v in vars(args).items()}}
    text = markdown(result)
    print("\n" + text)
    (out / "hardware_awareness.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "hardware_awareness.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
