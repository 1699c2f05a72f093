"""The Pareto front of a search (INT8 latency ratio vs INT8 accuracy) and its figure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib

from rlnas.search.measurement import Measurement

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the non-interactive backend is chosen)


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
               label="maximal subnet (a0's architecture)")
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
