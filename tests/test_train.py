"""Supernet training: resume after a kill continues exactly, checkpoints, recipe mechanics, CLI."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from rlnas.errors import ConfigError
from rlnas.spaces import create_supernet
from rlnas.supernet import CheckpointError, load_supernet
from rlnas.supernet.checkpoint import LAST_NAME, atomic_save, load_file
from rlnas.supernet.recipe import Phase, Recipe, phase_space, sandwich
from rlnas.supernet.train import compose_config, resolve_device, to_device, train_supernet

REPO = Path(__file__).resolve().parent.parent


class Killed(Exception):
    """Stands for SIGKILL: raised after a step, so nothing after the last checkpoint survives."""


@pytest.fixture(scope="module")
def data_overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """128 real CIFAR-10 training images when data/cifar10 exists, else a generated ImageFolder."""
    cache = tmp_path_factory.mktemp("cache")
    common = ["dataset=tiny", "dataset.train_limit=128", "dataset.val_limit=64", f"dataset.cache_dir={cache}"]
    if (REPO / "data" / "cifar10" / "train").is_dir():
        return common
    from rlnas.data.loading import write_synthetic_imagefolder

    root = write_synthetic_imagefolder(tmp_path_factory.mktemp("tiny") / "root", {"train": 32, "test": 16})
    return [*common, f"dataset.root={root}", "dataset.num_classes=4"]


def config(out: Path, data_overrides: list[str], *extra: str):
    return compose_config(["model=resnet_tiny", "recipe=tiny", f"output_dir={out}", "threads=1",
                           "log.progress=false", "checkpoint.every_steps=3", "eval.val_images=null",
                           "eval.recal_images=32", *data_overrides, *extra])


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)["model"]


def test_resume_after_kill_continues_where_it_stopped(tmp_path: Path, data_overrides: list[str]) -> None:
    # tiny recipe: 2 phases x 1 epoch x 4 steps of 32 images; checkpoints every 3 steps and per epoch
    reference = train_supernet(config(tmp_path / "a", data_overrides))

    steps: list[int] = []

    def kill_at_7(trainer) -> None:
        steps.append(trainer.progress.global_step)
        if trainer.progress.global_step == 7:
            raise Killed

    with pytest.raises(Killed):
        train_supernet(config(tmp_path / "b", data_overrides), on_step=kill_at_7)
    saved = load_file(tmp_path / "b" / LAST_NAME)
    # last checkpoint: step 6 = mid-epoch 2, after the phase-2 channel sort, with optimizer state
    assert saved["progress"]["global_step"] == 6 and saved["progress"]["epoch"] == 1
    assert saved["progress"]["step_in_epoch"] == 2 and saved["progress"]["sorted_phases"] == [1]
    assert saved["optimizer"]["state"], "momentum buffers must be checkpointed"
    assert saved["scheduler"]["last_epoch"] == 6

    resumed_steps: list[int] = []
    resumed = train_supernet(config(tmp_path / "b", data_overrides),
                             on_step=lambda t: resumed_steps.append(t.progress.global_step))
    assert steps == [1, 2, 3, 4, 5, 6, 7] and resumed_steps == [7, 8]  # nothing repeated or skipped
    a, b = state_of(reference), state_of(resumed)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    _, meta_a = load_supernet(reference)
    _, meta_b = load_supernet(resumed)
    assert meta_a["steps"] == meta_b["steps"] == 8


def test_finished_run_returns_at_once_and_refuses_other_config(tmp_path: Path, data_overrides: list[str]) -> None:
    out = tmp_path / "run"
    first = train_supernet(config(out, data_overrides))
    calls: list[int] = []
    assert train_supernet(config(out, data_overrides), on_step=lambda t: calls.append(1)) == first
    assert not calls
    with pytest.raises(CheckpointError, match="another config.*recipe.lr"):
        train_supernet(config(out, data_overrides, "recipe.lr=0.3"))


def _as_saved_before_the_schema(fingerprint: dict) -> dict:
    """A fingerprint as ``last.pt`` held it before the config was typed: the recipe without the
    keys its YAML left to the dataclass's defaults (``teacher``; a phase's ``num_random``,
    ``warmup``... where at their default)."""
    defaults = {f.name: f.default for f in fields(Phase)}
    recipe = {k: v for k, v in fingerprint["recipe"].items() if k != "teacher"}
    recipe["phases"] = [{k: v for k, v in phase.items() if k in ("name", "epochs", "elastic") or v != defaults[k]}
                        for phase in recipe["phases"]]
    return {**fingerprint, "recipe": recipe}


def test_a_run_saved_before_the_schema_resumes(tmp_path: Path, data_overrides: list[str]) -> None:
    """A run whose ``last.pt`` holds a plain fingerprint lacking keys that have defaults now (a run
    killed before this rlnas, e.g. a long a0 training) resumes: both sides are typed by the schema.
    A changed value still refuses it."""
    out = tmp_path / "old"

    def kill_at_7(trainer) -> None:
        if trainer.progress.global_step == 7:
            raise Killed

    with pytest.raises(Killed):
        train_supernet(config(out, data_overrides), on_step=kill_at_7)
    state = load_file(out / LAST_NAME)
    old = _as_saved_before_the_schema(state["fingerprint"])
    assert "teacher" not in old["recipe"] and "num_random" not in old["recipe"]["phases"][0]
    atomic_save({**state, "fingerprint": old}, out / LAST_NAME)
    with pytest.raises(CheckpointError, match="another config.*recipe.lr"):
        train_supernet(config(out, data_overrides, "recipe.lr=0.3"))
    steps: list[int] = []
    path = train_supernet(config(out, data_overrides), on_step=lambda t: steps.append(t.progress.global_step))
    assert steps == [7, 8] and load_supernet(path)[1]["completed"]


def test_supernet_checkpoint_meta_and_hash(tmp_path: Path, data_overrides: list[str]) -> None:
    path = train_supernet(config(tmp_path / "m", data_overrides, "recipe.phases=[{name: all, epochs: 1, "
                                 "elastic: [depth, width, expand]}]"))
    supernet, meta = load_supernet(path.parent)
    assert meta["family"] == "resnet_tiny" and meta["resolution"] == 32 and meta["completed"]
    assert len(meta["checkpoint_id"]) == 16 and set(meta["final"]) == {"val_acc_max", "val_acc_min"}
    assert meta["dataset"]["train_images"] == 128 and supernet.space.family == "resnet_tiny"
    assert meta["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = torch.load(path, weights_only=False)
    ckpt["model"]["fc.bias"] += 1
    torch.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="hash"):
        load_supernet(tmp_path / "tampered.pt")


def test_tensorboard_scalars(tmp_path: Path, data_overrides: list[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_supernet(config(tmp_path / "tb", data_overrides))
    acc = EventAccumulator(str(tmp_path / "tb" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_max", "train/loss_min", "train/loss_random", "train/lr", "train/img_per_s",
            "train/val_acc_max", "train/val_acc_min"} <= tags


def test_recipe_schedule_phases_and_sandwich() -> None:
    recipe = Recipe("r", (Phase("max", 2), Phase("all", 1, ("depth", "width", "expand"), lr_scale=0.5)),
                    warmup=0.25, final_lr=0.0)
    f = [recipe.lr_factor(s, 4) for s in range(12)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[7] < 0.1  # warm-up 2 steps, cosine
    assert max(f[8:]) == pytest.approx(0.5)  # the second phase restarts at half the peak
    assert recipe.phase_at(1) == 0 and recipe.phase_at(2) == 1
    space = create_supernet("resnet_tiny").space
    fixed = phase_space(space, recipe.phases[0])
    assert fixed.max_arch() == fixed.min_arch() == space.max_arch()
    assert [k for k, _ in sandwich(fixed, 2, np.random.default_rng(0))] == ["max"]
    full = sandwich(phase_space(space, recipe.phases[1]), 2, np.random.default_rng(0))
    assert [k for k, _ in full] == ["max", "min", "random", "random"]
    assert full[1][1] == space.min_arch() and all(space.contains(a) for _, a in full)
    depth_only = phase_space(space, Phase("d", 1, ("depth",)))
    assert set(depth_only.width_choices) == {space.width_choices[-1]}
    with pytest.raises(ConfigError, match=r"^elastic=\('kernel',\) is not valid: elastic must be a list of depth"):
        Phase("x", 1, ("kernel",))


def test_console_script_runs(tmp_path: Path, data_overrides: list[str]) -> None:
    out = tmp_path / "cli"
    cmd = [str(Path(sys.executable).parent / "rlnas-train-supernet"), "model=resnet_tiny", "recipe=tiny", f"output_dir={out}",
           "threads=1", "log.progress=false", "eval.recal_images=16", "eval.val_images=16",
           "recipe.phases=[{name: all, epochs: 1, elastic: [depth]}]", *data_overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "supernet.pt").is_file() and (out / "last.pt").is_file()
    assert str(out / "supernet.pt") in proc.stdout


def test_init_from_a_local_checkpoint(tmp_path: Path, data_overrides: list[str]) -> None:
    torch.manual_seed(123)
    donor = create_supernet("resnet_tiny", num_classes=7).state_dict()  # classifier of another size
    torch.save(donor, tmp_path / "pretrained.pth")
    path = train_supernet(config(tmp_path / "init", data_overrides, f"init.checkpoint={tmp_path / 'pretrained.pth'}",
                                 "recipe.lr=0.0", "recipe.phases=[{name: max, epochs: 1}]"))
    loaded = state_of(path)
    assert torch.equal(loaded["conv1.weight"], donor["conv1.weight"])
    assert torch.equal(loaded["layer2.0.bn3.weight"], donor["layer2.0.bn3.weight"])
    assert loaded["fc.weight"].shape[0] != 7
    with pytest.raises(CheckpointError, match="init.checkpoint"):
        train_supernet(config(tmp_path / "init2", data_overrides, "init.checkpoint=/nonexistent.pth"))


def test_zero_init_residual_on_fresh_start(tmp_path: Path, data_overrides: list[str]) -> None:
    path = train_supernet(config(tmp_path / "z", data_overrides, "recipe.lr=0.0",
                                 "recipe.phases=[{name: max, epochs: 1}]"))
    assert float(state_of(path)["layer1.0.bn3.weight"].abs().sum()) == 0.0


def test_device_choice_and_batches_on_it() -> None:
    """accelerator=auto takes a CUDA GPU where torch sees one; a trainer that cannot use one (the
    detector's) stays on the CPU; asking for a GPU the host lacks is one clear error."""
    assert resolve_device("auto", ("cpu",)) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="accelerator=.tpu."):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    targets = [{"boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.long)}]
    moved = to_device((torch.ones(3), targets), torch.device("cpu"))
    assert torch.equal(moved[0], torch.ones(3)) and torch.equal(moved[1][0]["labels"], targets[0]["labels"])


def test_a_resume_may_change_the_device(tmp_path: Path, data_overrides: list[str]) -> None:
    """The accelerator is a run option, not part of the result: a run started elsewhere resumes here."""
    out = tmp_path / "d"
    phases = "recipe.phases=[{name: max, epochs: 2, elastic: []}]"
    train_supernet(config(out, data_overrides, phases, "max_seconds=0.001", "accelerator=auto"))
    path = train_supernet(config(out, data_overrides, phases, "accelerator=cpu"))
    assert load_supernet(path.parent)[1]["completed"]
