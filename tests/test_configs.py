"""Every config in conf/ composes with Hydra's compose API: each root config, each option of each
group under the search app's root, and each experiment; search objects instantiate."""

from __future__ import annotations

import functools
import inspect
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

import rlnas
from rlnas.data import DatasetError, DatasetSpec
from rlnas.oracles.device import profile_from_config
from rlnas.oracles.latency import QuantizationConfig
from rlnas.oracles.ratios import TimingConfig
from rlnas.runsetup import plain, supernet_train_config
from rlnas.schema import ExportCommandConfig, FinalistsConfig, SearchConfig
from rlnas.spaces import get_space
from rlnas.supernet.config import TrainSupernetConfig
from rlnas.supernet.recipe import Recipe
from rlnas.tasks import get_task
from rlnas.validate import check_search, check_train

CONF = rlnas.CONF_DIR
ROOTS = sorted(p.stem for p in CONF.glob("*.yaml"))
#: the root configs with a schema
SCHEMAS = {"config": SearchConfig, "export": ExportCommandConfig, "train_supernet": TrainSupernetConfig}
GROUP_OPTIONS = sorted((g.name, p.stem) for g in CONF.iterdir() if g.is_dir() for p in g.glob("*.yaml"))


def _compose(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose(root, tmp_path):
    required = {"export": [f"run={tmp_path}"]}  # its one mandatory value: the run to export
    cfg = _compose(root, required.get(root, []))
    OmegaConf.resolve(cfg)  # every interpolation resolves, hydra's included
    assert cfg.hydra.job.config_name == root and cfg.hydra.run.dir
    if root in SCHEMAS:  # typed by rlnas/schema.py
        assert OmegaConf.get_type(cfg) is SCHEMAS[root]


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = _compose("config", [f"{group}={option}"])
    assert cfg.hydra.runtime.choices[group] == option
    if group != "experiment":  # the option's own keys and values are in its place
        path = CONF / group / f"{option}.yaml"
        place = "" if "@package _global_" in path.read_text() else group
        placed = _leaves(OmegaConf.to_container(OmegaConf.select(cfg, place) if place else cfg))
        own = OmegaConf.to_container(OmegaConf.load(path))
        own.pop("defaults", None)  # an option may extend another of its group (recipe=from_a0_long)
        for leaf, value in _leaves(own).items():
            assert placed[leaf] == value, f"{group}={option}: {leaf}"
    assert OmegaConf.get_type(cfg) is SearchConfig
    OmegaConf.resolve(cfg)
    if group in ("agent", "reward", "backend", "oracle") and cfg[group]:  # empty: the local / measured default
        _check_instantiated(cfg[group])


def _leaves(node, prefix: str = "") -> dict:
    """A nested dict's leaves by dotted key, a list's items by index (``recipe.phases.0.name``; the
    schema adds the keys an item leaves out)."""
    if isinstance(node, list) and node:
        node = dict(enumerate(node))
    if not isinstance(node, dict) or not node:
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}


#: config keys an object keeps under another name
RENAMED = {"penalty": "penalty_offset"}


