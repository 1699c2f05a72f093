"""Every console command in one place: ``rlnas-search``, ``rlnas-train-supernet``, ``rlnas-export``,
``rlnas-latency`` and ``rlnas-profiles``.

Each one answers ``--version``, has a ``--help`` that says what it does and shows its main options
(Hydra's ``hydra/help`` for the Hydra apps), validates its config up front (:mod:`rlnas.validate`),
and turns bad input into one line naming what is wrong and what is valid, with exit code 2 and no
traceback. In a Hydra multirun a job whose setup fails logs that line and the sweep goes on; the
command still exits 2 at the end when any job failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import rlnas
from rlnas.data import DatasetError
from rlnas.export import ExportError
from rlnas.export import main as export_main
from rlnas.oracles import latency_app, profiles_app
from rlnas.oracles.device import DeviceProfileError
from rlnas.pipeline import run_search
from rlnas.runsetup import SetupError
from rlnas.supernet.a0 import A0Error
from rlnas.supernet.checkpoint import CheckpointError
from rlnas.tasks import TaskError, get_task
from rlnas.validate import ConfigError, check_search, check_train

log = logging.getLogger("rlnas")

#: what a user can get wrong; anything else is a bug and keeps its traceback
USER_ERRORS = (ConfigError, SetupError, DatasetError, DeviceProfileError, A0Error, CheckpointError, TaskError,
               ExportError, FileNotFoundError, ValueError)
_failed_jobs: list[str] = []


def _version_requested() -> bool:
    if "--version" in sys.argv[1:]:
        print(f"rlnas {rlnas.__version__}")
        return True
    return False


def one_line_errors(prog: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[DictConfig], Any]]:
    """Wrap a Hydra task function: a user error becomes one line (exit 2 in a single run; in a
    multirun the job is marked failed and the sweep goes on)."""

    def wrap(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            try:
                return fn(cfg)
            except USER_ERRORS as err:
                multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
                if not multirun:
                    _remove_empty_run_dir()
                    print(f"{prog}: {err}", file=sys.stderr)
                    sys.exit(2)
                job = HydraConfig.get().job
                log.error("%s job %s (%s) failed: %s", prog, job.num, job.override_dirname, err)
                _failed_jobs.append(str(job.num))
                return None

        return task

    return wrap


def _remove_empty_run_dir() -> None:
    """Hydra writes ``.hydra/`` and the job log before the task runs: a run refused at once leaves
    no directory behind (one holding anything else, e.g. a run to resume, is kept), nor the empty
    parents Hydra made for it under the working directory."""
    if not HydraConfig.initialized():
        return
    out = Path(HydraConfig.get().runtime.output_dir).resolve()
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for parent in out.parents:
            if parent == cwd or cwd not in parent.parents:
                break
            with contextlib.suppress(OSError):  # not empty: something else lives there
                parent.rmdir()


def _finish(prog: str) -> None:
    if _failed_jobs:
        print(f"{prog}: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)} (see their logs)", file=sys.stderr)
        sys.exit(2)


# -- rlnas-search ------------------------------------------------------------------------------------


@hydra.main(config_path=str(rlnas.CONF_DIR), config_name="config", version_base="1.3")
@one_line_errors("rlnas-search")
def _search(cfg: DictConfig) -> float:
    summary = run_search(check_search(cfg), Path(HydraConfig.get().runtime.output_dir))
    best = summary["best"]
    return float(best["latency_ratio"]) if best else 1.0  # for Hydra sweepers: lower is better


def search() -> None:
    """``rlnas-search``: the search end to end (see ``rlnas-search --help``)."""
    if not _version_requested():
        _search()
        _finish("rlnas-search")


# -- rlnas-train-supernet ----------------------------------------------------------------------------


@hydra.main(config_path=str(rlnas.CONF_DIR), config_name="train_supernet", version_base="1.3")
@one_line_errors("rlnas-train-supernet")
def _train(cfg: DictConfig) -> None:
    trainer = get_task(cfg.dataset.get("task")).trainer(check_train(cfg))
    print(trainer.run())


def train_supernet() -> None:
    """``rlnas-train-supernet``: train (or resume) a supernet with the trainer of the dataset's task."""
    if not _version_requested():
        _train()
        _finish("rlnas-train-supernet")


# -- the others ---------------------------------------------------------------------------------------


def export() -> None:
    """``rlnas-export run=<dir> [overrides]``."""
    if not _version_requested():
        sys.exit(export_main())


@hydra.main(version_base="1.3", config_path=str(rlnas.CONF_DIR), config_name="latency")
@one_line_errors("rlnas-latency")
def _latency(cfg: DictConfig) -> None:
    latency_app.app_body(cfg)


def latency() -> None:
    """``rlnas-latency``: torch FP32 vs OpenVINO FP32/FP16/INT8 of torchvision models per profile."""
    if not _version_requested():
        _latency()
        _finish("rlnas-latency")


def profiles() -> None:
    """``rlnas-profiles``: which device profiles this host can run, and why not the others."""
    if not _version_requested():
        sys.exit(profiles_app.main())
