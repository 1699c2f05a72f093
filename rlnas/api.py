"""The Python API: the commands as functions, with Hydra overrides as arguments.

    from rlnas.api import search, export, train_supernet
    summary = search("experiment=quick", budget=10, device="goldmont_sse42")
    report = export(summary["run_dir"], "finalists.k=1")
    path = train_supernet("model=resnet_tiny", recipe="tiny")

Keyword arguments are overrides too (``budget=10`` is ``"budget=10"``; use strings for dotted
keys). Every config is validated as the commands validate it (:class:`rlnas.validate.ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import rlnas
from rlnas.export import export_command
from rlnas.pipeline import run_search
from rlnas.tasks import get_task
from rlnas.validate import check_search, check_train


def _overrides(args: tuple[str, ...], values: dict[str, Any]) -> list[str]:
    return [*args, *(f"{k}={v}" for k, v in values.items())]


def compose_search(*overrides: str, **values: Any) -> DictConfig:
    """The ``rlnas-search`` config with overrides, validated."""
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=_overrides(overrides, values))
    return check_search(cfg)


def search(*overrides: str, **values: Any) -> dict[str, Any]:
    """Run a search (resuming what ``run_dir`` holds); returns its summary (``run_dir``, ``best``,
    ``baseline``, ``export``...)."""
    cfg = compose_search(*overrides, **values)
    run_dir = Path(cfg.run_dir)
    cfg.run_dir = str(run_dir)  # resolved once: the saved config names this run
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what rlnas-export and export() read, as the CLI saves
    return run_search(cfg, run_dir)


def export(run_dir: str | Path, *overrides: str, **values: Any) -> dict[str, Any]:
    """Export (again) the run in ``run_dir``, its saved config with ``overrides``; returns the report."""
    return export_command(Path(run_dir), _overrides(overrides, values))


def train_supernet(*overrides: str, **values: Any) -> Path:
    """Train (or resume) a supernet; returns the path of ``supernet.pt``."""
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = check_train(compose(config_name="train_supernet", overrides=_overrides(overrides, values)))
    return get_task(cfg.dataset.get("task")).trainer(cfg).run()