def _settings(obj) -> dict:
    """What an instantiated object keeps: its attributes, and the entries of its dict attributes
    (PPO's ``algo_kwargs``, ``env_kwargs``, ``policy_kwargs``...), flattened."""
    found: dict = {}

    def walk(values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
                walk(value)
            found.setdefault(key, value)

    walk(vars(obj))
    return found


def _check_instantiated(node) -> None:
    """The object of a ``_target_`` config is of that class (a function: a partial of it, since it
    needs the run's supernet) and holds every value of the config."""
    target = get_object(node._target_)
    values = OmegaConf.to_container(node, resolve=True)
    del values["_target_"]
    if isinstance(target, type):
        obj = instantiate(node)
        assert type(obj) is target
        kept = _settings(obj)
    else:
        obj = instantiate(node, _partial_=True)
        assert isinstance(obj, functools.partial) and obj.func is target
        kept = obj.keywords
    assert values, node
    for key, value in values.items():
        assert RENAMED.get(key, key) in kept, f"{node._target_} does not keep {key}"
        assert kept[RENAMED.get(key, key)] == value, f"{node._target_}.{key}"


def test_search_app_defaults_and_overrides():
    cfg = _compose("config", ["experiment=quick", "budget=7", "device=host", "run_dir=/tmp/x"])
    assert cfg.budget == 7 and cfg.device.name == "host" and cfg.hydra.run.dir == "/tmp/x"
    assert cfg.model.name == "resnet50" and cfg.recipe.name == "quick_a0" and cfg.a0.fallback_recipe == "quick"
    with pytest.raises(ConfigCompositionException):
        _compose("config", ["no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        _compose("config", ["agent=no_such_agent"])



def test_options_that_extend_another_differ_only_where_they_say():
    """``recipe=from_a0_long`` is from_a0 for 8 epochs; the Imagenette experiments per profile are
    ``experiment=resnet50_imagenette`` with a device (and the run directory that names it)."""
    short, long = (plain(_compose("config", [f"recipe={name}"]).recipe) for name in ("from_a0", "from_a0_long"))
    assert long.pop("name") == "from_a0_long" and short.pop("name") == "from_a0"
    assert [phase.pop("epochs") for phase in long["phases"]] == [8] != [p.pop("epochs") for p in short["phases"]]
    assert long == short

    def unresolved(overrides: list[str]) -> dict:
        tree = OmegaConf.to_container(_compose("config", overrides), resolve=False)
        del tree["hydra"]
        return tree

    for profile, device in (("avx2", "kabylake_avx2"), ("vnni", "icelake_vnni")):
        cfg = unresolved([f"experiment=resnet50_imagenette_{profile}"])
        assert cfg == unresolved(["experiment=resnet50_imagenette", f"device={device}"])
        assert cfg["device"]["name"] == device and cfg["model"]["name"] == "resnet50"
        assert cfg["resolution"] == 128 and cfg["recipe"]["name"] == "from_a0_long"
    run_dir = _compose("config", ["experiment=resnet50_imagenette_vnni"]).run_dir
    assert run_dir.startswith("outputs/search/resnet50_imagenette_icelake_vnni/")


# -- what each config builds, short of data and weights ---------------------------------------------


def _targets(cfg) -> dict[str, dict]:
    """Every ``_target_`` node of a composed config (Hydra's own node aside), by key, checked: the
    target imports (no checkout on the path needed) and takes every key the config gives it."""
    found: dict[str, dict] = {}

    def walk(node, path: str) -> None:
        if not isinstance(node, dict):
            return
        if "_target_" in node:
            params = inspect.signature(get_object(node["_target_"])).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                unknown = set(node) - {"_target_", "_partial_"} - set(params)
                assert not unknown, f"{path}: {node['_target_']} takes no {sorted(unknown)}"
            found[path] = node
        for key, value in node.items():
            walk(value, f"{path}.{key}" if path else key)

    walk(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True), "")
    return found


@functools.cache
def _space(family: str, kwargs: str):
    return get_space(family, **json.loads(kwargs))  # on the meta device: no weights


def _model_space(cfg):
    kwargs = {"num_classes": cfg.dataset.num_classes or 10, **plain(cfg.model.get("kwargs") or {})}
    return _space(cfg.model.name, json.dumps(kwargs, sort_keys=True))


def _search_builds(cfg) -> dict:
    """What ``rlnas-search`` builds from ``cfg`` before it needs data or trained weights: its rules and
    schemas, the device profile (its fields; whether this host runs it is not the config's
    business), the recipe and the supernet's training config, the dataset's task and spec, the
    model's search space and every ``_target_``."""
    typed = check_search(cfg)
    assert isinstance(instantiate(typed.latency.timing), TimingConfig)
    assert isinstance(instantiate(typed.latency.quantization), QuantizationConfig)
    assert FinalistsConfig(**plain(typed.finalists)).tuning().lr == typed.finalists.lr
    profile = profile_from_config(plain(cfg.device), check_host=False)
    profile.check_fields()
    recipe = Recipe.from_config(cfg.recipe)
    check_train(supernet_train_config(cfg))
    task = get_task(cfg.dataset.get("task"))
    if task.name == "classification":
        if OmegaConf.is_missing(cfg.dataset, "root"):
            with pytest.raises(DatasetError, match="dataset.root"):
                DatasetSpec.from_config(cfg.dataset)
        else:
            assert DatasetSpec.from_config(cfg.dataset).name == cfg.dataset.name
    space = _model_space(cfg)
    assert space.contains(space.max_arch()) and space.size() > 1
    return {"profile": profile, "recipe": recipe, "space": space, "targets": _targets(cfg)}


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_builds_without_data(group, option):
    cfg = _compose("config", [f"{group}={option}"])
    built = _search_builds(cfg)
    assert {"accuracy", "latency", "latency.quantization", "latency.timing", "agent", "reward"} <= set(built["targets"])
    if group in ("model", "dataset", "device", "recipe"):
        assert cfg[group].name == option  # the name a run logs and keys its caches on is the file's
    if group == "device":
        assert built["profile"].name == option
    if group == "oracle" and option != "measured":
        assert "oracle" in built["targets"]
    if group == "backend" and option != "local":
        assert "backend" in built["targets"]


def test_the_other_apps_build_without_data():
    train = _compose("train_supernet", [])
    check_train(train)
    assert Recipe.from_config(train.recipe).name == "default" and train.checkpoint.every_steps >= 0
    assert _model_space(train).size() > 1
    latency = _compose("latency", [])
    profile = profile_from_config(plain(latency.device), check_host=False)
    profile.check_fields()
    devices = {p.stem for p in (CONF / "device").glob("*.yaml")}
    assert set(OmegaConf.to_container(latency.profiles, resolve=True)) <= devices
