"""A latency signal you can trust (issue 23): do a search's latency ratios hold when re-timed?

N candidates of a finished search are timed again against a0 in confirmations (the finalists'
protocol: :meth:`LatencyOracle.confirm`, more rounds than the search) and, with
``--benchmark-app``, in OpenVINO's ``benchmark_app``; prints per candidate the search ratio
(``latency_ratio`` in ``<run>/evaluations.jsonl``), the confirmed ratio and the benchmark_app
ratio, and the median and p90 of their relative differences.

    .venv/bin/python experiments/latency_agreement.py --run outputs/search/<run>              # 20 candidates
    .venv/bin/python experiments/latency_agreement.py --run outputs/search/<run> --passes 3 \\
        --benchmark-app --bapp-seconds 10                     # + benchmark_app, 3 confirmation passes
    .venv/bin/python experiments/latency_agreement.py --run ... --timing min_rounds=10 --timing min_time_s=5

Run it from the directory the search ran in when the run's ``cache_dir`` is relative (the IR
paths in the run's log are relative to it), and while nothing else heavy runs.

- Candidates: the run's measured candidates (status ok, a search ratio, the INT8 IR still on
  disk; one per IR), sorted by search ratio and cut into ``--n`` strata of equal size; one is drawn
  from each stratum (``--seed``), so the choice spans the whole ratio range and is reproducible.
- a0: the very IR the search interleaved with every candidate (found through the store record
  that gave the run a candidate's numbers, whose key names the reference; the IR lies in the
  run's ``cache_dir/ir/``).
- Confirmation: the oracle of the run's config (``latency``: store, ``cache_dir``, quantization;
  ``--device`` another profile), timing ``latency.timing`` with ``finalists.confirm_timing`` over
  it and ``--timing key=value`` over that. The candidates are dealt round-robin into
  confirmations of at most ``--groups`` candidates each, every one with a0 (so each confirmation
  spans the ratio range), and every confirmation is run ``--passes`` times, pass after pass; a
  candidate's confirmed ratio is the median over its passes (``rlnas.finalists.combine_passes``),
  its interval the envelope of the passes' 95 % bootstrap intervals.
- benchmark_app (``--benchmark-app``): ``benchmark_app -hint latency -t <--bapp-seconds>`` under
  the profile's ISA cap (``ONEDNN_MAX_CPU_ISA``) and its CPU properties (``-load_config``), under
  the machine lock, alternating a0 and the candidate ``--bapp-runs`` times (a0 first, then the
  candidate first, ...); the ratio is that of the medians over runs of the median latencies it
  reports (kept too: the averages' ratio, and each run's candidate/a0 ratio). benchmark_app prints
  two decimals (of ms, or of us for some sub-millisecond runs): coarse for tiny networks.
- Differences: ``|confirmed / search - 1|``, ``|bapp / confirmed - 1|`` and ``|bapp / search - 1|``.

Cache: each confirmation is stored in the run's measurement store by the IRs' contents, their
names in it, the profile, this host's CPU, the timing and the pass (``repeat``), and each
benchmark_app ratio (kind ``benchmark_app``) by the two IRs' contents, the profile, the CPU, the
OpenVINO version, the seconds and the runs: a rerun with the same ``--n``, ``--seed`` and
``--groups`` (an interrupted one included) times only what is missing, a larger ``--passes`` only
the new passes; ``cached`` says which. ``--force`` times everything anew.
Writes ``--out`` (default ``<run>/latency_agreement.json``): the rows, the summary and the
confirmations' records.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from bench_benchmark_app import alternate, benchmark_app_path  # experiments/ (the script's directory)
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from scipy.stats import spearmanr
from tabulate import tabulate

from rlnas.errors import UserError
from rlnas.export import compose_run_config
from rlnas.finalists import combine_passes
from rlnas.oracles.device import DeviceProfile, host_cpu_model, load_profile
from rlnas.oracles.latency import LatencyOracle
from rlnas.oracles.latency_results import Confirmation
from rlnas.oracles.ratios import TimingConfig
from rlnas.oracles.store import MeasurementStore
from rlnas.ovtools import ir_content_key
from rlnas.runsetup import load_profile as run_profile
from rlnas.runsetup import plain
from rlnas.search.history import read_history
from rlnas.search.measurement import Measurement

A0 = "a0"
BAPP_KIND = "benchmark_app"
BAPP_MODE = ("-hint", "latency")


class AgreementError(UserError):
    """A run this experiment cannot use (too few candidates, a0's IR gone...): one line."""


@dataclass
class Candidate:
    """One measured network of the run: its IR (the name is the IR's file stem), the search's
    numbers and, once timed, the confirmation's and benchmark_app's."""

    name: str
    arch: str
    ir: Path
    search_ratio: float
    search_latency_ms: float | None
    search_ref_latency_ms: float | None
    confirmed_ratio: float | None = None
    confirmed_passes: list[float] = field(default_factory=list)
    confirmed_ci: list[float] | None = None
    confirmed_latency_ms: float | None = None
    confirm_group: int | None = None
    confirm_cached: list[bool] = field(default_factory=list)
    bapp_ratio: float | None = None
    bapp_average_ratio: float | None = None
    bapp: dict[str, Any] | None = None

    @property
    def diff_confirmed(self) -> float | None:
        """``|confirmed / search - 1|``."""
        return _rel(self.confirmed_ratio, self.search_ratio)

    @property
    def diff_bapp(self) -> float | None:
        """``|bapp / confirmed - 1|``."""
        return _rel(self.bapp_ratio, self.confirmed_ratio)

    @property
    def diff_bapp_search(self) -> float | None:
        """``|bapp / search - 1|``."""
        return _rel(self.bapp_ratio, self.search_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ir": str(self.ir), "diff_confirmed": self.diff_confirmed,
                "diff_bapp": self.diff_bapp, "diff_bapp_search": self.diff_bapp_search}


def _rel(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else abs(value / base - 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a search's run directory (evaluations.jsonl, .hydra/config.yaml)")
    p.add_argument("--n", type=int, default=20, help="candidates to re-time (spread over the search ratios)")
    p.add_argument("--seed", type=int, default=0, help="which candidate of each stratum")
    p.add_argument("--device", help="device profile (default: the run's)")
    p.add_argument("--passes", type=int, default=1, help="confirmation passes (a candidate's ratio: their median)")
    p.add_argument("--groups", type=int, default=5, metavar="SIZE",
                   help="candidates per confirmation (each confirmation also times a0)")
    p.add_argument("--timing", action="append", default=[], metavar="KEY=VALUE",
                   help="confirmation TimingConfig override (repeatable), e.g. min_rounds=10")
    p.add_argument("--benchmark-app", action="store_true", help="also time each candidate and a0 in benchmark_app")
    p.add_argument("--bapp-seconds", type=float, default=10.0, help="benchmark_app -t of each run")
    p.add_argument("--bapp-runs", type=int, default=3, help="benchmark_app runs of a0 and of each candidate")
    p.add_argument("--force", action="store_true", help="time everything anew (the stored results are replaced)")
    p.add_argument("--out", help="JSON written (default <run>/latency_agreement.json)")
    args = p.parse_args(argv)
    for name in ("n", "passes", "groups", "bapp_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.bapp_seconds <= 0:
        p.error("--bapp-seconds must be positive")
    return args


def timing_overrides(items: list[str]) -> dict[str, Any]:
    """``["min_rounds=3", "target_rel_error=null"]`` -> ``{"min_rounds": 3, "target_rel_error": None}``."""
    fields = {f.name for f in dataclasses.fields(TimingConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise AgreementError(f"--timing {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        out[key] = yaml.safe_load(value)
    return out


def confirm_timing(cfg: DictConfig, oracle: LatencyOracle, overrides: dict[str, Any]) -> TimingConfig:
    """The finalists' confirmation timing of the run (``finalists.confirm_timing`` over
    ``latency.timing``), with ``overrides`` over it."""
    finalists = plain((cfg.get("finalists") or {}).get("confirm_timing")) or {}
    return TimingConfig(**{**asdict(oracle.timing), **finalists, **overrides})


def candidates_of(history: list[tuple[str, dict, Measurement]]) -> list[Candidate]:
    """The run's measured candidates with an IR on disk, one per IR, sorted by search ratio."""
    seen: dict[Path, Candidate] = {}
    for kind, _, m in history:
        if kind != "candidate" or not m.ok or not m.latency_ratio or not m.ir_path:
            continue
        ir = Path(m.ir_path)
        if ir in seen or not (ir.is_file() and ir.with_suffix(".bin").is_file()):
            continue
        seen[ir] = Candidate(ir.stem, m.arch.short(), ir, float(m.latency_ratio), m.latency_ms, m.ref_latency_ms)
    return sorted(seen.values(), key=lambda c: (c.search_ratio, c.name))


def select(candidates: list[Candidate], n: int, seed: int) -> list[Candidate]:
    """One candidate drawn (seeded) from each of ``n`` equal strata of the ratio-sorted list."""
    if len(candidates) < n:
        raise AgreementError(f"the run has {len(candidates)} measured candidates with an IR on disk, --n is {n}: "
                             "pass a smaller --n, or run from the search's working directory if its cache_dir is "
                             "relative")
    rng = np.random.default_rng(seed)
    edges = [round(i * len(candidates) / n) for i in range(n + 1)]
    return [candidates[int(rng.integers(lo, hi))] for lo, hi in itertools.pairwise(edges)]


def reference_ir(oracle: LatencyOracle, store: MeasurementStore, candidates: list[Candidate]) -> Path:
    """a0's IR as the search timed it: the reference named by the key of the stored latency
    record that gave the run a candidate's numbers (same IR, same latencies), at that record's
    shape and precision, where this oracle keeps IRs."""
    by_ir = {str(c.ir): c for c in candidates}
    found: dict[str, tuple[dict, dict]] = {}
    loose: dict[str, tuple[dict, dict]] = {}
    for key, record in store.items("latency"):
        c = by_ir.get(str(record.get("ir_path")))
        ref = (key.get("reference") or {}).get("model")
        if c is None or ref is None:
            continue
        loose[ref] = (key, record)
        if record.get("latency_ms") == c.search_latency_ms and record.get("ref_latency_ms") == c.search_ref_latency_ms:
            found[ref] = (key, record)
    found = found or loose
    if len(found) != 1:
        raise AgreementError(f"cannot tell which reference (a0, else the maximal subnet) the search timed its "
                             f"candidates with: {len(found)} references in the store's records of their IRs "
                             f"({sorted(found)[:3]})")
    ref, (key, record) = next(iter(found.items()))
    shape, precision = key["input_shape"], key["precision"]
    if oracle.ir_path(key["model"], shape, precision).resolve() != Path(record["ir_path"]).resolve():
        raise AgreementError(f"{record['ir_path']} is not where this oracle keeps that IR "
                             f"({oracle.ir_path(key['model'], shape, precision)}): another cache_dir, or other "
                             "OpenVINO/NNCF versions than the search's")
    xml = oracle.ir_path(ref, shape, precision)
    if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
        raise AgreementError(f"a0's IR {xml} (reference {ref}) is gone from the cache")
    return xml


def confirm_groups(oracle: LatencyOracle, a0_ir: Path, chosen: list[Candidate], size: int, passes: int,
                   timing: TimingConfig, force: bool) -> list[dict[str, Any]]:
    """Confirm the candidates, dealt round-robin into groups of at most ``size``, each with a0,
    ``passes`` times (pass after pass); fills each candidate's confirmed fields and returns one
    record per group (:func:`rlnas.finalists.combine_passes`)."""
    count = -(-len(chosen) // size)
    groups = [chosen[g::count] for g in range(count)]
    runs: list[list[Confirmation]] = [[] for _ in groups]
    for p in range(passes):
        for g, group in enumerate(groups):
            irs = {A0: str(a0_ir), **{c.name: str(c.ir) for c in group}}
            t0 = time.perf_counter()
            confirmation = oracle.confirm(irs, A0, timing, force=force, repeat=p)
            runs[g].append(confirmation)
            print(f"pass {p + 1}/{passes} confirmation {g + 1}/{count}: {len(group)} candidates + a0, "
                  f"{confirmation.rounds} rounds, {'cached' if confirmation.cached else 'timed'} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    records = []
    for g, (group, passes_of) in enumerate(zip(groups, runs, strict=True)):
        combined = combine_passes(passes_of)
        for c in group:
            c.confirm_group = g
            c.confirmed_ratio = combined["ratio"][c.name]
            c.confirmed_passes = combined["ratio_by_pass"][c.name]
            c.confirmed_ci = combined["ratio_ci"][c.name]
            c.confirmed_latency_ms = combined["latency_ms"][c.name]
            c.confirm_cached = [r.cached for r in passes_of]
        records.append({"group": g, "candidates": [c.name for c in group], "cached": [r.cached for r in passes_of],
                        **combined})
    return records


def bapp_ratio(store: MeasurementStore, oracle: LatencyOracle, a0_ir: Path, c: Candidate, seconds: float,
               runs: int, force: bool) -> dict[str, Any]:
    """benchmark_app's ratio of ``c`` to a0 (stored; see the module's docstring)."""
    profile = oracle.profile
    key = {"candidate": ir_content_key(c.ir), "reference": ir_content_key(a0_ir), "profile": profile.key(),
           "cpu": host_cpu_model(), "openvino": oracle.versions["openvino"], "mode": list(BAPP_MODE),
           "seconds": seconds, "runs": runs}
    record = None if force else store.get(BAPP_KIND, key)
    if record is not None:
        return {**record, "cached": True}
    times = alternate({A0: a0_ir, c.name: c.ir}, profile, seconds, runs, BAPP_MODE)
    med = {n: statistics.median(t["latency_ms"] for t in ts) for n, ts in times.items()}
    avg = {n: statistics.median(t["average_ms"] for t in ts) if all(t["average_ms"] for t in ts) else None
           for n, ts in times.items()}
    record = {"ratio": med[c.name] / med[A0],
              "average_ratio": avg[c.name] / avg[A0] if avg[c.name] and avg[A0] else None,
              "run_ratios": [t["latency_ms"] / a["latency_ms"] for t, a in zip(times[c.name], times[A0], strict=True)],
              "latency_ms": {"a0": [t["latency_ms"] for t in times[A0]],
                             "candidate": [t["latency_ms"] for t in times[c.name]]},
              "average_ms": {"a0": [t["average_ms"] for t in times[A0]],
                             "candidate": [t["average_ms"] for t in times[c.name]]},
              "command": times[c.name][0]["command"], "env": profile.env(), "measured_at": time.time()}
    store.put(BAPP_KIND, key, record)
    return {**record, "cached": False}


def spread(values: list[float | None]) -> dict[str, Any] | None:
    """Median, p90 and max of the values present (None when there are none)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"n": len(xs), "median": float(np.median(xs)), "p90": float(np.percentile(xs, 90)), "max": max(xs)}


def shift_of(search: list[float | None], confirmed: list[float | None]) -> dict[str, Any] | None:
    """Is the search-vs-confirmation difference one common shift or scatter? The signed median of
    ``confirmed / search - 1``, the Spearman rank correlation of the two ratios (what the agent's
    ranking needs), and the median |difference| left after dividing out the common factor."""
    pairs = [(s, c) for s, c in zip(search, confirmed, strict=True) if s and c]
    if len(pairs) < 3:
        return None
    signed = float(np.median([c / s - 1.0 for s, c in pairs]))
    residual = float(np.median([abs(c / (s * (1.0 + signed)) - 1.0) for s, c in pairs]))
    rho = float(spearmanr([s for s, _ in pairs], [c for _, c in pairs]).statistic)
    return {"n": len(pairs), "signed_median": signed, "spearman": rho, "residual_median": residual,
            "confirmed_faster": sum(c < s for s, c in pairs)}


def summary_of(chosen: list[Candidate], profile: DeviceProfile, run_profile_name: str, timing: TimingConfig,
               args: argparse.Namespace, command: str, seconds: float) -> dict[str, Any]:
    """The figures the experiment reports."""
    cached = [flag for c in chosen for flag in c.confirm_cached]
    return {"n": len(chosen), "profile": profile.to_dict(), "search_profile": run_profile_name,
            "host_cpu": host_cpu_model(), "command": command, "run": str(args.run), "seed": args.seed,
            "passes": args.passes, "group_size": args.groups, "confirm_timing": asdict(timing),
            "search_vs_confirmed": spread([c.diff_confirmed for c in chosen]),
            "search_vs_confirmed_shift": shift_of([c.search_ratio for c in chosen], [c.confirmed_ratio for c in chosen]),
            "bapp_vs_confirmed": spread([c.diff_bapp for c in chosen]),
            "bapp_vs_search": spread([c.diff_bapp_search for c in chosen]),
            "benchmark_app": {"mode": list(BAPP_MODE), "seconds": args.bapp_seconds, "runs": args.bapp_runs}
            if args.benchmark_app else None,
            "confirmations_cached": all(cached) and bool(cached), "seconds": seconds}


def print_report(chosen: list[Candidate], summary: dict[str, Any]) -> None:
    def f(v: float | None, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    rows = [{"#": i, "candidate": c.name, "architecture": c.arch, "search": f(c.search_ratio),
             "confirmed": f(c.confirmed_ratio),
             "95% CI": f"{c.confirmed_ci[0]:.3f}-{c.confirmed_ci[1]:.3f}" if c.confirmed_ci else "-",
             "|conf/search-1|": f(c.diff_confirmed), "benchmark_app": f(c.bapp_ratio),
             "|bapp/conf-1|": f(c.diff_bapp), "cached": "yes" if all(c.confirm_cached) else "no"}
            for i, c in enumerate(chosen)]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print("ratios: latency / a0's, a0 timed alongside; confirmed: median over passes")
    for label, key in (("search vs confirmation", "search_vs_confirmed"),
                       ("benchmark_app vs confirmation", "bapp_vs_confirmed"),
                       ("benchmark_app vs search", "bapp_vs_search")):
        s = summary[key]
        if s is not None:
            print(f"{label}: |ratio difference| median {s['median']:.1%}, p90 {s['p90']:.1%}, max {s['max']:.1%} "
                  f"(n={s['n']})")
    shift = summary.get("search_vs_confirmed_shift")
    if shift is not None:
        print(f"search vs confirmation, one shift or scatter: signed median {shift['signed_median']:+.1%} "
              f"({shift['confirmed_faster']} of {shift['n']} confirmed faster), Spearman {shift['spearman']:.3f}, "
              f"median |difference| after the common factor {shift['residual_median']:.1%}")
    p = summary["profile"]
    print(f"n={summary['n']}, profile {p['name']} (ISA {p['isa'] or 'native'}, {p['threads']} threads, "
          f"{p['inference_precision']}; the search's: {summary['search_profile']}), host CPU {summary['host_cpu']}, "
          f"{summary['passes']} pass(es), {summary['group_size']} candidates per confirmation, "
          f"confirmations cached: {summary['confirmations_cached']}")
    print(f"command: {summary['command']}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join([sys.executable, str(Path(__file__)), *argv])
    t0 = time.perf_counter()
    run = Path(args.run)
    try:
        overrides = timing_overrides(args.timing)
        cfg = compose_run_config(run, [])
        search_profile = run_profile(cfg)
        profile = load_profile(args.device) if args.device else search_profile
        if args.benchmark_app:
            benchmark_app_path()
        candidates = candidates_of(read_history(run / "evaluations.jsonl"))
        chosen = select(candidates, args.n, args.seed)
        store = MeasurementStore(Path(cfg.cache_dir) / "measurements.sqlite")
        build = instantiate(cfg.latency, _partial_=True)
        with build(profile=profile, store=store, cache_dir=Path(cfg.cache_dir)) as oracle:
            timing = confirm_timing(cfg, oracle, overrides)
            a0_ir = reference_ir(oracle, store, candidates)
            print(f"{len(chosen)} of {len(candidates)} candidates of {run}, a0 = {a0_ir}, profile {profile.name}",
                  flush=True)
            records = confirm_groups(oracle, a0_ir, chosen, args.groups, args.passes, timing, args.force)
            if args.benchmark_app:
                for i, c in enumerate(chosen):
                    try:
                        c.bapp = bapp_ratio(store, oracle, a0_ir, c, args.bapp_seconds, args.bapp_runs, args.force)
                    except (RuntimeError, subprocess.TimeoutExpired) as err:  # this candidate's row says so
                        c.bapp = {"error": str(err)[-1000:]}
                        print(f"benchmark_app {i + 1}/{len(chosen)}: {c.name} failed: {str(err)[:200]}", flush=True)
                        continue
                    c.bapp_ratio, c.bapp_average_ratio = c.bapp["ratio"], c.bapp["average_ratio"]
                    print(f"benchmark_app {i + 1}/{len(chosen)}: {c.name} ratio {c.bapp_ratio:.3f} "
                          f"({'cached' if c.bapp['cached'] else 'timed'})", flush=True)
    except (UserError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
        print(f"latency_agreement: {err}", file=sys.stderr)
        return 2
    summary = summary_of(chosen, profile, search_profile.name, timing, args, command, time.perf_counter() - t0)
    print_report(chosen, summary)
    out = Path(args.out) if args.out else run / "latency_agreement.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": [c.to_dict() for c in chosen], "a0_ir": str(a0_ir),
                               "confirmations": records}, indent=1, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
