"""Does ``make search`` reproduce from fresh clones (issue 23, item 7; item 2 at 32 px)?

    .venv/bin/python experiments/reproduce_quick.py               # 3 clones, one after another
    .venv/bin/python experiments/reproduce_quick.py --dry-run     # what each clone would run
    .venv/bin/python experiments/reproduce_quick.py --n 0         # make search alone (no step 2)

For each clone ``<parent>/<this checkout's name>-quick-<i>`` (beside this checkout, so ``../shared``
is the same; nothing else shared: its own ``.venv``, ``data/``, ``cache/`` and ``outputs/``):

1. ``git clone`` of this checkout's HEAD, then ``make search`` in it, timed (install included);
2. ``experiments/latency_agreement.py --run <its run> --n 16 --passes 3 --benchmark-app`` in the
   clone: the search's ratios re-timed in confirmations and in benchmark_app (item 2 at 32 px;
   ~20 min a clone, skipped under ``--n 0``);
3. benchmark_app (latency_agreement.py's mode, the export's profile and ISA cap) on the exported
   IR and a0's, alternated ``--bapp-rounds`` times: the ratio of their medians.

A clone with its ``reproduce.json`` is done and skipped, and one with its ``make_search.json``
resumes after ``make search``, so a rerun resumes after a kill (a clone killed during ``make
search`` is cloned again). Then prints each clone's confirmed speed-up, benchmark_app's,
the held-out top-1 and the wall time, and the spread: every speed-up against the median of the
clones (the issue's target: within +-10 %). Writes ``<out>/reproduce_quick.json``. It times
latency: run it on a quiet machine (no tests, no training).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_benchmark_app import alternate  # experiments/ (the script's directory)
from latency_agreement import BAPP_MODE
from tabulate import tabulate

from rlnas.oracles.device import host_cpu_model, load_profile

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clones", type=int, default=3)
    p.add_argument("--parent", type=Path, default=ROOT.parent, help="where the clones go (beside ../shared)")
    p.add_argument("--n", type=int, default=16,
                   help="candidates re-timed by latency_agreement.py (the budget; 0: no agreement step)")
    p.add_argument("--bapp-rounds", type=int, default=5)
    p.add_argument("--bapp-seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproduce_quick")
    p.add_argument("--dry-run", action="store_true")
    return p.parse_args(argv)


def clone_dir(parent: Path, i: int) -> Path:
    return parent / f"{ROOT.name}-quick-{i}"


def steps(n: int) -> list[list[str]]:
    """The commands run in a clone (the run directory is found after ``make search``); ``n=0``:
    ``make search`` alone."""
    agreement = [".venv/bin/python", "experiments/latency_agreement.py", "--run", "<run>", "--n", str(n),
                 "--passes", "3", "--benchmark-app"]
    return [["make", "search"]] + ([agreement] if n > 0 else [])


def the_run(clone: Path) -> Path:
    runs = sorted((clone / "outputs" / "search" / "quick").glob("*/export/report.json"))
    if len(runs) != 1:
        raise RuntimeError(f"{clone}: expected one exported quick run, found {len(runs)}")
    return runs[0].parent.parent


def bapp_speedup(run: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """benchmark_app on the export and a0's IR, alternated: the ratio of their medians (as
    latency_agreement.py's) and the per-round ratios."""
    report = json.loads((run / "export" / "report.json").read_text())
    profile = load_profile(report["setup"]["device profile"])
    irs = {"a0": run / "finalists" / "a0" / "model.xml", "export": run / "export" / "model.xml"}
    times = {name: [t["latency_ms"] for t in ts] for name, ts in alternate(irs, profile, seconds, rounds,
                                                                          BAPP_MODE).items()}
    ratio = statistics.median(times["export"]) / statistics.median(times["a0"])
    return {"latency_ms": times, "ratio": ratio, "speedup": 1.0 / ratio, "mode": list(BAPP_MODE),
            "round_ratios": [e / a for e, a in zip(times["export"], times["a0"], strict=True)]}


def exported(report: dict[str, Any]) -> dict[str, Any]:
    """The export's confirmed speed-up, held-out top-1 and held-out bound test (None where the run
    has none: no finalists, or no a0)."""
    found, finals = report["found"], report.get("finalists") or {}
    chosen = next((f for f in finals.get("finalists", []) if f["name"] == finals.get("chosen")), None)
    ratio = found.get("confirmed_ratio")
    return {"found": found["arch"], "confirmed_ratio": ratio, "confirmed_speedup": 1.0 / ratio if ratio else None,
            "holdout_int8": found.get("holdout_int8"), "feasible": found.get("feasible"),
            "holdout_bound_holds": chosen["after"]["holdout_bound"]["holds"] if chosen else None,
            "a0_holdout_fp32": (report["a0"] or {}).get("holdout_fp32")}


