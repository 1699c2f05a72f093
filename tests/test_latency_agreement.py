"""experiments/latency_agreement.py: candidates of a real (tiny) search re-timed against a0 in
confirmations, and in benchmark_app where it is installed; a rerun reuses the stored
confirmations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import search_data_overrides, tiny_a0

from rlnas.oracles.device import host_cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import latency_agreement  # noqa: E402

SHORT = ["--timing", "min_rounds=3", "--timing", "min_time_s=0", "--timing", "max_time_s=5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny search (random agent, budget 4, no export) with its own store."""
    root = tmp_path_factory.mktemp("agreement")
    overrides = ["experiment=tiny", "device=host", "logging.progress=false", "logging.tensorboard=false",
                 "accuracy.fp32_images=0", "agent=random", "budget=4", "export.enabled=false",
                 f"a0.checkpoint={tiny_a0(root / 'a0.pt')}", f"supernet.dir={root / 'supernets'}",
                 f"cache_dir={root / 'cache'}", f"run_dir={root / 'run'}", *search_data_overrides(root)]
    proc = subprocess.run([str(Path(sys.executable).parent / "rlnas-search"), *overrides], cwd=root,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.mark.slow
def test_confirms_candidates_and_reuses_the_stored_confirmations(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "agreement.json"
    argv = ["--run", str(run), "--n", "3", "--groups", "2", "--passes", "1", *SHORT, "--out", str(out)]
    assert latency_agreement.main(argv) == 0
    first = json.loads(out.read_text())
    rows, summary = first["rows"], first["summary"]
    assert len(rows) == 3 and len({r["name"] for r in rows}) == 3
    assert all(r["search_ratio"] > 0 and r["confirmed_ratio"] > 0 for r in rows)
    assert [r["search_ratio"] for r in rows] == sorted(r["search_ratio"] for r in rows)
    assert all(r["diff_confirmed"] == pytest.approx(abs(r["confirmed_ratio"] / r["search_ratio"] - 1)) for r in rows)
    assert sorted(r["confirm_group"] for r in rows) == [0, 0, 1]  # 3 candidates, at most 2 per confirmation
    assert all(r["confirm_cached"] == [False] and r["bapp_ratio"] is None for r in rows)
    a0 = Path(first["a0_ir"])
    assert a0.is_file() and a0 not in {Path(r["ir"]) for r in rows}
    assert [c["candidates"] for c in first["confirmations"]] == [[rows[0]["name"], rows[2]["name"]], [rows[1]["name"]]]

    assert summary["n"] == 3 and summary["profile"]["name"] == "host" and summary["search_profile"] == "host"
    assert summary["host_cpu"] == host_cpu_model() and "--n 3" in summary["command"]
    assert summary["passes"] == 1 and summary["group_size"] == 2
    assert summary["confirm_timing"]["min_rounds"] == 3 and summary["confirm_timing"]["max_time_s"] == 5
    spread = summary["search_vs_confirmed"]
    assert spread["n"] == 3 and 0 <= spread["median"] <= spread["p90"] <= spread["max"]
    assert summary["bapp_vs_confirmed"] is None and summary["benchmark_app"] is None
    assert summary["confirmations_cached"] is False
    printed = capsys.readouterr().out
    assert "search vs confirmation: |ratio difference| median" in printed and "host CPU" in printed

    # the same again: every confirmation comes from the store, the same numbers
    assert latency_agreement.main(argv) == 0
    again = json.loads(out.read_text())
    assert again["summary"]["confirmations_cached"] is True
    assert all(r["confirm_cached"] == [True] for r in again["rows"])
    assert [r["confirmed_ratio"] for r in again["rows"]] == [r["confirmed_ratio"] for r in rows]
    assert "confirmations cached: True" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).with_name("benchmark_app").is_file() or shutil.which("benchmark_app")),
                    reason="benchmark_app is not installed")
def test_benchmark_app_ratio(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "agreement.json"
    argv = ["--run", str(run), "--n", "1", *SHORT, "--benchmark-app", "--bapp-seconds", "1", "--bapp-runs", "1",
            "--out", str(out)]
    assert latency_agreement.main(argv) == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["bapp_ratio"] > 0 and row["bapp"]["cached"] is False and len(row["bapp"]["run_ratios"]) == 1
    assert row["diff_bapp"] == pytest.approx(abs(row["bapp_ratio"] / row["confirmed_ratio"] - 1))
    assert data["summary"]["bapp_vs_confirmed"]["n"] == 1 and data["summary"]["benchmark_app"]["runs"] == 1
    assert latency_agreement.main(argv) == 0  # stored too
    assert json.loads(out.read_text())["rows"][0]["bapp"]["cached"] is True


@pytest.mark.slow
def test_too_few_candidates_is_one_line(run: Path, capsys) -> None:
    assert latency_agreement.main(["--run", str(run), "--n", "99"]) == 2
    err = capsys.readouterr().err
    assert "latency_agreement: the run has" in err and "--n is 99" in err


def test_candidates_spread_over_the_ratio_range() -> None:
    cands = [latency_agreement.Candidate(f"c{i}", "a", Path(f"c{i}.xml"), 0.1 * (i + 1), None, None)
             for i in range(10)]
    chosen = latency_agreement.select(cands, 3, seed=0)
    # one from each third of the sorted list, the same for the same seed
    assert [c.name for c in chosen] == [c.name for c in latency_agreement.select(cands, 3, seed=0)]
    edges = [0, 3, 7, 10]  # round(i * 10 / 3)
    assert all(edges[k] <= int(c.name[1:]) < edges[k + 1] for k, c in enumerate(chosen))
    assert latency_agreement.select(cands, 10, seed=1) == cands
    with pytest.raises(latency_agreement.AgreementError, match="10 measured candidates"):
        latency_agreement.select(cands, 11, seed=0)


def test_a_common_shift_is_told_apart_from_scatter() -> None:
    search = [0.5, 0.6, 0.8, 0.9]
    shifted = latency_agreement.shift_of(search, [0.9 * s for s in search])
    assert shifted["signed_median"] == pytest.approx(-0.1) and shifted["residual_median"] == pytest.approx(0.0)
    assert shifted["spearman"] == pytest.approx(1.0) and shifted["confirmed_faster"] == 4
    scattered = latency_agreement.shift_of(search, [0.55, 0.54, 0.88, 0.81])
    assert scattered["spearman"] < 1.0 and scattered["residual_median"] > 0.05
    assert latency_agreement.shift_of([0.5, None], [0.5, 0.6]) is None
