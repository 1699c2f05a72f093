"""A non-editable install works: the wheel carries the configs (Hydra reads them from the
installed package), every family registers itself, the commands run from any directory, and
every config's ``_target_`` (the surrogate oracle's included) needs nothing outside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import rlnas
from rlnas.oracles.surrogate import Surrogate

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


#: run by the installed package, from a directory outside the checkout (argv: the table, the context)
SURROGATE_PROBE = """
import importlib.util, json, sys, types
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf
import rlnas
from rlnas.runsetup import build_surrogate_oracles
from rlnas.spaces import create_supernet

assert importlib.util.find_spec("experiments") is None, "a checkout is on the path"
targets = set()
def walk(node):
    if isinstance(node, dict):
        if "_target_" in node:
            targets.add(node["_target_"])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
for path in rlnas.CONF_DIR.rglob("*.yaml"):
    walk(OmegaConf.to_container(OmegaConf.load(path)))
for target in sorted(targets):
    get_object(target)
with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
    cfg = compose(config_name="config", overrides=["oracle=surrogate", "model=resnet_tiny", f"oracle.table={sys.argv[1]}"])
supernet = create_supernet("resnet_tiny", num_classes=10).eval()
accuracy, latency = build_surrogate_oracles(cfg, supernet, json.loads(sys.argv[2]))
arch = supernet.space.min_arch()
print(json.dumps({"file": rlnas.__file__, "targets": sorted(targets), "acc_int8": accuracy.evaluate(arch).acc_int8,
                  "ratio": latency.measure(types.SimpleNamespace(arch=arch), (1, 3, 32, 32)).ratio}))
"""


def _checkout_targets() -> set[str]:
    targets: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            targets.update([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in rlnas.CONF_DIR.rglob("*.yaml"):
        walk(OmegaConf.to_container(OmegaConf.load(path)))
    return targets


def test_the_surrogate_oracle_runs_from_the_installed_package(installed: Path, tmp_path: Path, supernet,
                                                              make_table) -> None:
    """``oracle=surrogate`` with the wheel alone: no checkout on the path (experiments/ only builds
    tables), the config composes and the oracles answer as they do here."""
    table = make_table(supernet, n=20)
    table.save(tmp_path / "table.json")
    probe = run(installed, tmp_path, sys.executable, "-c", SURROGATE_PROBE, "table.json",
                json.dumps(table.header["context"]))
    assert probe.returncode == 0, probe.stderr[-3000:]
    out = json.loads(probe.stdout.splitlines()[-1])
    assert out["file"].startswith(str(installed))
    assert "rlnas.oracles.surrogate.surrogate_oracles" in out["targets"]
    assert out["targets"] == sorted(_checkout_targets())  # the wheel ships every config the checkout has
    expected = Surrogate(table, supernet, 32).predict(supernet.space.min_arch())
    assert out["acc_int8"] == pytest.approx(expected["acc_int8"])
    assert out["ratio"] == pytest.approx(expected["latency_ratio"])
