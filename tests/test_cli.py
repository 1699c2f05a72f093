"""The commands' conventions: --version, --help, one-line errors with exit code 2 and nothing left
behind, a multirun that goes on past a failing job, and one test per validation rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import rlnas
from rlnas.validate import SEARCH_RULES, TRAIN_RULES, ConfigError, check_search, check_train

BIN = Path(sys.executable).parent
COMMANDS = ["rlnas-search", "rlnas-train-supernet", "rlnas-export", "rlnas-latency", "rlnas-profiles"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("command", COMMANDS)
def test_version(command: str) -> None:
    proc = run(command, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"rlnas {rlnas.__version__}"


@pytest.mark.parametrize("command,says", [("rlnas-search", "Main options"), ("rlnas-train-supernet", "recipe="),
                                          ("rlnas-latency", "profiles="), ("rlnas-profiles", "host")])
def test_help_says_what_it_does(command: str, says: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0 and command in proc.stdout and says in proc.stdout


def test_bad_value_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run("rlnas-search", "experiment=tiny", "budget=-3", f"run_dir={out}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["rlnas-search: budget=-3 is not valid: budget must be an integer >= 1 (unique architectures measured)"]
    assert not out.exists()
    train = run("rlnas-train-supernet", "resolution=0", f"output_dir={tmp_path / 'sn'}", cwd=tmp_path)
    assert train.returncode == 2 and "resolution=0" in train.stderr and "Traceback" not in train.stderr
    latency = run("rlnas-latency", "models=[resnet5]", f"cache_dir={tmp_path}", cwd=tmp_path)
    assert latency.returncode == 2 and "resnet50" in latency.stderr and "Traceback" not in latency.stderr


def test_multirun_goes_on_past_a_failing_job(tmp_path: Path) -> None:
    proc = run("rlnas-search", "-m", "experiment=tiny", "tau=1.5,2.0", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path)
    assert proc.returncode == 2 and "2 job(s) failed: 0, 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def _search_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=tiny", *overrides])


def _train_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name="train_supernet", overrides=list(overrides))



def _bad_value(key: str) -> str:
    """A value every rule of ``key`` refuses (a negative number, or an unknown choice)."""
    return "nope" if key.endswith("precision") else ("1.5" if key in ("tau", "finalists.kd_alpha",
                                                                           "recipe.kd_alpha") else "-7")


@pytest.mark.parametrize("key", [k for k, _, _ in SEARCH_RULES])
def test_every_search_rule_refuses_a_bad_value(key: str) -> None:
    check_search(_search_cfg())  # the shipped config passes
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_search(_search_cfg(f"{key}={_bad_value(key)}"))


@pytest.mark.parametrize("key", [k for k, _, _ in TRAIN_RULES])
def test_every_train_rule_refuses_a_bad_value(key: str) -> None:
    check_train(_train_cfg())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_train(_train_cfg(f"{key}={_bad_value(key)}"))
