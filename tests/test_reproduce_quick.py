"""experiments/reproduce_quick.py: where the clones go, what is resumed, and the spread it reports
(the runs themselves are ``make search``: tested by the pipeline's tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import reproduce_quick  # noqa: E402


def test_the_dry_run_puts_clones_beside_each_other_and_skips_finished_ones(tmp_path: Path, capsys) -> None:
    done = reproduce_quick.clone_dir(tmp_path, 2)
    done.mkdir()
    (done / "reproduce.json").write_text("{}")
    assert reproduce_quick.main(["--dry-run", "--parent", str(tmp_path), "--clones", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [str(reproduce_quick.clone_dir(tmp_path, i)) for i in (1, 2, 3)]
    assert ["(done)" in line for line in lines] == [False, True, False]
    assert all("make search" in line and "latency_agreement.py --run <run> --n 16" in line for line in lines)
    assert not reproduce_quick.clone_dir(tmp_path, 1).exists()
    assert reproduce_quick.main(["--dry-run", "--parent", str(tmp_path), "--clones", "1", "--n", "0"]) == 0
    alone = capsys.readouterr().out
    assert alone.rstrip().endswith("make search") and "latency_agreement" not in alone


def test_the_spread_is_each_speedup_against_the_median() -> None:
    s = reproduce_quick.spread([2.0, 2.2, 1.8])
    assert s["median"] == 2.0
    assert s["deviations"] == pytest.approx([0.0, 0.1, -0.1])
    assert s["max_abs_deviation"] == pytest.approx(0.1) and s["max_over_min"] == pytest.approx(2.2 / 1.8)


def test_a_clone_must_hold_exactly_one_exported_quick_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="found 0"):
        reproduce_quick.the_run(tmp_path)
    for stamp in ("2026-12-07_10-00-00", "2026-12-07_11-00-00"):
        export = tmp_path / "outputs" / "search" / "quick" / stamp / "export"
        export.mkdir(parents=True)
        (export / "report.json").write_text(json.dumps({}))
    with pytest.raises(RuntimeError, match="found 2"):
        reproduce_quick.the_run(tmp_path)
    (tmp_path / "outputs" / "search" / "quick" / "2026-12-07_10-00-00" / "export" / "report.json").unlink()
    assert reproduce_quick.the_run(tmp_path).name == "2026-12-07_11-00-00"


def finished_report(chosen_holds: bool | None) -> dict:
    """The keys of an export's report.json that reproduce_quick reads (rlnas/export.py writes them)."""
    finalists = [] if chosen_holds is None else [
        {"name": "f1", "after": {"holdout_bound": {"holds": not chosen_holds}}},
        {"name": "f0", "after": {"holdout_bound": {"holds": chosen_holds}}}]
    found = {"arch": "resnet50[...]", "holdout_int8": 0.80, "feasible": True}
    if finalists:
        found["confirmed_ratio"] = 0.4
    return {"found": found, "finalists": {"finalists": finalists, "chosen": "f0"} if finalists else None,
            "a0": {"holdout_fp32": 0.81} if finalists else None}


def test_the_export_is_read_with_its_chosen_finalists_held_out_test() -> None:
    got = reproduce_quick.exported(finished_report(chosen_holds=False))
    assert got["confirmed_speedup"] == pytest.approx(2.5) and got["holdout_bound_holds"] is False
    assert got["a0_holdout_fp32"] == 0.81
    assert reproduce_quick.exported(finished_report(chosen_holds=True))["holdout_bound_holds"] is True


def test_a_run_without_finalists_or_a0_is_reported_without_those_figures() -> None:
    got = reproduce_quick.exported(finished_report(chosen_holds=None))
    assert got["confirmed_speedup"] is None and got["holdout_bound_holds"] is None and got["a0_holdout_fp32"] is None
    assert reproduce_quick.spread([None, None]) is None
    assert reproduce_quick.spread([2.0, None, 2.2])["values"] == [2.0, 2.2]


def test_a_clone_whose_make_search_finished_is_kept(tmp_path: Path) -> None:
    clone = reproduce_quick.clone_dir(tmp_path, 1)
    clone.mkdir()
    (clone / "kept").write_text("the clone's own files")
    (clone / "make_search.json").write_text(json.dumps({"seconds": 812.5}))
    assert reproduce_quick.made_search(clone, 16) == 812.5
    assert (clone / "kept").read_text() == "the clone's own files"
