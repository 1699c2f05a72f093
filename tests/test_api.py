"""The Python API (``rlnas.api``) on the tiny configs: overrides given as strings or keyword
arguments, configs validated as the commands validate them, a supernet trained, a search run on
it and its result exported. Real training, OpenVINO/NNCF oracles and export on a learnable
synthetic 4-class image folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from rlnas import api
from rlnas.arch import Arch
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.export import ExportError
from rlnas.search.history import read_history
from rlnas.supernet import load_supernet
from rlnas.validate import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """Dataset overrides shared by training and search: the tiny dataset on a synthetic folder."""
    tmp = tmp_path_factory.mktemp("api-data")
    root = write_synthetic_imagefolder(tmp / "images", {"train": 32, "test": 16}, num_classes=4)
    return [f"dataset.root={root}", "dataset.num_classes=4", f"dataset.cache_dir={tmp / 'cache'}"]


def train_overrides(out: Path, data: list[str]) -> list[str]:
    return ["model=resnet_tiny", "dataset=tiny", "log.progress=false", "log.tensorboard=false",
            "eval.val_images=null", "eval.recal_images=32", *data]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """A supernet trained through the API, the recipe and output directory given as keywords."""
    out = tmp_path_factory.mktemp("api-supernet") / "run"
    return api.train_supernet(*train_overrides(out, data), recipe="tiny", threads=1, output_dir=out)


def search_overrides(root: Path, data: list[str], trained: Path) -> list[str]:
    return ["experiment=tiny", "device=host", "agent=random", "seed=3", "threads=1", "finalists.k=0",
            "logging.progress=false", "logging.tensorboard=false", f"cache_dir={root / 'cache'}",
            f"supernet.checkpoint={trained}", *data]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data, trained) -> tuple[dict, list[str]]:
    """A search of 2 evaluations through the API, exporting its best feasible candidate."""
    root = tmp_path_factory.mktemp("api-search")
    overrides = search_overrides(root, data, trained)
    return api.search(*overrides, budget=2, run_dir=root / "run"), overrides


def test_train_supernet_returns_the_trained_checkpoint(trained, data, tmp_path):
    assert trained.name == "supernet.pt" and trained.is_file()
    supernet, meta = load_supernet(trained)
    assert supernet.space.family == "resnet_tiny" and supernet.num_classes == 4
    assert meta["completed"] and meta["recipe"]["name"] == "tiny"
    # the same run with the keywords written as strings: finished, so the same file at once
    out = trained.parent
    before = trained.stat().st_mtime_ns
    again = api.train_supernet(*train_overrides(out, data), "recipe=tiny", "threads=1", f"output_dir={out}")
    assert again == trained and trained.stat().st_mtime_ns == before
    # validated as rlnas-train-supernet validates: refused before anything is written
    with pytest.raises(ConfigError, match="resolution"):
        api.train_supernet(*train_overrides(tmp_path / "bad", data), resolution=0, output_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_compose_search_takes_strings_and_keywords_and_validates(tmp_path):
    by_keyword = api.compose_search("experiment=tiny", budget=7, device="host", run_dir=tmp_path / "r")
    by_string = api.compose_search("experiment=tiny", "budget=7", "device=host", f"run_dir={tmp_path / 'r'}")
    assert by_keyword == by_string
    assert by_keyword.budget == 7 and by_keyword.device.name == "host" and by_keyword.run_dir == str(tmp_path / "r")
    assert by_keyword.model.name == "resnet_tiny" and by_keyword.recipe.name == "tiny"  # experiment=tiny
    assert api.compose_search("experiment=tiny", **{"finalists.k": 0}).finalists.k == 0  # dotted keys
    with pytest.raises(ConfigError, match="budget"):
        api.compose_search("experiment=tiny", budget=-3)
    with pytest.raises(ConfigCompositionException):
        api.compose_search("experiment=tiny", no_such_option=1)


def test_search_measures_the_budget_and_exports(searched, trained):
    summary, _ = searched
    run = Path(summary["run_dir"])
    assert summary["unique_evaluations"] == 2 and summary["budget"] == 2 and summary["agent"] == "random"
    history = read_history(run / "evaluations.jsonl")
    candidates = [m for kind, _, m in history if kind == "candidate"]
    assert [kind for kind, _, _ in history].count("baseline") == 1 and len(candidates) == 2
    assert summary["baseline"]["arch"] == history[0][2].arch.to_dict()
    feasible = [m for m in candidates if m.feasible]
    if feasible:  # the summary's best is the fastest feasible candidate
        fastest = min(feasible, key=lambda m: m.latency_ratio)
        assert summary["best"]["arch"] == fastest.arch.to_dict()
    else:
        assert summary["best"] is None
    assert json.loads((run / "search_result.json").read_text())["unique_evaluations"] == 2
    # the export at the end of the search (finalists.k=0: the search's choice as measured)
    report = summary["export"]
    assert Path(report["out_dir"]) == run / "export" and (run / "export" / "model.xml").is_file()
    assert report["setup"]["supernet checkpoint"] == str(trained)
    expected = summary["best"]["arch"] if summary["best"] else summary["baseline"]["arch"]
    assert Arch.from_json(report["found"]["arch_json"]) == Arch.from_dict(expected)


def test_export_again_with_overrides(searched, tmp_path):
    """``export(run_dir, ...)`` on a run of the ``rlnas-search`` command (same config and store:
    nothing is measured again): the report of that run, written to its export directory."""
    summary, overrides = searched
    run = tmp_path / "cli-run"
    command = [str(Path(sys.executable).parent / "rlnas-search"), *overrides, "budget=2", "export.enabled=false",
               f"run_dir={run}"]
    cli = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert not (run / "export").exists()
    report = api.export(run, "finalists.k=0", **{"export.verify_images": 32})
    assert Path(report["out_dir"]) == run / "export" and (run / "export" / "report.json").is_file()
    assert json.loads((run / "export" / "report.json").read_text())["found"]["arch"] == report["found"]["arch"]
    assert report["setup"]["run"] == str(run) and report["setup"]["candidates measured"] == 2
    with pytest.raises(ExportError, match="not an rlnas-search run directory"):
        api.export(tmp_path)


def test_export_of_a_run_of_the_api(searched):
    summary, _ = searched
    report = api.export(summary["run_dir"], "finalists.k=0")
    assert Path(report["out_dir"]) == Path(summary["run_dir"]) / "export"
