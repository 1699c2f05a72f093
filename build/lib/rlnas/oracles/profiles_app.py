"""``rlnas-profiles``: which device profiles of conf/device/ this host can run, and why not the others.

A profile caps oneDNN's ISA (``ONEDNN_MAX_CPU_ISA``) to emulate a smaller CPU; a cap can only
lower the ISA, so a profile whose cap needs CPU flags this host lacks cannot run here
(``load_profile`` refuses it). Prints the host CPU and its ISA flags, then one row per profile.
"""

from __future__ import annotations

import argparse
import sys

from rlnas.oracles.device import (
    ISA_FLAGS,
    RELEVANT_FLAGS,
    ProfileStatus,
    device_conf_dir,
    host_cpu_flags,
    host_cpu_model,
    host_max_isa,
    profile_statuses,
)

HEADERS = ["profile", "ISA cap", "precision", "threads", "runs here", "missing flags", "stands for (CPUs)"]


def _ladder_position(status: ProfileStatus) -> tuple[int, int]:
    """Sort key: the lowest ISA cap first, the native (uncapped) profiles last."""
    isa = status.profile.isa
    return (isa is None, list(ISA_FLAGS).index(isa) if isa in ISA_FLAGS else len(ISA_FLAGS))


def rows(statuses: list[ProfileStatus], flags: frozenset[str] | None = None) -> list[list[str]]:
    """One table row per profile, in :data:`HEADERS` order."""
    out = []
    for s in statuses:
        p = s.profile
        out.append([
            p.name,
            p.isa or f"none (native: {host_max_isa(flags)})",
            p.inference_precision,
            str(p.threads),
            "yes" if s.runs_here else "no",
            " ".join(s.missing) or "-",
            ", ".join(p.cpus) or ("this machine" if p.isa is None else "-"),
        ])
    return out


def render(flags: frozenset[str] | None = None) -> str:
    """The whole report: host CPU, its relevant flags, the profile table, reasons that are not flags."""
    from tabulate import tabulate

    flags = host_cpu_flags() if flags is None else flags
    statuses = sorted(profile_statuses(flags), key=_ladder_position)
    has = [f for f in RELEVANT_FLAGS if f in flags]
    lacks = [f for f in RELEVANT_FLAGS if f not in flags]
    lines = [
        f"host CPU: {host_cpu_model()}",
        f"ISA flags it has: {' '.join(has) or '-'}",
        f"ISA flags it lacks: {' '.join(lacks) or '-'}",
        f"native oneDNN ISA: {host_max_isa(flags)}",
        "",
        tabulate(rows(statuses, flags), headers=HEADERS, tablefmt="github", disable_numparse=True),
    ]
    other = [s for s in statuses if not s.runs_here and not s.missing]
    if other:
        lines += ["", *(f"{s.profile.name}: {s.problem}" for s in other)]
    lines += ["", f"profiles: {device_conf_dir()}/<name>.yaml; this host can run: "
              f"{', '.join(s.profile.name for s in statuses if s.runs_here) or 'none'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``rlnas-profiles``."""
    parser = argparse.ArgumentParser(
        prog="rlnas-profiles",
        description="List the device profiles (conf/device/*.yaml): oneDNN ISA cap, inference precision "
                    "hint, threads, the real CPUs each stands for, and whether this host can run it; for "
                    "those it cannot, the /proc/cpuinfo flags it lacks. The host CPU model and its ISA "
                    "flags come first.")
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
