"""Every torchvision ResNet constructor is a family: its maximal network loads torchvision's state
dict strictly and computes torchvision's outputs, its sub-networks extract with torchvision's module
names, and a0's state dict says which family it is (issue 20)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from helpers import PLAIN, archs, randomize
from torch import nn

import rlnas
from rlnas.spaces import create_supernet, list_families
from rlnas.spaces.base import Supernet
from rlnas.spaces.elastic import count_params
from rlnas.spaces.resnet import (
    BASIC_TINY,
    TORCHVISION_RESNETS,
    ElasticResNet,
    NotAResNetError,
    detect_torchvision_resnet,
)
from rlnas.supernet.a0 import A0Error, detect_a0_family, load_a0_weights

FAMILIES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
NUM_CLASSES = 3


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> tuple[str, nn.Module, ElasticResNet]:
    """A torchvision model with random weights and BN statistics, and the family's supernet with
    its state dict loaded as a0 is (strictly)."""
    name = request.param
    torch.manual_seed(0)
    tv = randomize(getattr(torchvision.models, name)(num_classes=NUM_CLASSES))
    net = create_supernet(name, num_classes=NUM_CLASSES, stem="imagenet")
    load_a0_weights(net, tv.state_dict())
    return name, tv, net.eval()


def test_every_torchvision_resnet_is_a_registered_family_with_a_config() -> None:
    assert list(TORCHVISION_RESNETS) == FAMILIES
    assert set(FAMILIES) <= set(list_families())
    for name in FAMILIES:
        conf = yaml.safe_load((rlnas.CONF_DIR / "model" / f"{name}.yaml").read_text())
        assert conf["name"] == name and conf["kwargs"]["stem"] in ("imagenet", "cifar")
        assert isinstance(conf["resolution"], int)


@torch.no_grad()
def test_the_maximal_network_is_torchvision(family: tuple[str, nn.Module, ElasticResNet]) -> None:
    name, tv, net = family
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    assert net.count_params(net.space.max_arch()) == count_params(tv)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    want = tv(x)
    assert torch.allclose(net(x), want, atol=1e-4, rtol=1e-4), name
    plain = net.extract(net.space.max_arch()).eval()
    assert set(plain.state_dict()) == set(tv.state_dict())
    if TORCHVISION_RESNETS[name].block == "basic":
        assert list(plain.state_dict()) == list(tv.state_dict())  # in torchvision's order too
    assert torch.allclose(plain(x), want, atol=1e-4, rtol=1e-4), name


@torch.no_grad()
def test_sub_networks_extract_with_torchvision_names(family: tuple[str, nn.Module, ElasticResNet]) -> None:
    name, tv, net = family
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for arch in (net.space.min_arch(), net.space.sample(np.random.default_rng(3))):
        with net.active(arch):
            expected = net(x)
        plain = net.extract(arch).eval()
        got = plain(x)
        assert got.shape == (1, NUM_CLASSES)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (arch.short(), (got - expected).abs().max())
        assert set(plain.state_dict()) <= set(tv.state_dict())
        assert not any("Elastic" in type(m).__name__ for m in plain.modules())
        assert net.count_params(arch) == count_params(plain) < count_params(tv)
    assert net.active_arch == net.space.max_arch()


def test_the_state_dict_says_which_family_it_is(family: tuple[str, nn.Module, ElasticResNet]) -> None:
    name, tv, _ = family
    assert detect_torchvision_resnet(tv.state_dict()) == (name, NUM_CLASSES)
    assert detect_a0_family(tv.state_dict()) == (name, NUM_CLASSES)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_max_arch_is_torchvision(name: str, num_classes: int) -> None:
    with torch.device("meta"):
        net = create_supernet(name, num_classes=num_classes, stem="cifar")
        tv = getattr(torchvision.models, name)(num_classes=num_classes)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert ours == theirs
    assert net.count_params(net.space.max_arch()) == count_params(tv)
    assert net.num_classes == num_classes and net.task == "classification"


def test_torchvision_weights_give_torchvision_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = randomize(torchvision.models.resnet50(num_classes=7))
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    net = create_supernet("resnet50", num_classes=7, stem="imagenet")
    assert net.load_torchvision_weights(path) == []
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), tv(x), atol=1e-5)
    other = create_supernet("resnet_tiny")
    with pytest.raises(ValueError, match="resnet_tiny"):
        other.load_torchvision_weights(tv.state_dict())


def test_torchvision_weights_with_another_head_skip_the_classifier() -> None:
    with torch.device("meta"):
        tv = torchvision.models.resnet50(num_classes=1000)
        net = create_supernet("resnet50", num_classes=10)
    assert net.load_torchvision_weights(tv.state_dict()) == ["fc.weight", "fc.bias"]


# ----------------------------------------------------------------------------- a0 of another family


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet18(num_classes=10).state_dict()


def test_an_a0_of_another_family_names_it(resnet18_state: dict[str, torch.Tensor]) -> None:
    with torch.device("meta"):
        resnet34 = create_supernet("resnet34", num_classes=10)
        mobilenet = create_supernet("mobilenet_v1", num_classes=5)
    for supernet, extra in ((resnet34, ""), (mobilenet, " (and an a0 trained for this task's 5 classes)")):
        with pytest.raises(A0Error) as info:
            load_a0_weights(supernet, resnet18_state, "a0.pt")
        message = str(info.value)
        assert message == (f"a0.pt looks like resnet18 (num_classes=10), not {supernet.space.family}: "
                           f"use model=resnet18{extra}")


def test_an_a0_of_the_family_with_another_class_count_says_so(resnet18_state: dict[str, torch.Tensor]) -> None:
    with torch.device("meta"):
        resnet18 = create_supernet("resnet18", num_classes=4)
    with pytest.raises(A0Error, match=r"is resnet18 with num_classes=10, but this task has 4 classes .*fc\.weight"):
        load_a0_weights(resnet18, resnet18_state, "a0.pt")


def test_a_state_dict_that_is_no_supported_resnet_lists_the_supported_ones() -> None:
    with torch.device("meta"):
        mobilenet_v2 = torchvision.models.mobilenet_v2(num_classes=10).state_dict()
        shallow = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]).state_dict()
        resnet50 = create_supernet("resnet50", num_classes=10)
    listing = "supported: torchvision's " + ", ".join(FAMILIES)
    for state, found in ((mobilenet_v2, "no conv1.weight"), (shallow, "basic blocks, depths (1, 1, 1, 1)")):
        with pytest.raises(NotAResNetError) as info:
            detect_torchvision_resnet(state)
        assert found in str(info.value) and str(info.value).endswith(listing)
        with pytest.raises(A0Error) as info:
            detect_a0_family(state)
        assert str(info.value).startswith("a0 is not") and "\n" not in str(info.value)
        with pytest.raises(A0Error) as info:
            load_a0_weights(resnet50, state, "a0.pt")
        message = str(info.value)
        assert message.startswith("a0.pt does not fit model=resnet50: it is not") and message.endswith(listing)
        assert "\n" not in message
    # a family that is no torchvision ResNet keeps its own message
    with torch.device("meta"):
        tiny = create_supernet("resnet_tiny", num_classes=10)
    with pytest.raises(A0Error, match="does not fit resnet_tiny"):
        load_a0_weights(tiny, mobilenet_v2, "a0.pt")


# ----------------------------------------------------------------------------- basic blocks, tiny


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@torch.no_grad()
def test_basic_block_sub_networks_equal_the_supernet(stem: str) -> None:
    torch.manual_seed(4)
    net = randomize(ElasticResNet(BASIC_TINY, num_classes=5, stem=stem), seed=4)
    assert net.layer1[0].downsample is None and net.layer2[0].downsample is not None
    x = torch.randn(2, 3, 32, 32)
    keys = set()
    for arch in archs(net.space, n_random=12, seed=5):
        with net.active(arch):
            expected = net(x)
        plain = net.extract(arch).eval()
        assert torch.allclose(plain(x), expected, atol=1e-5, rtol=1e-4), arch.short()
        assert all(isinstance(m, PLAIN) or not m._parameters for m in plain.modules())
        plan = net.channel_plan(arch)
        assert plan["stem"]["conv"]["out"] == plan["stages"][0][0][0] == plain.conv1.out_channels  # tied stem
        assert [[list(c.weight.shape[:2]) for c in (b.conv1, b.conv2)] for b in plain.layer1] == \
            [[[mid, cin], [out, mid]] for cin, mid, out in plan["stages"][0]]
        assert net._count_layer_macs(arch, 32) == Supernet._count_layer_macs(net, arch, 32)
        keys.add(net.network_key(arch))
    assert len(keys) > 1


def test_basic_block_sorting_keeps_the_maximal_network_and_trains() -> None:
    torch.manual_seed(6)
    net = randomize(ElasticResNet(BASIC_TINY, num_classes=5, stem="cifar"), seed=6)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
        net.sort_channels()
        assert torch.allclose(net(x), before, atol=1e-5)
    stream = net.bn1.weight.abs() + sum(b.bn2.weight.abs() for b in net.layer1)
    assert torch.all(stream[:-1] >= stream[1:])  # the stem and layer1 share one sorted stream
    net.train().set_active(net.space.min_arch())
    net(x).sum().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad[net.layer1[0].conv1.in_sel:].abs().sum() == 0
