"""experiments/campaign_128.sh and campaign_detection.sh: every stage's command is valid, and finished
stages are skipped."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from rlnas.api import compose_search
from rlnas.supernet.train import compose_config
from rlnas.validate import check_train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "campaign_128.sh"
STAGES = ["a0", "supernet", "search_avx2", "search_vnni", "resnet18", "mobilenet_v2", "baselines_avx2",
          "baselines_vnni", "row_avx2", "row_vnni", "agreement_avx2", "evolution_avx2", "evolution_vnni", "hardware",
          "supernet_r18", "search_r18_avx2", "baselines_r18_avx2", "search_r18_vnni", "baselines_r18_vnni",
          "agreement_r18_vnni", "search_r18_avx2_seed1", "baselines_r18_avx2_seed1", "search_r18_avx2_seed2",
          "baselines_r18_avx2_seed2", "supernet_mnv2", "search_mnv2_avx2", "baselines_mnv2_avx2", "search_mnv2_vnni",
          "baselines_mnv2_vnni"]


def dry_run(tmp_path: Path, *stages: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "campaign"), "A0": str(tmp_path / "a0"),
           "A0_ROOT": str(tmp_path / "baselines")}
    return subprocess.run(["bash", str(SCRIPT), *stages], env=env, capture_output=True, text=True, cwd=ROOT)


def commands(stdout: str) -> dict[str, list[str]]:
    """Stage -> its command's arguments, from a dry run's printout."""
    found, stage = {}, None
    for line in stdout.splitlines():
        if line.startswith("["):
            stage = line[1:line.index("]")]
        elif line.startswith("  ") and stage:
            found[stage] = shlex.split(line)
    return found


def test_every_stage_command_is_printed_in_order(tmp_path: Path) -> None:
    result = dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(commands(result.stdout)) == STAGES
    assert not (tmp_path / "campaign").exists()


def test_search_and_supernet_commands_compose(tmp_path: Path) -> None:
    cmds = commands(dry_run(tmp_path).stdout)
    for stage in ("search_avx2", "search_vnni", "evolution_avx2", "evolution_vnni"):
        cfg = compose_search(*cmds[stage][1:])
        assert cfg.resolution == 128 and cfg.dataset.name == "imagenette"
        assert cfg.reward._target_ == "rlnas.search.reward.HardReward"
        assert cfg.supernet.checkpoint == str(tmp_path / "campaign" / "supernet")
        assert cfg.agent._target_.rsplit(".", 1)[-1] == ("RegularizedEvolution" if stage.startswith("evolution")
                                                    else "ModelBasedPPO")
        assert Path(cfg.run_dir).parent == tmp_path / "campaign"
    assert compose_search(*cmds["search_avx2"][1:]).device.name == "kabylake_avx2"
    assert compose_search(*cmds["search_vnni"][1:]).device.name == "icelake_vnni"
    train = check_train(compose_config(cmds["supernet"][1:]))
    assert train.recipe.name == "from_a0_long" and train.resolution == 128
    assert train.a0.checkpoint == str(tmp_path / "a0" / "a0.pt")


def test_the_resnet18_space_stages_use_the_resnet18_a0_and_its_own_supernet(tmp_path: Path) -> None:
    cmds = commands(dry_run(tmp_path).stdout)
    resnet18 = str(tmp_path / "baselines" / "resnet18-imagenette-128" / "a0.pt")
    train = check_train(compose_config(cmds["supernet_r18"][1:]))
    assert train.model.name == "resnet18" and train.recipe.name == "from_a0_long" and train.a0.checkpoint == resnet18
    search = compose_search(*cmds["search_r18_avx2"][1:])
    assert search.model.name == "resnet18" and search.a0.checkpoint == resnet18
    assert search.supernet.checkpoint == str(tmp_path / "campaign" / "supernet-resnet18") == train.output_dir
    assert search.device.name == "kabylake_avx2" and search.reward._target_ == "rlnas.search.reward.HardReward"
    vnni = compose_search(*cmds["search_r18_vnni"][1:])
    assert vnni.device.name == "icelake_vnni" and vnni.model.name == "resnet18" and vnni.a0.checkpoint == resnet18
    assert vnni.supernet.checkpoint == search.supernet.checkpoint and Path(vnni.run_dir).name == "vnni-r18-ppo_model"
    baselines = cmds["baselines_r18_avx2"]  # the ResNet-50 a0 and MobileNetV2 beside them, the ResNet-50 the reference
    assert option_values(baselines, "--baseline") == [
        str(tmp_path / "a0" / "a0.pt"), str(tmp_path / "baselines" / "mobilenet_v2-imagenette-128" / "a0.pt")]
    assert option_values(baselines, "--reference") == ["resnet50"]
    assert option_values(baselines, "--run") == [search.run_dir]
    assert option_values(cmds["agreement_r18_vnni"], "--run") == [vnni.run_dir]


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == option]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_seed_stage_is_its_search_with_another_seed_in_its_own_run(tmp_path: Path, seed: int) -> None:
    cmds = commands(dry_run(tmp_path).stdout)
    first, again = compose_search(*cmds["search_r18_avx2"][1:]), compose_search(*cmds[f"search_r18_avx2_seed{seed}"][1:])
    assert first.seed == 0 and again.seed == seed
    assert Path(again.run_dir).name == f"avx2-r18-ppo_model-seed{seed}"
    first.seed, first.run_dir = again.seed, again.run_dir
    assert first == again
    assert option_values(cmds[f"baselines_r18_avx2_seed{seed}"], "--run") == [again.run_dir]


def test_the_resnet50_space_baselines_are_resnet18_and_mobilenet_v2(tmp_path: Path) -> None:
    cmds = commands(dry_run(tmp_path).stdout)
    for profile in ("avx2", "vnni"):
        baselines = cmds[f"baselines_{profile}"]
        assert option_values(baselines, "--run") == [compose_search(*cmds[f"search_{profile}"][1:]).run_dir]
        assert [Path(b).parent.name for b in option_values(baselines, "--baseline")] == [
            "resnet18-imagenette-128", "mobilenet_v2-imagenette-128"]
        assert not option_values(baselines, "--reference")
        assert cmds[f"row_{profile}"][2] == compose_search(*cmds[f"search_{profile}"][1:]).run_dir


@pytest.mark.parametrize(("campaign", "script"), [
    ("128", "train_a0.py"), ("128", "baselines.py"), ("128", "seed_row.py"), ("128", "latency_agreement.py"), ("128", "hardware_awareness.py"),
    ("detection", "make_detection_scenes.py"), ("detection", "train_a0.py"), ("detection", "detection_int8.py"),
    ("detection", "seed_row.py")])
def test_experiment_arguments_parse(tmp_path: Path, campaign: str, script: str) -> None:
    printed = (dry_run if campaign == "128" else detection_dry_run)(tmp_path).stdout
    cmds = [args for args in commands(printed).values() if args[1].endswith(script)]
    assert cmds
    help_text = subprocess.run([*cmds[0][:2], "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    for args in cmds:
        for option in (a for a in args[2:] if a.startswith("--")):
            assert re.search(rf"(^|[\s\[]){re.escape(option)}([\s=,\]]|$)", help_text, re.M), f"{script}: {option}"


def test_a_finished_stage_is_skipped_and_an_unknown_one_refused(tmp_path: Path) -> None:
    (tmp_path / "a0").mkdir()
    (tmp_path / "a0" / "a0.json").write_text("{}")
    result = dry_run(tmp_path, "a0", "supernet")
    assert result.returncode == 0
    assert f"[a0] done: {tmp_path / 'a0' / 'a0.json'}" in result.stdout
    assert list(commands(result.stdout)) == ["supernet"]
    refused = dry_run(tmp_path, "a0", "nope")
    assert refused.returncode == 2 and "unknown stage 'nope'" in refused.stderr and not refused.stdout


def test_the_mobilenet_v2_space_stages_use_the_mobilenet_v2_a0_and_its_own_supernet(tmp_path: Path) -> None:
    cmds = commands(dry_run(tmp_path).stdout)
    mobilenet = str(tmp_path / "baselines" / "mobilenet_v2-imagenette-128" / "a0.pt")
    train = check_train(compose_config(cmds["supernet_mnv2"][1:]))
    assert train.model.name == "mobilenet_v2" and train.recipe.name == "from_a0_long" and train.a0.checkpoint == mobilenet
    for profile, device in (("avx2", "kabylake_avx2"), ("vnni", "icelake_vnni")):
        search = compose_search(*cmds[f"search_mnv2_{profile}"][1:])
        assert search.model.name == "mobilenet_v2" and search.a0.checkpoint == mobilenet
        assert search.supernet.checkpoint == train.output_dir and search.device.name == device
        assert Path(search.run_dir).name == f"{profile}-mnv2-ppo_model"
        baselines = cmds[f"baselines_mnv2_{profile}"]
        assert option_values(baselines, "--run") == [search.run_dir]
        assert [Path(b).parent.name for b in option_values(baselines, "--baseline")] == [
            "a0", "resnet18-imagenette-128"]
        assert option_values(baselines, "--reference") == ["resnet50"]


# -- experiments/campaign_detection.sh (issue 21) ------------------------------------------------------

DETECTION = ROOT / "experiments" / "campaign_detection.sh"
DETECTION_STAGES = ["scenes", "backbone", "ssd", "int8_avx2", "int8_vnni", "supernet", "search_avx2", "search_vnni",
                    "row_avx2", "row_vnni"]


def detection_dry_run(tmp_path: Path, *stages: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "campaign"), "A0_ROOT": str(tmp_path / "a0"),
           "SCENES": str(tmp_path / "scenes")}
    return subprocess.run(["bash", str(DETECTION), *stages], env=env, capture_output=True, text=True, cwd=ROOT)


def test_the_detection_campaign_goes_from_the_scenes_to_a_search_per_profile(tmp_path: Path) -> None:
    result = detection_dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert list(cmds) == DETECTION_STAGES and not (tmp_path / "campaign").exists()
    ssd = tmp_path / "a0" / "ssd_mobilenet_v1-scenes-300"
    assert option_values(cmds["scenes"], "--out") == [str(tmp_path / "scenes")]
    assert option_values(cmds["ssd"], "--backbone") == [str(tmp_path / "a0" / "mobilenet_v1-imagenette-128" / "a0.pt")]
    assert option_values(cmds["ssd"], "--out") == [str(ssd)]
    train = check_train(compose_config(cmds["supernet"][1:]))
    assert train.model.name == "ssd_mobilenet_v1" and train.dataset.task == "detection" and train.resolution == 300
    assert train.recipe.name == "ssd_from_a0" and train.recipe.teacher == "a0"
    assert train.recipe.precision == "auto" and train.recipe.channels_last  # bf16 where native, channels-last
    assert cmds["ssd"][cmds["ssd"].index("recipe.precision=auto") - 1] == "--override"
    assert cmds["ssd"][cmds["ssd"].index("recipe.channels_last=true") - 1] == "--override"
    assert train.a0.checkpoint == str(ssd / "a0.pt") and train.dataset.root == str(tmp_path / "scenes")
    for profile, device in (("avx2", "kabylake_avx2"), ("vnni", "icelake_vnni")):
        search = compose_search(*cmds[f"search_{profile}"][1:])
        assert search.model.name == "ssd_mobilenet_v1" and search.dataset.name == "scenes" and search.resolution == 300
        assert search.device.name == device and search.reward._target_ == "rlnas.search.reward.HardReward"
        assert search.agent._target_.rsplit(".", 1)[-1] == "ModelBasedPPO"
        assert search.a0.checkpoint == train.a0.checkpoint and search.supernet.checkpoint == train.output_dir
        assert search.dataset.root == train.dataset.root and Path(search.run_dir).name == f"{profile}-ppo_model"
        assert option_values(cmds[f"int8_{profile}"], "--device") == [device]
        assert option_values(cmds[f"int8_{profile}"], "--a0") == [str(ssd)]
        assert cmds[f"row_{profile}"][2] == search.run_dir  # the seed row of that search's export


def test_a_finished_detection_stage_is_skipped_and_an_unknown_one_refused(tmp_path: Path) -> None:
    (tmp_path / "scenes" / "annotations").mkdir(parents=True)
    (tmp_path / "scenes" / "annotations" / "instances_holdout.json").write_text("{}")
    result = detection_dry_run(tmp_path, "scenes", "backbone")
    assert result.returncode == 0 and "[scenes] done:" in result.stdout
    assert list(commands(result.stdout)) == ["backbone"]
    refused = detection_dry_run(tmp_path, "ssd", "nope")
    assert refused.returncode == 2 and "unknown stage 'nope'" in refused.stderr and not refused.stdout
