"""Shared test setup: tiny models run faster on one thread than fighting over two cores; a tiny
supernet, and surrogate tables whose targets are a known function of its real layers."""

import atexit
import os
import sys

import numpy as np
import pytest
import torch

from rlnas.arch import Arch
from rlnas.oracles.surrogate import BenchmarkTable, layer_features
from rlnas.spaces import create_supernet


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--skip-interpreter-teardown", action="store_true",
                     help="after the report, run the exit handlers (Ray, OpenVINO) and exit with pytest's status "
                          "without the interpreter's teardown of native objects (make test)")


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Once pytest has reported, the verdict is final: CI once saw '730 passed' and then a
    segmentation fault in the interpreter's teardown (torch, OpenVINO, NNCF, Ray freeing native
    objects in no set order). The exit handlers still run; only that teardown is skipped."""
    if config.getoption("--skip-interpreter-teardown") and _exit_status:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def supernet():
    return create_supernet("resnet_tiny", num_classes=10).eval()


@pytest.fixture(scope="session")
def make_table():
    """``make_table(supernet, n=60, seed=0)``: a :class:`BenchmarkTable` of n distinct networks."""
    return _make_table


RES = 32
SYNTHETIC_CONTEXT = {"model": "tiny", "checkpoint_id": "c0", "dataset": "d", "accuracy": {}, "device": {"name": "host"},
                     "a0": None}


def true_latency(supernet, arch: Arch) -> float:
    """An additive ground truth: per-group cost per MMAC and per layer, plus a constant."""
    feats = layer_features(supernet, arch, RES)
    cost = {"conv1x1": 0.020, "convkxk": 0.030, "fc": 0.05, "grouped": 0.04}
    return 0.1 + sum(v * (cost[k.split("/")[1]] if k.endswith("mmacs") else 0.01) for k, v in feats.items())


def true_accuracy(supernet, arch: Arch) -> float:
    """Non-additive: saturating in the total MACs."""
    macs = sum(v for k, v in layer_features(supernet, arch, RES).items() if k.endswith("mmacs"))
    return 0.9 - 0.3 * np.exp(-macs / 3.0)


def _make_table(supernet, n: int = 60, seed: int = 0) -> BenchmarkTable:
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < n:
        arch = supernet.space.sample(rng)
        key = supernet.network_key(arch)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"arch": arch.to_dict(), "network": key, "latency_ratio": true_latency(supernet, arch),
                     "acc_int8": true_accuracy(supernet, arch)})
    reference = float(np.median([r["acc_int8"] for r in rows])) / 0.99  # half the table is feasible
    header = {"context": SYNTHETIC_CONTEXT, "reference": {"acc_fp32": reference, "acc_int8": reference}, "a0_latency_ms": 2.0,
              "tau": 0.99, "resolution": RES, "host": {"cpu": "test", "flags": []}}
    return BenchmarkTable(header, rows)
