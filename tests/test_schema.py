"""One typed config (issue 20): the schemas (rlnas/schema.py, rlnas/supernet/config.py) type the
composed ``rlnas-search`` and ``rlnas-train-supernet`` configs, each default and each range is
written once, and a bad value is one line and exit 2 through the real command, nothing written."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rlnas
from rlnas import cli
from rlnas.errors import ConfigError
from rlnas.finalists import FinalistsConfig as FinalistsFromStage
from rlnas.oracles.accuracy import AccuracyOracle
from rlnas.oracles.latency import LatencyOracle, QuantizationConfig
from rlnas.oracles.profiling import METRICS
from rlnas.oracles.ratios import TimingConfig
from rlnas.rules import FieldError, rule_of
from rlnas.runsetup import supernet_train_config
from rlnas.schema import FinalistsConfig, SearchConfig
from rlnas.structured import typed
from rlnas.supernet.config import TrainOptions, TrainSupernetConfig
from rlnas.supernet.finetune import FineTuneOptions
from rlnas.supernet.recipe import Phase, Recipe
from rlnas.validate import SEARCH_RULES, TRAIN_RULES, check_search, check_train, one_line


def _compose(*overrides: str, config: str = "config"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


# -- defaults written once ---------------------------------------------------------------------------


def test_finalists_fine_tuning_defaults_are_fine_tune_options_by_construction() -> None:
    assert FinalistsFromStage is FinalistsConfig and issubclass(FinalistsConfig, FineTuneOptions)
    tuning = {f.name for f in fields(FineTuneOptions)}
    assert not tuning & set(vars(FinalistsConfig)["__annotations__"]), "FinalistsConfig redeclares a fine-tuning field"
    assert FinalistsConfig().tuning() == FineTuneOptions()


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}


def test_config_yaml_sets_only_what_differs_from_the_schema() -> None:
    shipped = yaml.safe_load((rlnas.CONF_DIR / "config.yaml").read_text())
    own = _leaves({k: v for k, v in shipped.items() if k not in ("defaults", "hydra")})
    defaults = OmegaConf.structured(SearchConfig)
    for key, value in own.items():
        assert OmegaConf.select(defaults, key, default="<absent>") != value, f"config.yaml repeats {key}'s default"
    assert set(own) == {"finalists.progress"}


def test_the_oracles_settings_default_to_their_constructors() -> None:
    cfg = _compose()
    for node, oracle in ((cfg.accuracy, AccuracyOracle), (cfg.latency, LatencyOracle)):
        params = inspect.signature(oracle).parameters
        for key in node:
            if key not in ("_target_", "timing", "quantization"):
                assert node[key] == params[key].default, f"{oracle.__name__}({key}=...)"
    assert instantiate(cfg.latency.timing) == TimingConfig()
    assert instantiate(cfg.latency.quantization) == QuantizationConfig()


def test_a_range_is_the_dataclass_field_s_rule() -> None:
    rules = dict(SEARCH_RULES)
    for spec in fields(TimingConfig):
        assert rules[f"latency.timing.{spec.name}"] is rule_of(spec)
    for spec in fields(FineTuneOptions):
        if rule_of(spec) is not None:
            assert rules[f"finalists.{spec.name}"] is rule_of(spec)
    with pytest.raises(FieldError) as built:
        TimingConfig(min_rounds=0)
    with pytest.raises(FieldError) as checked:
        check_search(_compose("latency.timing.min_rounds=0"))
    assert str(checked.value) == str(built.value.at("latency.timing."))


# -- a typed config ----------------------------------------------------------------------------------


def test_the_composed_config_is_typed() -> None:
    cfg = _compose("experiment=quick")
    assert OmegaConf.get_type(cfg) is SearchConfig and cfg.budget == 16
    assert OmegaConf.get_type(_compose("run=/x", config="export")).__name__ == "ExportCommandConfig"
    assert _compose("budget=7").budget == 7
    with pytest.raises(ConfigCompositionException):
        _compose("budget=abc")
    with pytest.raises(ConfigCompositionException):
        _compose("latency.timing.min_rounds=2.5")


def test_latency_metric_is_latency_or_throughput() -> None:
    assert METRICS == ("latency", "throughput")
    assert check_search(_compose()).latency.metric == "latency"
    assert check_search(_compose("latency.metric=throughput")).latency.metric == "throughput"
    with pytest.raises(ConfigError, match=r"^latency\.metric='bogus' is not valid: .*one of latency, throughput$"):
        check_search(_compose("latency.metric=bogus"))


def test_the_accuracy_node_keeps_the_keys_of_a_run_s_identity() -> None:
    """``accuracy`` is in a run log's context and a surrogate table's: the schema adds no key to it."""
    assert set(_compose().accuracy) == {"_target_", "recal_images", "calib_images", "eval_images", "fp32_images",
                                        "batch_size", "inference_precision"}


def test_an_oracle_node_takes_another_parameter_of_its_oracle() -> None:
    cfg = check_search(_compose("+latency.lock_path=/tmp/x.lock", "+accuracy.lock_path=/tmp/x.lock"))
    assert instantiate(cfg.accuracy, _partial_=True).keywords["lock_path"] == "/tmp/x.lock"
    assert instantiate(cfg.latency, _partial_=True).keywords["lock_path"] == "/tmp/x.lock"
    with pytest.raises(ConfigError, match=r"^accuracy\.bogus is not a key of the config \(valid keys there: recal_"):
        check_search(_compose("+accuracy.bogus=1"))
    with pytest.raises(ConfigError, match=r"^latency\.timing\.bogus is not a key"):
        check_search(_compose("+latency.timing.bogus=1"))


def test_a_saved_config_gets_its_types_back() -> None:
    """``rlnas-export`` reads ``<run>/.hydra/config.yaml``: plain YAML, typed by the check (an old
    run without ``latency.metric`` gets the default)."""
    saved = OmegaConf.to_container(_compose("experiment=tiny"))
    del saved["latency"]["metric"]
    cfg = check_search(OmegaConf.create(saved))
    assert OmegaConf.get_type(cfg) is SearchConfig and cfg.latency.metric == "latency"
    saved["budget"] = "abc"
    with pytest.raises(ConfigError, match=r"^budget='abc' is not valid: .*Integer$"):
        check_search(OmegaConf.create(saved))
    saved["budget"], saved["finalists"]["typo"] = 3, 1
    with pytest.raises(ConfigError, match=r"^finalists\.typo is not a key"):
        check_search(OmegaConf.create(saved))


def test_typed_leaves_hydra_s_own_node_out() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(rlnas.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert "hydra" in cfg and "hydra" not in typed(cfg, SearchConfig)


def test_hydra_s_messages_become_one_line() -> None:
    for override, says in (("budget=abc", "budget='abc' is not valid: Value 'abc'"),
                           ("agent=nope", "Available options in 'agent': evolution, ppo"),
                           ("nokey=1", "nokey is not a key of the config (valid keys there: model, dataset")):
        with pytest.raises(ConfigCompositionException) as raised:
            _compose(override)
        line = str(one_line(raised.value))
        assert "\n" not in line and says in line and "search path" not in line


# -- through the real command, in this process -------------------------------------------------------


@pytest.fixture
def console_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """A command run by its console entry point here, ``run(entry, argv)``: (exit code, stderr
    lines). Hydra's logging setup closes every handler; absl's would close pytest's capture with
    it, so it writes to the real stderr meanwhile. Hydra's own handlers are removed afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    absl = sys.modules.get("absl.logging")
    if absl is not None:
        monkeypatch.setattr(absl.get_absl_handler().python_handler, "stream", sys.__stderr__)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(entry: Callable[[], None], argv: list[str]) -> tuple[int, list[str]]:
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            entry()
        return exited.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    yield run
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:], root.level = handlers, level
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    assert "HYDRA_FULL_ERROR" not in os.environ


