"""The Ray backend on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``):
two nodes advertising two device profiles measured in one run, a node killed mid-measurement,
and a seeded random search that gives the same architectures and accuracies as the local backend."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks
from torch import nn

import rlnas
from rlnas.data.loading import write_synthetic_imagefolder
from rlnas.distributed.cluster import device_resource
from rlnas.distributed.device_actor import RemoteLatencyOracle
from rlnas.distributed.finetune_actor import RemoteFineTune
from rlnas.oracles.device import load_profile, runnable_profiles
from rlnas.oracles.ratios import TimingConfig
from rlnas.oracles.store import MeasurementStore
from rlnas.pipeline import run_search
from rlnas.spaces import create_supernet
from rlnas.supernet.a0 import frozen_teacher
from rlnas.supernet.finetune import FineTune, FineTuneOptions
from rlnas.tasks import build_data

pytestmark = pytest.mark.slow
PROFILES = [p for p in runnable_profiles() if p != "host"][:2]
if len(PROFILES) < 2:
    pytest.skip(f"needs two device profiles this host can run, it runs {runnable_profiles()}", allow_module_level=True)
SHAPE = (1, 3, 32, 32)
FAST = TimingConfig(warmup_iters=2, block_iters=5, block_skip=1, min_rounds=3, min_iters=10, min_time_s=0.05,
                    max_time_s=10.0)
# Ray marks a node dead after 5 health checks of 10 s without an answer. Five raylets on a loaded
# 2-core CI machine once missed them (a node just added died before its actor started), so a live
# node may lag for minutes here; a killed one refuses the connection at once and is dead in ~10 s.
LENIENT_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 30_000,
                        "health_check_failure_threshold": 10}


def tiny(width: int = 8) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def cluster():
    """A head without devices and one node per profile (1 CPU each)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,  # serves list_tasks
                                                            "_system_config": LENIENT_HEALTH_CHECK})
    nodes = {p: cluster.add_node(num_cpus=1, resources={device_resource(p): 1}) for p in PROFILES}
    ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def oracle(tmp_path: Path, profile: str, timing: TimingConfig = FAST, **kwargs) -> RemoteLatencyOracle:
    return RemoteLatencyOracle(profile, store=tmp_path / "m.sqlite", cache_dir=tmp_path, reference=lambda: tiny(16),
                               timing=timing, retries=1, node_wait_s=30.0, **kwargs)


def wait_until_timing_on(node) -> None:
    """Poll Ray's task state until a device actor's request runs on ``node``: the IRs are built
    and shipped, the node is measuring (a timing of at least ``min_time_s``). The state API is
    served by the head's dashboard, which a loaded machine may still be starting: a bounded
    number of polls find it unreachable before the test fails."""
    unreachable = 0
    for _ in range(600):
        try:
            running = list_tasks(filters=[("name", "=", "DeviceActor.request"), ("state", "=", "RUNNING")])
        except ConnectionError:  # "Could not read 'dashboard' from GCS": not registered yet
            unreachable += 1
            if unreachable > 30:
                raise
            continue
        if any(task.node_id == node.node_id for task in running):
            return
        time.sleep(0.2)
    raise AssertionError(f"no measurement started on node {node.node_id}")


def test_two_devices_measured_in_one_run(cluster, tmp_path):
    _, nodes = cluster
    results = {}
    for profile in PROFILES:
        lat = oracle(tmp_path, profile)
        results[profile] = lat.measure(lambda: tiny(8), SHAPE, model_key=f"tiny8:{profile}")
        assert results[profile].ok, results[profile].reason
        assert results[profile].host["node_id"] == nodes[profile].node_id  # timed on its device's node
        assert lat.cache_key("k", SHAPE, "int8")["cpu"] == results[profile].host["cpu"]
        again = lat.measure(lambda: tiny(8), SHAPE, model_key=f"tiny8:{profile}")
        assert again.cached and again.latency_ms == results[profile].latency_ms  # the driver's store
        lat.close()
    isas = {p: load_profile(p).effective_isa() for p in PROFILES}
    for profile, result in results.items():  # the kernels of each node's ISA cap ran
        assert result.int8_kernels(), result.kernels
        assert result.isa == isas[profile]
    assert results[PROFILES[0]].kernels != results[PROFILES[1]].kernels


