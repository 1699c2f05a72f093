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
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import rlnas
from rlnas.errors import UserError, user_error_in
from rlnas.export import USAGE as EXPORT_USAGE
from rlnas.export import export_command
from rlnas.oracles import latency_app, profiles_app
from rlnas.pipeline import run_search
from rlnas.tasks import get_task
from rlnas.validate import check_search, check_train, one_line

log = logging.getLogger("rlnas")

_failed_jobs: list[str] = []
#: Hydra raises its errors instead of printing them while this environment variable is set
FULL_ERROR = "HYDRA_FULL_ERROR"


def _version_requested() -> bool:
    if "--version" in sys.argv[1:]:
        print(f"rlnas {rlnas.__version__}")
        return True
    return False


@contextlib.contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Hydra prints an error of its own (a config that does not compose: a value of the wrong type,
    an unknown key or group option) over several lines and exits 1; with ``HYDRA_FULL_ERROR`` it
    raises it instead, for :func:`console` to say in one line. (An error of the task itself then
    keeps its whole traceback.)"""
    previous = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = previous


def console(prog: str) -> Callable[[Callable[[], Any]], Callable[[], None]]:
    """Wrap a console entry point: ``--version``; a reader that closes the pipe early
    (``rlnas-search --help | head``) ends it quietly; a :class:`~rlnas.errors.UserError` raised
    before the app runs, or a config Hydra cannot compose from the overrides, is one line and
    exit 2."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], None]:
        @functools.wraps(fn)
        def entry() -> None:
            if _version_requested():
                return
            try:
                with hydra_errors_raised():
                    fn()
            except BrokenPipeError:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
                sys.exit(1)
            except UserError as err:
                print(f"{prog}: {err}", file=sys.stderr)
                sys.exit(2)
            except (ConfigCompositionException, OverrideParseException) as err:
                print(f"{prog}: {one_line(err)}", file=sys.stderr)
                sys.exit(2)

        return entry

    return wrap


def refuse_file_as_run_dir(args: list[str]) -> None:
    """Hydra would make ``run_dir`` (or ``output_dir``) with a traceback when a file is there."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") in ("run_dir", "output_dir", "hydra.run.dir") and value and Path(value).is_file():
            raise UserError(f"{key}={value} is a file; give a directory (a new one, or a run to resume)")


def one_line_errors(prog: str, own_parents: bool = True
                    ) -> Callable[[Callable[[DictConfig], Any]], Callable[[DictConfig], Any]]:
    """Wrap a Hydra task function: a user error becomes one line (exit 2 in a single run; in a
    multirun the job is marked failed and the sweep goes on). ``own_parents``: the empty parents
    of the run directory were made by Hydra for this run (not so for ``rlnas-export``, whose
    directory lives in the user's run)."""

    def wrap(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            try:
                return fn(cfg)
            except Exception as raised:
                err = user_error_in(raised)
                if err is None:
                    raise
                multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
                if not multirun:
                    _remove_empty_run_dir(own_parents)
                    print(f"{prog}: {err}", file=sys.stderr)
                    sys.exit(2)
                job = HydraConfig.get().job
                log.error("%s job %s (%s) failed: %s", prog, job.num, job.override_dirname, err)
                _failed_jobs.append(str(job.num))
                return None

        return task

    return wrap


def _remove_empty_run_dir(own_parents: bool = True) -> None:
    """Hydra writes ``.hydra/`` and the job log before the task runs: a run refused at once leaves
    no directory behind (one holding anything else, e.g. a run to resume, is kept), nor the empty
    parents Hydra made for it under the working directory."""
    if not HydraConfig.initialized():
        return
    out = Path(HydraConfig.get().runtime.output_dir).resolve()
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for parent in out.parents if own_parents else ():
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


@console("rlnas-search")
def search() -> None:
    """``rlnas-search``: the search end to end (see ``rlnas-search --help``)."""
    refuse_file_as_run_dir(sys.argv[1:])
    _search()
    _finish("rlnas-search")


# -- rlnas-train-supernet ----------------------------------------------------------------------------


@hydra.main(config_path=str(rlnas.CONF_DIR), config_name="train_supernet", version_base="1.3")
@one_line_errors("rlnas-train-supernet")
def _train(cfg: DictConfig) -> None:
    trainer = get_task(cfg.dataset.get("task")).trainer(check_train(cfg))
    print(trainer.run())


@console("rlnas-train-supernet")
def train_supernet() -> None:
    """``rlnas-train-supernet``: train (or resume) a supernet with the trainer of the dataset's task."""
    refuse_file_as_run_dir(sys.argv[1:])
    _train()
    _finish("rlnas-train-supernet")


# -- the others ---------------------------------------------------------------------------------------


@hydra.main(config_path=str(rlnas.CONF_DIR), config_name="export", version_base="1.3")
@one_line_errors("rlnas-export", own_parents=False)
def _export(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        raise UserError(EXPORT_USAGE)
    overrides = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("run=")]
    summary = export_command(Path(cfg.run), overrides)
    print((Path(summary["out_dir"]) / "report.md").read_text())


@console("rlnas-export")
def export() -> None:
    """``rlnas-export run=<dir> [overrides]``: the artefacts of a finished search run, again."""
    args = sys.argv[1:]
    runs = [a.split("=", 1)[1] for a in args if a.startswith("run=")]
    if not runs and not {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info"} & set(args):
        raise UserError(EXPORT_USAGE)
    if runs and not Path(runs[0]).is_dir():  # before Hydra makes <run>/export
        raise UserError(f"run directory {runs[0]} does not exist; search first: `rlnas-search run_dir={runs[0]}`")
    _export()
    _finish("rlnas-export")


@hydra.main(version_base="1.3", config_path=str(rlnas.CONF_DIR), config_name="latency")
@one_line_errors("rlnas-latency")
def _latency(cfg: DictConfig) -> None:
    latency_app.app_body(cfg)


@console("rlnas-latency")
def latency() -> None:
    """``rlnas-latency``: torch FP32 vs OpenVINO FP32/FP16/INT8 of torchvision models per profile."""
    _latency()
    _finish("rlnas-latency")


@console("rlnas-profiles")
def profiles() -> None:
    """``rlnas-profiles``: which device profiles this host can run, and why not the others."""
    sys.exit(profiles_app.main())