@pytest.fixture
def search_command(console_command, tmp_path: Path):
    """``rlnas-search experiment=tiny run_dir=<tmp>/run <overrides>``, in this process."""
    return lambda *overrides: console_command(cli.search, ["rlnas-search", "experiment=tiny",
                                                           f"run_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("override,says", [
    ("budget=abc", "budget='abc' is not valid: Value 'abc' of type 'str' could not be converted to Integer"),
    ("latency.timing.min_rounds=2.5", "latency.timing.min_rounds=2.5 is not valid: Value '2.5'"),
    ("latency.metric=bogus", "latency.metric='bogus' is not valid: latency.metric must be one of latency, throughput"),
    ("finalists.lr=0", "finalists.lr=0.0 is not valid: finalists.lr must be a number > 0"),
    ("+finalists.typo=1", "finalists.typo is not a key of the config (valid keys there: epochs, lr"),
    ("latency.timing.block_skip=5", "latency.timing.block_skip=5 is not valid: latency.timing.block_skip must be "
                                    "below block_iters (5)"),
    ("agent=nope", "Could not find 'agent/nope'; Available options in 'agent': evolution, ppo, ppo_model, random"),
    ("detection.fp32_heads=[loc,cls]", "detection.fp32_heads=['loc', 'cls'] is not valid: detection.fp32_heads must "
                                       "be a list of loc, conf"),
])
def test_a_bad_value_is_one_line_exit_2_and_nothing_written(search_command, tmp_path: Path, override: str,
                                                            says: str) -> None:
    code, lines = search_command(override)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("rlnas-search: ") and says in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


