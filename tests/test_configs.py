"""Every config in conf/ composes with Hydra's compose API: each root config, each option of each
group under the search app's root, and each experiment; search objects instantiate."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import rlnas

CONF = rlnas.CONF_DIR
ROOTS = sorted(p.stem for p in CONF.glob("*.yaml"))
#: groups the search config places elsewhere than at their own name
PACKAGES = {"train_options": "supernet.train"}
GROUP_OPTIONS = sorted((g.name, p.stem) for g in CONF.iterdir() if g.is_dir() for p in g.glob("*.yaml"))


def _compose(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose(root):
    cfg = _compose(root, [])
    OmegaConf.resolve(cfg)  # every interpolation resolves, hydra's included
    assert cfg.hydra.run.dir


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(group, option):
    key = f"{group}@{PACKAGES[group]}" if group in PACKAGES else group
    cfg = _compose("config", [f"{key}={option}"])
    if group == "experiment":
        assert "experiment" in cfg.hydra.runtime.choices
    else:
        assert OmegaConf.select(cfg, PACKAGES.get(group, group)) is not None
    OmegaConf.resolve(cfg)
    if group in ("agent", "reward"):
        assert instantiate(cfg[group]) is not None
    if group in ("backend", "oracle") and cfg[group]:  # empty: the local / measured default
        assert instantiate(cfg[group], _partial_=True) is not None


def test_search_app_defaults_and_overrides():
    cfg = _compose("config", ["experiment=quick", "budget=7", "device=host", "run_dir=/tmp/x"])
    assert cfg.budget == 7 and cfg.device.name == "host" and cfg.hydra.run.dir == "/tmp/x"
    assert cfg.model.name == "resnet50" and cfg.recipe.name == "quick_a0" and cfg.a0.fallback_recipe == "quick"
    with pytest.raises(ConfigCompositionException):
        _compose("config", ["no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        _compose("config", ["agent=no_such_agent"])
