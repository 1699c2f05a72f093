"""The commands' conventions: --version, --help, one-line errors with exit code 2 and nothing left
behind, a multirun that goes on past a failing job, and one test per validation rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import rlnas
from rlnas.cli import one_line_errors
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
                                          ("rlnas-latency", "profiles="), ("rlnas-profiles", "host"),
                                          ("rlnas-export", "run=")])
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
    """A value every rule of ``key`` refuses (a negative number, an unknown choice, no phases, no such head)."""
    if key.endswith("phases"):
        return "[]"
    if key.endswith("fp32_heads"):
        return "[cls]"
    return "nope" if key.endswith("precision") else ("1.5" if key in ("tau", "finalists.kd_alpha",
                                                                           "recipe.kd_alpha") else "-7")


@pytest.mark.parametrize("key", [k for k, _ in SEARCH_RULES])
def test_every_search_rule_refuses_a_bad_value(key: str) -> None:
    check_search(_search_cfg())  # the shipped config passes
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_search(_search_cfg(f"{key}={_bad_value(key)}"))


@pytest.mark.parametrize("key", [k for k, _ in TRAIN_RULES])
def test_every_train_rule_refuses_a_bad_value(key: str) -> None:
    check_train(_train_cfg())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_train(_train_cfg(f"{key}={_bad_value(key)}"))


@pytest.mark.parametrize("override,names", [
    ("finalists.confirm_passes=0", "confirm_passes"), ("finalists.kd_temperature=0", "kd_temperature"),
    ("latency.timing.min_iters=0", "min_iters"), ("latency.timing.warmup_iters=-1", "warmup_iters"),
    ("latency.timing.block_iters=0", "block_iters"), ("++finalists.confirm_timing.min_rounds=0", "min_rounds"),
    ("+finalists.typo=1", "typo")])
def test_keys_read_after_the_search_are_checked_before_it(override: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        check_search(_search_cfg(override))


def test_confirm_passes_0_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run("rlnas-search", "experiment=tiny", "finalists.confirm_passes=0", f"run_dir={out}", cwd=tmp_path)
    assert proc.returncode == 2 and "confirm_passes" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(capsys: pytest.CaptureFixture) -> None:
    def buggy(cfg):
        raise ValueError("an internal invariant broke")

    def refused(cfg):
        raise ConfigError("budget=-1 is not valid")

    with pytest.raises(ValueError, match="invariant"):
        one_line_errors("rlnas-search")(buggy)(None)
    with pytest.raises(FileNotFoundError):
        one_line_errors("rlnas-search")(lambda cfg: Path("/nonexistent/rlnas/file").read_text())(None)
    with pytest.raises(SystemExit) as exited:
        one_line_errors("rlnas-search")(refused)(None)
    assert exited.value.code == 2 and capsys.readouterr().err == "rlnas-search: budget=-1 is not valid\n"


def test_a_user_error_inside_hydra_instantiate_is_one_line(tmp_path: Path) -> None:
    proc = run("rlnas-search", "experiment=tiny", "agent=evolution", "agent.init=bogus", f"run_dir={tmp_path / 'r'}",
               cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "init must be" in proc.stderr


def test_a_file_as_run_dir_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    proc = run("rlnas-search", "experiment=tiny", f"run_dir={a_file}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "is a file" in proc.stderr
    assert a_file.read_text() == "mine\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_into_a_closed_pipe_is_quiet(command: str) -> None:
    proc = subprocess.run(f"'{BIN / command}' --help | head -1", shell=True, capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_export_refuses_in_one_line_and_leaves_the_users_directory(tmp_path: Path) -> None:
    bare = run("rlnas-export", cwd=tmp_path)
    assert bare.returncode == 2 and bare.stderr.startswith("rlnas-export: usage:") and "Traceback" not in bare.stderr
    absent = run("rlnas-export", f"run={tmp_path / 'absent'}", cwd=tmp_path)
    assert absent.returncode == 2 and "search first" in absent.stderr and not (tmp_path / "absent").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    empty = run("rlnas-export", f"run={mine}", cwd=tmp_path)
    assert empty.returncode == 2 and "not an rlnas-search run directory" in empty.stderr
    assert mine.is_dir() and not any(mine.iterdir())