def test_node_killed_mid_measurement(cluster, tmp_path):
    cl, nodes = cluster
    profile = PROFILES[1]
    spare = cl.add_node(num_cpus=1, resources={device_resource(profile): 1})
    slow = TimingConfig(warmup_iters=2, block_iters=5, min_rounds=3, min_iters=10, min_time_s=10.0, max_time_s=30.0)
    lat = oracle(tmp_path, profile, timing=slow)
    first = lat.worker.describe()["node_id"]
    victim = next(n for n in (nodes[profile], spare) if n.node_id == first)
    survivor = spare if victim is nodes[profile] else nodes[profile]
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=lat.measure(lambda: tiny(12), SHAPE, model_key="tiny12")))
    thread.start()
    wait_until_timing_on(victim)  # both IRs built, the node is timing now (for 10 s at least)
    cl.remove_node(victim, allow_graceful=False)
    thread.join(120)
    result = out["r"]
    assert result.ok, result.reason
    assert result.host["node_id"] == survivor.node_id  # retried on the other node of the device
    nodes[profile] = survivor
    lat.close()  # its actor holds the survivor's one unit of the device
    # the last node of the device goes too: a failed measurement with the reason, not cached
    lat2 = oracle(tmp_path, profile, timing=slow)
    lat2.worker.describe()  # on the survivor, once the first actor's unit is free again
    lat2.worker.node_wait_s = 5.0  # then no other node will come
    thread = threading.Thread(target=lambda: out.update(r=lat2.measure(lambda: tiny(14), SHAPE, model_key="tiny14")))
    thread.start()
    wait_until_timing_on(survivor)
    cl.remove_node(survivor, allow_graceful=False)
    thread.join(120)
    lost = out["r"]
    lat2.close()
    assert not lost.ok and lost.transient and device_resource(profile) in lost.reason
    store = MeasurementStore(tmp_path / "m.sqlite")
    assert not any(r["model_key"] == "tiny14" for r in store.records("latency"))  # not cached: a later run retries
    nodes[profile] = cl.add_node(num_cpus=1, resources={device_resource(profile): 1})


def search_config(root: Path, backend: list[str]) -> object:
    overrides = ["experiment=tiny", f"device={PROFILES[1]}", "agent=random", "budget=4", "seed=3", "threads=1",
                 "finalists.k=0", "export.enabled=false", "logging.progress=false", "logging.tensorboard=false",
                 f"supernet.dir={root / 'supernets'}", f"cache_dir={root / backend[0].split('=')[1]}",
                 f"run_dir={root / backend[0].split('=')[1] / 'run'}", *backend]
    if not (rlnas.REPO_DIR / "data" / "cifar10" / "train").is_dir():
        pytest.skip("needs data/cifar10 (make data)")
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_seeded_random_search_matches_the_local_backend(cluster, tmp_path):
    local = search_config(tmp_path, ["backend=local"])
    remote = search_config(tmp_path, ["backend=ray", f"ray.address={cluster[0].address}",
                                      "backend.accuracy_workers=2", "backend.parallelism=2"])
    runs = {}
    for name, cfg in (("local", local), ("ray", remote)):
        summary = run_search(cfg, Path(cfg.run_dir))
        assert summary["unique_evaluations"] == 4
        lines = [json.loads(x) for x in (Path(cfg.run_dir) / "evaluations.jsonl").read_text().splitlines()]
        runs[name] = {json.dumps(r["measurement"]["arch"], sort_keys=True): r["measurement"]
                      for r in lines if r["kind"] == "candidate"}
    assert runs["local"].keys() == runs["ray"].keys()  # the same architectures
    for arch, m in runs["local"].items():
        r = runs["ray"][arch]
        assert r["acc_int8"] == m["acc_int8"]  # same images, calibration and recalibration
        assert r["latency_ratio"] == pytest.approx(m["latency_ratio"], rel=0.35)  # within timing noise
    store = MeasurementStore(tmp_path / "ray" / "measurements.sqlite")
    timed_on = {r["host"]["node_id"] for r in store.records("latency")}
    assert timed_on and cluster[0].head_node.node_id not in timed_on  # on the device's node, not the head
    assert ray.is_initialized()  # the test's connection survives the run (the backend did not own it)