def made_search(clone: Path, n: int) -> float:
    """A fresh clone with ``make search`` run in it: its wall time (seconds). A clone whose
    ``make_search.json`` says it finished is kept; any other is cloned again."""
    stamp = clone / "make_search.json"
    if stamp.is_file():
        return float(json.loads(stamp.read_text())["seconds"])
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    t0 = time.perf_counter()
    with open(clone / "make_search.log", "w") as log:
        subprocess.run(steps(n)[0], cwd=clone, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t0
    stamp.write_text(json.dumps({"seconds": wall}))
    return wall


def reproduce(clone: Path, args: argparse.Namespace) -> dict[str, Any]:
    wall = made_search(clone, args.n)
    run = the_run(clone)
    for step in steps(args.n)[1:]:
        command = [a if a != "<run>" else str(run.relative_to(clone)) for a in step]
        with open(clone / "latency_agreement.log", "w") as log:
            subprocess.run(command, cwd=clone, stdout=log, stderr=subprocess.STDOUT, check=True)
    agreement_json = run / "latency_agreement.json"
    result = {"clone": str(clone), "commit": git_head(clone), "run": str(run), "make_search_seconds": wall,
              **exported(json.loads((run / "export" / "report.json").read_text())),
              "benchmark_app": bapp_speedup(run, args.bapp_rounds, args.bapp_seconds),
              "agreement": json.loads(agreement_json.read_text()).get("summary") if agreement_json.is_file() else None}
    (clone / "reproduce.json").write_text(json.dumps(result, indent=1))
    return result


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def spread(values: list[float | None]) -> dict[str, Any] | None:
    """Each value against the median of all (as a fraction), and the largest such deviation; None
    values (a run without the figure) are left out."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    med = statistics.median(present)
    deviations = [v / med - 1.0 for v in present]
    return {"median": med, "values": present, "deviations": deviations,
            "max_abs_deviation": max(abs(d) for d in deviations), "max_over_min": max(present) / min(present)}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"host_cpu": host_cpu_model(), "clones": len(results),
            "confirmed_speedup": spread([r["confirmed_speedup"] for r in results]),
            "benchmark_app_speedup": spread([r["benchmark_app"]["speedup"] for r in results]),
            "make_search_seconds": [r["make_search_seconds"] for r in results]}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    rows = [{"clone": Path(r["clone"]).name, "make search (min)": f"{r['make_search_seconds'] / 60:.1f}",
             "found": r["found"], "confirmed": _fmt(r["confirmed_speedup"], ".2f") + "x",
             "benchmark_app": f"{r['benchmark_app']['speedup']:.2f}x", "held-out INT8": _fmt(r["holdout_int8"], ".4f"),
             "bound held-out (paired test)": {True: "holds", False: "not shown", None: "-"}[r["holdout_bound_holds"]]}
            for r in results]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    for key in ("confirmed_speedup", "benchmark_app_speedup"):
        s = summary[key]
        if s:
            print(f"{key}: median {s['median']:.2f}x, max |deviation from the median| "
                  f"{100 * s['max_abs_deviation']:.1f} % (target <= 10 %), max/min {s['max_over_min']:.3f}")
    print(f"host CPU: {summary['host_cpu']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clones = [clone_dir(args.parent, i) for i in range(1, args.clones + 1)]
    if args.dry_run:
        for clone in clones:
            state = "done" if (clone / "reproduce.json").is_file() else "to run"
            print(f"{clone} ({state}): git clone {ROOT} {clone}; " + "; ".join(" ".join(s) for s in steps(args.n)))
        return 0
    results = []
    for clone in clones:
        done = clone / "reproduce.json"
        results.append(json.loads(done.read_text()) if done.is_file() else reproduce(clone, args))
        print(f"{clone.name}: confirmed {_fmt(results[-1]['confirmed_speedup'], '.2f')}x, benchmark_app "
              f"{results[-1]['benchmark_app']['speedup']:.2f}x", flush=True)
    summary = summarize(results)
    print_table(results, summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reproduce_quick.json").write_text(json.dumps({"summary": summary, "clones": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
