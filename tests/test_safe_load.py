"""Nothing rlnas reads runs code (issue 22): a crafted pickle saved as each file rlnas loads
(``model.pt``, ``supernet.pt``, ``last.pt``, ``finetune.pt``, an a0) is refused with one line naming
the file and ``rlnas-convert-checkpoint``, and its payload never runs; files written by the current
code load back; old-format files load the safe way or convert. Real torch, tiny models, tmp_path."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_dataset, tiny_network
from omegaconf import OmegaConf

from rlnas.convert import main as convert_main
from rlnas.export import ExportError, load_exported, read_model_file, save_model
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.spaces import create_supernet
from rlnas.supernet import CheckpointError, load_supernet
from rlnas.supernet.a0 import A0Error, build_a0
from rlnas.supernet.checkpoint import (
    CONVERT_COMMAND,
    FINAL_NAME,
    LAST_NAME,
    atomic_save,
    load_file,
    rng_state,
    set_rng_state,
)
from rlnas.supernet.finetune import FineTune, FineTuneOptions
from rlnas.supernet.train import compose_config, train_supernet
from rlnas.tasks import build_data, get_task

FAMILY = "resnet_tiny"


class RunsCode:
    """Unpickling this opens ``marker`` for writing: the file appears iff the pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def crafted(path: Path, marker: Path) -> Path:
    """A file shaped like rlnas's checkpoints whose loading would run code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "state_dict": {}, "meta": RunsCode(marker), "total": 1}, path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """64 training and 32 validation images (real CIFAR-10 when data/cifar10 exists)."""
    return tiny_dataset(tmp_path_factory, train_limit=64, val_limit=32)


def train_config(out: Path, dataset: dict):
    """The tiny supernet recipe on ``dataset`` (as tests/test_train.py trains it)."""
    data = [f"dataset.{k}={v}" for k, v in dataset.items() if k in ("root", "num_classes", "cache_dir")]
    return compose_config([f"model={FAMILY}", "recipe=tiny", f"output_dir={out}", "threads=1", "log.progress=false",
                           "checkpoint.every_steps=3", "eval.val_images=null", "eval.recal_images=32",
                           "dataset=tiny", "dataset.train_limit=64", "dataset.val_limit=32", *data])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, dataset: dict) -> Path:
    """A training directory written by the current code (``supernet.pt`` and ``last.pt``)."""
    out = tmp_path_factory.mktemp("train")
    train_supernet(train_config(out, dataset))
    return out


def finetune(dataset: dict, out: Path) -> FineTune:
    """A fine-tuning of the tiny network, keeping ``out/finetune.pt``."""
    student, teacher = tiny_network(dataset["num_classes"]), tiny_network(dataset["num_classes"])
    options = FineTuneOptions(epochs=0.5, batch_size=16, checkpoint_every=2, progress=False)
    return FineTune(student, teacher, build_data(dataset, 32), out, options, "f0", seed=1)


# -- crafted files are refused, nothing runs ---------------------------------------------------------------

def load_model_pt(path: Path, dataset: dict) -> None:
    load_exported(crafted(path / "model.pt", path / "marker"))


def load_finalist_weights(path: Path, dataset: dict) -> None:
    read_model_file(crafted(path / "f0" / "model.pt", path / "marker"))


def load_supernet_pt(path: Path, dataset: dict) -> None:
    crafted(path / FINAL_NAME, path / "marker")
    load_supernet(path)  # the training directory: its supernet.pt


def resume_last_pt(path: Path, dataset: dict) -> None:
    crafted(path / "run" / LAST_NAME, path / "marker")
    train_supernet(train_config(path / "run", dataset))


def resume_finetune_pt(path: Path, dataset: dict) -> None:
    crafted(path / "f0" / "finetune.pt", path / "marker")
    finetune(dataset, path / "f0").run()


def init_from_checkpoint(path: Path, dataset: dict) -> None:
    cfg = train_config(path / "run", dataset)
    cfg.init.checkpoint = str(crafted(path / "pretrained.pth", path / "marker"))
    train_supernet(cfg)


def load_a0(path: Path, dataset: dict) -> None:
    build_a0(FAMILY, {"num_classes": dataset["num_classes"]}, crafted(path / "a0.pt", path / "marker"))


LOADERS: dict[str, tuple[Callable[[Path, dict], None], type[Exception], str]] = {
    "model.pt": (load_model_pt, ExportError, "model.pt"),
    "finalist model.pt": (load_finalist_weights, ExportError, "f0/model.pt"),
    "supernet.pt": (load_supernet_pt, CheckpointError, FINAL_NAME),
    "last.pt": (resume_last_pt, CheckpointError, f"run/{LAST_NAME}"),
    "finetune.pt": (resume_finetune_pt, CheckpointError, "f0/finetune.pt"),
    "a0": (load_a0, A0Error, "a0.pt"),
    "init.checkpoint": (init_from_checkpoint, CheckpointError, "pretrained.pth"),
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_file_that_would_run_code_is_refused_in_one_line(name: str, tmp_path: Path, dataset: dict) -> None:
    load, error, file = LOADERS[name]
    with pytest.raises(error) as caught:
        load(tmp_path, dataset)
    message = str(caught.value)
    assert str(tmp_path / file) in message and f"{CONVERT_COMMAND} {tmp_path / file}" in message, message
    assert "\n" not in message and "it holds io.open" in message and "refused" in message
    assert not (tmp_path / "marker").exists(), "the crafted pickle ran"


def test_the_payload_is_live_and_convert_refuses_what_is_not_data(tmp_path: Path) -> None:
    path = crafted(tmp_path / "evil.pt", tmp_path / "marker")
    assert convert_main([str(path), "--out", str(tmp_path / "out.pt")]) == 2  # an open file is not data
    assert (tmp_path / "marker").exists() and not (tmp_path / "out.pt").exists()


# -- what the current code writes loads back ---------------------------------------------------------------

def test_supernet_and_last_pt_written_now_load_back(trained: Path, dataset: dict) -> None:
    supernet, meta = load_supernet(trained)  # verifies the weights hash
    assert meta["family"] == FAMILY and not supernet.training
    last = trained / LAST_NAME
    assert torch.serialization.get_unsafe_globals_in_checkpoint(last) == []  # plain data, no allow-list needed
    state = load_file(last)
    assert state["progress"]["done"] and isinstance(state["config"], dict)
    assert train_supernet(train_config(trained, dataset)) == trained / FINAL_NAME  # resumes: complete


def test_rng_states_round_trip_as_plain_data(tmp_path: Path) -> None:
    atomic_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(load_file(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_finetune_pt_written_now_resumes(tmp_path: Path, dataset: dict) -> None:
    done = finetune(dataset, tmp_path)
    done.run()
    again = finetune(dataset, tmp_path)
    again.run()  # resumed at the end: no step taken
    assert again.step == done.step == done.total
    assert all(torch.equal(v, done.student.state_dict()[k]) for k, v in again.student.state_dict().items())


def test_model_pt_written_now_loads_back(tmp_path: Path, dataset: dict) -> None:
    network = tiny_network(dataset["num_classes"])
    supernet = create_supernet(FAMILY, num_classes=dataset["num_classes"])
    accuracy = AccuracyOracle(supernet, build_data(dataset, 32), tmp_path / "store.sqlite", "test")
    meta = {"family": FAMILY, "kwargs": {"num_classes": dataset["num_classes"]}}
    save_model(network, supernet.space.max_arch(), meta, accuracy, get_task("classification"), tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_exported(tmp_path / "model.pt")(x), network(x))


# -- files of earlier versions -----------------------------------------------------------------------------

def test_an_old_last_pt_with_a_numpy_rng_array_loads_the_safe_way(tmp_path: Path) -> None:
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"rng": old}, tmp_path / LAST_NAME)
    expected = float(np.random.rand())
    set_rng_state(load_file(tmp_path / LAST_NAME)["rng"])
    assert float(np.random.rand()) == expected
    torch.save({"x": np.array([1, "a"], dtype=object)}, tmp_path / "objects.pt")  # not RNG data: refused
    with pytest.raises(CheckpointError, match=CONVERT_COMMAND):
        load_file(tmp_path / "objects.pt")


def test_convert_turns_an_old_supernet_pt_into_one_that_loads(trained: Path, tmp_path: Path) -> None:
    ckpt = torch.load(trained / FINAL_NAME, weights_only=True)
    meta = OmegaConf.create(ckpt["meta"])  # an old-style meta: OmegaConf and NumPy objects
    torch.save({"model": ckpt["model"], "meta": meta, "steps": np.int64(8)}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="omegaconf"):
        load_supernet(tmp_path / "old.pt")
    assert convert_main([str(tmp_path / "old.pt"), "--out", str(tmp_path / FINAL_NAME)]) == 0
    _, converted = load_supernet(tmp_path / FINAL_NAME)  # the weights hash still verifies
    assert converted["checkpoint_id"] == ckpt["meta"]["checkpoint_id"]
    assert torch.load(tmp_path / FINAL_NAME, weights_only=True)["steps"] == 8


def test_the_convert_command_rewrites_a_whole_module_a0_in_place(tmp_path: Path, dataset: dict) -> None:
    network = tiny_network(dataset["num_classes"])
    torch.save(network, tmp_path / "a0.pt")  # torch.save(model): needs the classes to load
    kwargs = {"num_classes": dataset["num_classes"]}
    with pytest.raises(A0Error, match=CONVERT_COMMAND):
        build_a0(FAMILY, kwargs, tmp_path / "a0.pt")
    done = subprocess.run([sys.executable, "-m", "rlnas.convert", str(tmp_path / "a0.pt")], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "weights_only=False" in done.stderr, done.stderr
    a0 = build_a0(FAMILY, kwargs, tmp_path / "a0.pt")
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in a0.state_dict().items())


def test_a_checkpoint_holding_an_object_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\['meta'\]\['when'\]"):
        atomic_save({"meta": {"when": object()}}, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())