# -- rlnas-train-supernet ----------------------------------------------------------------------------


def test_recipes_set_only_what_differs_from_the_schema() -> None:
    """A recipe's YAML sets what differs from :class:`Recipe`'s defaults (or, for one that extends
    another, from what that one sets), and a phase what differs from :class:`Phase`'s (its name,
    epochs and elastic dimensions always); ``default`` is the defaults."""
    recipe_defaults = {f.name: f.default for f in fields(Recipe)}
    phase_defaults = {f.name: f.default for f in fields(Phase)}
    for path in sorted((rlnas.CONF_DIR / "recipe").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        parents = [p for p in recipe.get("defaults", []) if p != "_self_"]  # the recipe it extends
        inherited = {**recipe_defaults, **{k: v for parent in parents for k, v in yaml.safe_load(
            (path.parent / f"{parent}.yaml").read_text()).items()}}
        for key, value in recipe.items():
            if key not in ("name", "phases", "defaults"):
                assert value != inherited[key], f"{path.name} repeats recipe.{key}'s inherited value"
        for phase in recipe["phases"]:
            for key, value in phase.items():
                if key not in ("name", "epochs", "elastic"):
                    assert value != phase_defaults[key], f"{path.name} repeats a phase's {key} default"
    assert set(yaml.safe_load((rlnas.CONF_DIR / "recipe" / "default.yaml").read_text())) == {"name", "phases"}


def test_train_supernet_yaml_sets_nothing_the_schema_has() -> None:
    shipped = yaml.safe_load((rlnas.CONF_DIR / "train_supernet.yaml").read_text())
    assert set(shipped) == {"defaults", "hydra"}
    assert not (rlnas.CONF_DIR / "train_options").exists(), "the run options' defaults are TrainOptions'"


def test_the_train_config_is_typed() -> None:
    cfg = _compose("recipe=from_a0", config="train_supernet")
    assert OmegaConf.get_type(cfg) is TrainSupernetConfig
    assert OmegaConf.get_type(cfg.recipe).SOURCE is Recipe and OmegaConf.get_type(cfg.recipe.phases[0]).SOURCE is Phase
    assert cfg.recipe.teacher == "a0" and cfg.recipe.batch_size == Recipe.__dataclass_fields__["batch_size"].default
    assert cfg.recipe.phases[0].lr_scale == 1.0 and cfg.recipe.phases[0].num_random is None
    assert Recipe.from_config(cfg.recipe).phases[0].elastic == ("depth", "width", "expand")
    with pytest.raises(ConfigCompositionException):
        _compose("recipe.lr=abc", config="train_supernet")
    with pytest.raises(ConfigCompositionException):
        _compose("eval.val_images=many", config="train_supernet")


def test_a_train_range_is_the_dataclass_field_s_rule() -> None:
    rules = dict(TRAIN_RULES)
    for spec in fields(Recipe):
        if rule_of(spec) is not None:
            assert rules[f"recipe.{spec.name}"] is rule_of(spec)
            assert dict(SEARCH_RULES)[f"recipe.{spec.name}"] is rule_of(spec)  # the search's recipe node
    with pytest.raises(FieldError) as built:
        Phase("x", 0)
    with pytest.raises(FieldError) as checked:
        check_train(_compose("recipe.phases=[{name: a, epochs: 1}, {name: x, epochs: 0}]", config="train_supernet"))
    assert str(checked.value) == str(built.value.at("recipe.phases[1]."))


def test_both_commands_share_the_run_options_and_the_recipe() -> None:
    """``rlnas-search``'s ``supernet.train`` is the trainer's :class:`TrainOptions`, and the training
    config it hands the trainer is the one ``rlnas-train-supernet`` composes."""
    search = check_search(_compose("recipe=quick", "supernet.train.eval.val_images=100"))
    assert OmegaConf.get_type(search.supernet.train) is TrainOptions
    handed = check_train(supernet_train_config(search))
    composed = check_train(_compose("recipe=quick", "eval.val_images=100", config="train_supernet"))
    for key in ("recipe", "checkpoint", "eval", "log", "init", "seed", "threads"):
        assert handed[key] == composed[key], key


def test_a_saved_train_config_gets_its_types_back() -> None:
    """``last.pt`` and a supernet's metadata hold plain data: typed, the keys they lack take their
    defaults, and a bad value is refused."""
    saved = OmegaConf.to_container(_compose("recipe=tiny", config="train_supernet"), resolve=True)
    del saved["recipe"]["teacher"], saved["recipe"]["phases"][0]["warmup"], saved["eval"]
    cfg = check_train(OmegaConf.create(saved))
    assert OmegaConf.get_type(cfg) is TrainSupernetConfig and cfg.recipe.teacher == "max"
    assert cfg.recipe.phases[0].warmup is None and cfg.eval.recal_images == 1000
    saved["recipe"]["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"^recipe\.lr='fast' is not valid: .*Float$"):
        check_train(OmegaConf.create(saved))


@pytest.mark.parametrize("override,says", [
    ("recipe.lr=abc", "recipe.lr='abc' is not valid: Value 'abc' of type 'str' could not be converted to Float"),
    ("recipe.lr=-1", "recipe.lr=-1.0 is not valid: recipe.lr must be a number >= 0"),
    ("recipe.teacher=nope", "recipe.teacher='nope' is not valid: recipe.teacher must be one of max, a0"),
    ("recipe.phases=[]", "recipe.phases=[] is not valid: recipe.phases must be a non-empty list of phases"),
    ("recipe.phases=[{name: x, epochs: 0}]", "recipe.phases[0].epochs=0 is not valid: recipe.phases[0].epochs must be "
                                             "an integer >= 1"),
    ("recipe.phases=[{name: x, epochs: 1, elastic: [kernel]}]", "recipe.phases[0].elastic=['kernel'] is not valid: "
                                                               "recipe.phases[0].elastic must be a list of depth"),
    ("recipe.phases=[{name: x}]", "recipe.phases[0].epochs has no value: give an integer >= 1"),
    ("+recipe.typo=1", "recipe.typo is not a key of the config (valid keys there: name, phases, batch_size"),
    ("eval.val_images=0", "eval.val_images=0 is not valid: eval.val_images must be null (the whole split) or an "
                          "integer >= 1"),
    ("accelerator=tpu", "accelerator='tpu' is not valid: accelerator must be one of auto, cpu, cuda"),
    ("resolution=4", "resolution=4 is not valid: resolution must be an integer >= 8 (pixels)"),
    ("recipe=nope", "Could not find 'recipe/nope'"),
])
def test_a_bad_training_value_is_one_line_exit_2_and_nothing_written(console_command, tmp_path: Path, override: str,
                                                                     says: str) -> None:
    code, lines = console_command(cli.train_supernet, ["rlnas-train-supernet", "model=resnet_tiny", "recipe=tiny",
                                                       f"output_dir={tmp_path / 'run'}", override])
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("rlnas-train-supernet: ") and says in lines[0], lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()
