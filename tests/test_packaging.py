"""A non-editable install works: the wheel carries the configs (Hydra reads them from the
installed package), every family registers itself and the commands run from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rlnas

BIN = Path(sys.executable).parent
COMMANDS = ["rlnas-search", "rlnas-train-supernet", "rlnas-export", "rlnas-latency", "rlnas-profiles"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout installed into a fresh directory (dependencies from this venv).
    Built from a copy of the sources: setuptools writes ``build/`` beside them."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(rlnas.REPO_DIR / "rlnas", source / "rlnas", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(rlnas.REPO_DIR / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(root / "whl")],
                   check=True, capture_output=True, timeout=300)
    wheel = next((root / "whl").glob("rlnas-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return root / "site"


def run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_the_wheel_ships_every_config(installed: Path) -> None:
    shipped = sorted(p.relative_to(installed / "rlnas").as_posix() for p in (installed / "rlnas" / "conf").rglob("*.yaml"))
    source = sorted(p.relative_to(rlnas.REPO_DIR / "rlnas").as_posix() for p in rlnas.CONF_DIR.rglob("*.yaml"))
    assert shipped == source and len(shipped) > 30


def test_installed_commands_run_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    probe = run(installed, tmp_path, sys.executable, "-c",
                "import rlnas, rlnas.spaces as s; print(rlnas.__file__); print(' '.join(s.list_families()))")
    assert probe.returncode == 0, probe.stderr
    where, families = probe.stdout.splitlines()
    assert where.startswith(str(installed)) and "resnet50" in families.split()
    for command in COMMANDS:
        version = run(installed, tmp_path, str(BIN / command), "--version")
        assert version.returncode == 0 and version.stdout.startswith("rlnas "), version.stderr
    composed = run(installed, tmp_path, str(BIN / "rlnas-search"), "experiment=tiny", "--cfg", "job")
    assert composed.returncode == 0 and "name: resnet_tiny" in composed.stdout, composed.stderr[-1500:]
    bad = run(installed, tmp_path, str(BIN / "rlnas-search"), "experiment=tiny", "tau=1.5")
    assert bad.returncode == 2 and "tau=1.5" in bad.stderr and "Traceback" not in bad.stderr
    assert not any(tmp_path.glob("outputs")) and not any(tmp_path.glob("cache"))  # nothing half-written