def _candidates(run_dir: Path) -> list[dict]:
    path = run_dir / "evaluations.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
    return [r for r in map(json.loads, lines) if r["kind"] == "candidate"]


def _alive_actors_of(job_ids: set[str]) -> list:
    """Alive actors of jobs other than ``job_ids`` (the test's own connection)."""
    return [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.job_id not in job_ids]


def test_driver_killed_with_sigkill_resumes(cluster, tmp_path):
    """kill -9 of a driver on a Ray cluster: its actors die with it (the device is free again), and
    the same command resumes from the run log without measuring anything twice."""
    cfg = search_config(tmp_path, ["backend=ray", f"ray.address={cluster[0].address}", "backend.accuracy_workers=1"])
    args = [str(Path(sys.executable).parent / "rlnas-search"), "experiment=tiny", f"device={PROFILES[1]}",
            "agent=random", "budget=4", "seed=5", "threads=1", "finalists.k=0", "export.enabled=false",
            "logging.progress=false", "logging.tensorboard=false", f"supernet.dir={cfg.supernet.dir}",
            f"cache_dir={cfg.cache_dir}", f"run_dir={cfg.run_dir}", "backend=ray",
            f"ray.address={cluster[0].address}", "backend.accuracy_workers=1"]
    run_dir = Path(cfg.run_dir)
    ours = {ray.get_runtime_context().get_job_id()}
    driver = subprocess.Popen(args, cwd=rlnas.REPO_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while len(_candidates(run_dir)) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    assert _alive_actors_of(ours), "the driver's actors run on the cluster"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    before = {json.dumps(r["measurement"]["arch"], sort_keys=True) for r in _candidates(run_dir)}
    deadline = time.monotonic() + 60
    while _alive_actors_of(ours) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert not _alive_actors_of(ours), "a killed driver's actors must not keep the device"
    rerun = subprocess.run(args, cwd=rlnas.REPO_DIR, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = [json.dumps(r["measurement"]["arch"], sort_keys=True) for r in _candidates(run_dir)]
    assert len(after) == 4 and len(set(after)) == 4  # the budget, each network measured once
    assert before <= set(after) and len(before) >= 2  # what was measured before the kill is kept


class Killed(Exception):
    """Stands for the driver's death right after it wrote a fine-tuning checkpoint."""


class _KillAfterFirstChunk:
    """A TensorBoard writer whose driver dies once the first chunk of steps is logged."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if step >= 2:
            raise Killed


def _finetune_case(tmp_path: Path, train_per_class: int) -> tuple[dict, nn.Module, nn.Module, FineTuneOptions]:
    """A synthetic 4-class dataset config, a tiny teacher (maximal subnet) and student (smallest),
    and 1 epoch of fine-tuning in steps of 8 images, a checkpoint every 2."""
    root = write_synthetic_imagefolder(tmp_path / "img", {"train": train_per_class, "test": 4}, num_classes=4)
    dataset = {"name": "synthetic", "root": str(root), "train_split": "train", "val_split": "test",
               "num_classes": 4, "store_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
               "cache_dir": str(tmp_path / "cache")}
    torch.manual_seed(0)
    supernet = create_supernet("resnet_tiny", num_classes=4).eval()
    teacher = frozen_teacher(supernet.extract(supernet.space.max_arch()))
    student = supernet.extract(supernet.space.min_arch())
    options = FineTuneOptions(epochs=1.0, batch_size=8, checkpoint_every=2, lr=0.05, progress=False)
    return dataset, teacher, student, options


def test_finetune_on_a_node_resumes_from_the_drivers_checkpoint(cluster, tmp_path):
    """A finalist fine-tuned by an actor (images built on its node) matches the same fine-tuning
    run locally, and a driver that dies after a checkpoint resumes it to the same weights."""
    dataset, teacher, student, options = _finetune_case(tmp_path, train_per_class=24)  # 12 steps
    torch.set_num_threads(1)
    local = FineTune(copy.deepcopy(student), teacher, build_data(OmegaConf.create(dataset), 32), None, options,
                     "f0", seed=1).run().state_dict()
    remote = RemoteFineTune(copy.deepcopy(student), teacher, dataset, 32, tmp_path / "a", options, "f0", seed=1).run()
    for k, v in remote.state_dict().items():
        assert torch.allclose(v.float(), local[k].float(), atol=1e-5), k  # the same run, on a node
    with pytest.raises(Killed):
        RemoteFineTune(copy.deepcopy(student), teacher, dataset, 32, tmp_path / "b", options, "f0", seed=1,
                       writer=_KillAfterFirstChunk()).run()
    assert (tmp_path / "b" / "finetune.pt").is_file()  # written by the driver, not the node
    resumed = RemoteFineTune(copy.deepcopy(student), teacher, dataset, 32, tmp_path / "b", options, "f0", seed=1).run()
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, remote.state_dict()[k]), k


class _NodeKiller:
    """A TensorBoard writer that removes the node of the fine-tuning actor of ``tuner`` once the
    first chunk (and so the driver's first checkpoint) is written, and records the steps it is given."""

    def __init__(self, cluster: Cluster, nodes: list) -> None:
        self.cluster, self.nodes, self.steps, self.killed, self.tuner = cluster, nodes, [], None, None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.steps.append(step)
        if step == 2 and self.killed is None:
            self.killed = next(n for n in self.nodes if n.node_id == self.tuner.nodes[-1])
            self.cluster.remove_node(self.killed, allow_graceful=False)
            for _ in range(300):  # until the cluster knows: else the dying actor may finish the last steps
                if not any(n["NodeID"] == self.killed.node_id and n["Alive"] for n in ray.nodes()):
                    break
                time.sleep(0.1)


def test_finetune_node_lost_mid_run_resumes_on_another_node(cluster, tmp_path):
    """The node fine-tuning a finalist dies after a checkpoint: a new actor on another node that
    advertises the fine-tuning resource resumes from the driver's checkpoint, to the same weights."""
    cl, _ = cluster
    trainers = [cl.add_node(num_cpus=1, resources={"rlnas/trainer": 1}) for _ in range(2)]
    dataset, teacher, student, options = _finetune_case(tmp_path, train_per_class=8)  # 4 steps
    pinned = {"resources": {"rlnas/trainer": 1}, "retries": 1}
    whole = RemoteFineTune(copy.deepcopy(student), teacher, dataset, 32, tmp_path / "a", options, "f0", seed=1,
                           **pinned).run()
    killer = _NodeKiller(cl, trainers)
    tuner = killer.tuner = RemoteFineTune(copy.deepcopy(student), teacher, dataset, 32, tmp_path / "b", options,
                                          "f0", seed=1, writer=killer, **pinned)
    resumed = tuner.run()
    steps = killer.steps
    assert killer.killed is not None and steps == list(range(1, len(steps) + 1)) and len(steps) > 2  # none again
    assert len(tuner.nodes) == 2 and tuner.nodes[0] == killer.killed.node_id != tuner.nodes[1]  # another node took over
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, whole.state_dict()[k]), k
    survivor = next(n for n in trainers if n is not killer.killed)
    cl.remove_node(survivor, allow_graceful=False)
