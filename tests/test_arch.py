"""Arch values and SearchSpace bounds, on the real registered spaces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlnas.arch import Arch, InvalidArchError, SearchSpace
from rlnas.spaces import create_supernet, list_families
from rlnas.spaces.base import Supernet
from rlnas.spaces.mobilenet import MOBILENET_TINY, MOBILENET_V1
from rlnas.spaces.resnet import RESNET50, RESNET_TINY, RESNEXT101_32X8D

SPACES = {c.family: c.space() for c in (RESNET50, RESNEXT101_32X8D, RESNET_TINY, MOBILENET_V1, MOBILENET_TINY)}


def get_space(family: str) -> SearchSpace:
    """The family's space without building its (large) supernet."""
    return SPACES[family]


@pytest.fixture(scope="module")
def resnet_space() -> SearchSpace:
    return get_space("resnet_tiny")


@pytest.fixture(scope="module")
def mobilenet_space() -> SearchSpace:
    return get_space("mobilenet_tiny")


def test_json_round_trip_keeps_value_and_hash(resnet_space: SearchSpace) -> None:
    arch = resnet_space.sample(np.random.default_rng(3))
    text = arch.to_json()
    back = Arch.from_json(text)
    assert back == arch and hash(back) == hash(arch)
    assert json.loads(text)["family"] == "resnet_tiny"
    assert back.to_json() == text


def test_equal_values_hash_equal_and_lists_normalise() -> None:
    a = Arch("resnet_tiny", [2, 1, 2], [1, 0.5, 1], [[0.5, 0.25], [0.5], [0.25, 0.25]])
    b = Arch("resnet_tiny", (2, 1, 2), (1.0, 0.5, 1.0), ((0.5, 0.25), (0.5,), (0.25, 0.25)))
    assert a == b and len({a, b}) == 1
    assert a != Arch("resnet_tiny", (2, 1, 2), (1.0, 0.75, 1.0), b.expands)


def test_from_dict_names_missing_fields() -> None:
    with pytest.raises(InvalidArchError, match="widths"):
        Arch.from_dict({"family": "resnet_tiny", "depths": [1, 1, 1]})


def test_max_and_min_are_in_the_space(resnet_space: SearchSpace) -> None:
    assert resnet_space.max_arch() == Arch("resnet_tiny", (2, 2, 2), (1.0,) * 3, ((0.5, 0.5),) * 3)
    assert resnet_space.min_arch() == Arch("resnet_tiny", (1, 1, 1), (0.5,) * 3, ((0.25,),) * 3)
    assert resnet_space.contains(resnet_space.min_arch())


@pytest.mark.parametrize(("edit", "problem"), [
    ({"depths": (3, 2, 2)}, "layer1: depth 3 not in [1, 2]"),
    ({"widths": (1.0, 0.6, 1.0)}, "layer2: width 0.6 not in"),
    ({"expands": ((0.5, 0.5), (0.5, 0.5), (0.5, 0.3))}, "layer3: expand [0.3] not in"),
    ({"expands": ((0.5,), (0.5, 0.5), (0.5, 0.5))}, "layer1: 1 expand ratios for 2 blocks"),
    ({"family": "resnet50"}, "family 'resnet50' is not 'resnet_tiny'"),
    ({"depths": (2, 2), "widths": (1.0, 1.0)}, "needs 3 stages"),
])
def test_validate_names_the_problem(resnet_space: SearchSpace, edit: dict, problem: str) -> None:
    arch = resnet_space.max_arch().to_dict()
    arch.update(edit)
    with pytest.raises(InvalidArchError) as info:
        resnet_space.validate(Arch.from_dict(arch))
    assert problem in str(info.value)


def test_expand_on_a_family_without_expand_is_rejected(mobilenet_space: SearchSpace) -> None:
    arch = mobilenet_space.max_arch()
    bad = Arch(arch.family, arch.depths, arch.widths, tuple((1.0,) * d for d in arch.depths))
    with pytest.raises(InvalidArchError, match="no expand ratio"):
        mobilenet_space.validate(bad)


def test_set_active_validates() -> None:
    net = create_supernet("resnet_tiny")
    with pytest.raises(InvalidArchError, match="depth 5"):
        net.set_active(Arch("resnet_tiny", (5, 1, 1), (1.0,) * 3, ((0.5,) * 5, (0.5,), (0.5,))))


@pytest.mark.parametrize("family", ["resnet_tiny", "mobilenet_tiny", "resnet50", "mobilenet_v1"])
def test_to_vector_fixed_length_and_unit_range(family: str) -> None:
    space = get_space(family)
    rng = np.random.default_rng(0)
    archs = [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(20)]
    for arch in archs:
        assert space.contains(arch)
        vec = space.to_vector(arch)
        assert vec.shape == (space.vector_size,)
        assert vec.min() >= 0.0 and vec.max() <= 1.0
    assert space.to_vector(space.max_arch()).min() == 1.0
    n_stages = space.num_stages
    assert np.all(space.to_vector(space.min_arch())[0:2 * n_stages:2][np.array(space.max_depths)
                                                                    > np.array(space.min_depths)] == 0.0)


def test_vector_sizes_of_the_real_spaces() -> None:
    assert get_space("resnet50").vector_size == 2 * 4 + 16
    assert get_space("resnext101_32x8d").vector_size == 2 * 4 + 33
    assert get_space("mobilenet_v1").vector_size == 2 * 5


def test_space_sizes() -> None:
    # mobilenet_v1: 4 widths per stage (4**5) times 5 depths of the 512-channel stage
    assert get_space("mobilenet_v1").size() == 4 ** 5 * 5
    # resnet_tiny: per stage 3 widths x (2 + 2**2) expand sequences
    assert get_space("resnet_tiny").size() == (3 * 6) ** 3
    assert get_space("resnet50").size() == 3262849744896


def test_configs_match_the_registered_spaces() -> None:
    for family in ("resnet_tiny", "mobilenet_tiny"):
        assert create_supernet(family).space == get_space(family)


def test_registry_lists_families_and_names_them_on_error() -> None:
    families = list_families()
    for name in ("resnet50", "resnext101_32x8d", "mobilenet_v1", "resnet_tiny", "mobilenet_tiny"):
        assert name in families
    with pytest.raises(KeyError) as info:
        create_supernet("resnet51")
    assert "resnet51" in str(info.value) and "resnet50" in str(info.value) and "mobilenet_tiny" in str(info.value)


@pytest.mark.parametrize("family,kwargs", [("resnet50", {"stem": "imagenet"}), ("resnet50", {"stem": "cifar"}),
                                           ("resnext101_32x8d", {}), ("resnet_tiny", {"stem": "cifar"})])
def test_layer_macs_from_the_plan_equal_the_forward_pass(family: str, kwargs: dict) -> None:
    """ResNets count their layers from the channel plan; it must be what the network runs."""
    with torch.device("meta"):
        supernet = create_supernet(family, num_classes=10, **kwargs)
    rng = np.random.default_rng(0)
    archs = [supernet.space.max_arch(), supernet.space.min_arch()] + [supernet.space.sample(rng) for _ in range(6)]
    for resolution in (32, 45):
        for arch in archs:
            assert supernet._count_layer_macs(arch, resolution) == Supernet._count_layer_macs(supernet, arch, resolution)
