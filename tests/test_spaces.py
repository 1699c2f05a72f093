"""Elastic supernets: torchvision-equal maximal networks, exact extraction, sorting, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from rlnas.arch import Arch
from rlnas.spaces import create_supernet
from rlnas.spaces.elastic import ElasticBatchNorm2d, count_macs, count_params
from rlnas.spaces.mobilenet import MOBILENET_TINY, ElasticMobileNetV1Backbone
from rlnas.spaces.resnet import RESNEXT_TINY, ElasticResNet

TINY = ["resnet_tiny", "mobilenet_tiny"]
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
PLAIN = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
         nn.Sequential, nn.ModuleList)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so slicing mistakes show in outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return net.eval()


def archs(space, n_random: int = 4, seed: int = 0) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(n_random)]


def assert_extract_matches(net, arch: Arch, x: torch.Tensor, atol: float = 1e-5) -> nn.Module:
    net.set_active(arch)
    with torch.no_grad():
        expected = net(x)
        plain = net.extract(arch)
        got = plain(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=atol, rtol=1e-4), (arch.short(), (got - expected).abs().max())
    return plain


# ----------------------------------------------------------------------------- maximal networks


@pytest.mark.parametrize(("family", "reference"), [
    ("resnet50", torchvision.models.resnet50),
    ("resnext101_32x8d", torchvision.models.resnext101_32x8d),
])
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_max_arch_is_torchvision(family: str, reference, num_classes: int) -> None:
    with torch.device("meta"):
        net = create_supernet(family, num_classes=num_classes, stem="cifar")
        tv = reference(num_classes=num_classes)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert ours == theirs
    assert net.count_params(net.space.max_arch()) == count_params(tv)
    assert net.num_classes == num_classes and net.task == "classification"


def test_published_parameter_counts() -> None:
    with torch.device("meta"):
        assert create_supernet("resnet50", num_classes=1000).count_params(
            create_supernet("resnet50").space.max_arch()) == 25_557_032
        net = create_supernet("mobilenet_v1", num_classes=1000)
    assert net.count_params(net.space.max_arch()) == 4_231_976


def mobilenet_v1_params(num_classes: int) -> int:
    """MobileNetV1 1.0 from the paper's table: conv weights, BN affine, classifier."""
    blocks = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)] + [(512, 512)] * 5 + \
             [(512, 1024), (1024, 1024)]
    total = 3 * 32 * 9 + 2 * 32
    for cin, cout in blocks:
        total += cin * 9 + 2 * cin + cin * cout + 2 * cout
    return total + 1024 * num_classes + num_classes


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_mobilenet_v1_max_matches_formula(num_classes: int) -> None:
    with torch.device("meta"):
        net = create_supernet("mobilenet_v1", num_classes=num_classes)
    assert count_params(net) == mobilenet_v1_params(num_classes)
    assert net.count_params(net.space.max_arch()) == mobilenet_v1_params(num_classes)


def test_macs_of_the_published_models() -> None:
    with torch.device("meta"):
        resnet = create_supernet("resnet50", num_classes=1000)
        mobilenet = create_supernet("mobilenet_v1", num_classes=1000)
        resnext = create_supernet("resnext101_32x8d", num_classes=1000)
    assert resnet.count_macs(resnet.space.max_arch(), 224) == 4_089_184_256
    assert mobilenet.count_macs(mobilenet.space.max_arch(), 224) == 568_740_352
    # room for the search: the smallest sub-network is several times cheaper than the original
    for net in (resnet, mobilenet, resnext):
        ratio = net.count_macs(net.space.max_arch(), 224) / net.count_macs(net.space.min_arch(), 224)
        assert ratio > 6, (net.space.family, ratio)


def test_count_macs_of_a_known_conv() -> None:
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(8 * 25, 3))
    assert count_macs(conv, (1, 4, 5, 5)) == 8 * 25 * 2 * 9 + 200 * 3


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


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_extract_equals_supernet(family: str, stem: str) -> None:
    torch.manual_seed(1)
    net = randomize(create_supernet(family, num_classes=5, stem=stem))
    x = torch.randn(2, 3, 32, 32)
    outputs = set()
    for arch in archs(net.space):
        plain = assert_extract_matches(net, arch, x)
        assert all(isinstance(m, PLAIN) or type(m).__module__.startswith("rlnas.spaces")
                   and not any(isinstance(c, nn.Parameter) for c in m._parameters.values())
                   for m in plain.modules())
        assert not any("Elastic" in type(m).__name__ for m in plain.modules())
        assert count_params(plain) == net.count_params(arch)
        outputs.add(round(float(plain(x).detach().sum()), 4))
    assert len(outputs) > 1  # different sub-networks compute different functions


def test_extract_leaves_the_active_arch_and_copies_weights() -> None:
    net = create_supernet("resnet_tiny").eval()
    small = net.space.min_arch()
    plain = net.extract(small)
    assert net.active_arch == net.space.max_arch()
    with torch.no_grad():
        plain.conv1.weight.zero_()
    assert net.conv1.weight.abs().sum() > 0


def test_extract_grouped_resnext() -> None:
    torch.manual_seed(2)
    net = randomize(ElasticResNet(RESNEXT_TINY, num_classes=3, stem="cifar"))
    x = torch.randn(2, 3, 16, 16)
    for arch in archs(net.space, 6):
        plain = assert_extract_matches(net, arch, x)
        mid = net.channel_plan(arch)["stages"][0][0][1]
        assert plain.layer1[0].conv2.groups == 4 and plain.layer1[0].conv2.out_channels == mid


def test_extract_resnet50_random_arch() -> None:
    torch.manual_seed(3)
    net = randomize(create_supernet("resnet50", num_classes=10, stem="cifar"))
    arch = net.space.sample(np.random.default_rng(5))
    assert_extract_matches(net, arch, torch.randn(1, 3, 16, 16), atol=1e-4)


def test_channel_plan_rounds_to_multiples() -> None:
    with torch.device("meta"):
        resnet = create_supernet("resnet50")
        resnext = create_supernet("resnext101_32x8d")
    for net, mid_multiple in ((resnet, 8), (resnext, 32)):
        for arch in archs(net.space, 10):
            for stage in net.channel_plan(arch)["stages"]:
                for in_ch, mid, out in stage:
                    assert in_ch % 8 == 0 and out % 8 == 0 and mid % mid_multiple == 0 and mid > 0
    plan = resnet.channel_plan(resnet.space.max_arch())
    assert plan["stages"][0][0] == [64, 64, 256] and plan["stages"][3][2] == [2048, 512, 2048]


# ----------------------------------------------------------------------------- training behaviour


def test_subnet_training_touches_only_its_channels() -> None:
    torch.manual_seed(4)
    net = create_supernet("resnet_tiny", num_classes=4).train()
    arch = net.space.min_arch()
    net.set_active(arch)
    bn = net.layer1[0].bn1
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 16, 16)).sum().backward()
    mid = net.channel_plan(arch)["stages"][0][0][1]
    changed = (bn.running_mean != before).nonzero().flatten()
    assert changed.tolist() == list(range(mid))
    grad = net.layer1[0].conv1.weight.grad
    assert grad[:mid].abs().sum() > 0 and grad[mid:].abs().sum() == 0


def test_grouped_subnet_updates_each_groups_leading_channels() -> None:
    net = ElasticResNet(RESNEXT_TINY, num_classes=3, stem="cifar").train()
    net.set_active(net.space.min_arch())
    bn = net.layer1[0].bn2
    assert isinstance(bn, ElasticBatchNorm2d)
    before = bn.running_var.clone()
    net(torch.randn(4, 3, 8, 8))
    # 4 groups of 4 channels, one active per group
    assert (bn.running_var != before).nonzero().flatten().tolist() == [0, 4, 8, 12]


# ----------------------------------------------------------------------------- channel sorting


@pytest.mark.parametrize("build", [
    lambda: create_supernet("resnet_tiny", num_classes=4, stem="imagenet"),
    lambda: create_supernet("mobilenet_tiny", num_classes=4),
    lambda: ElasticResNet(RESNEXT_TINY, num_classes=4, stem="cifar"),
])
def test_sort_channels_preserves_the_max_net(build) -> None:
    torch.manual_seed(5)
    net = randomize(build(), seed=5)
    x = torch.randn(2, 3, 32, 32)
    small = net.space.min_arch()
    with torch.no_grad():
        net.set_active(small)
        small_before = net(x)
        net.set_active(net.space.max_arch())
        before = net(x)
        net.sort_channels()
        after = net(x)
        net.set_active(small)
        small_after = net(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(small_before, small_after, atol=1e-3)  # the order really changed


def test_sort_puts_important_channels_first() -> None:
    net = randomize(create_supernet("resnet_tiny"), seed=6)
    net.sort_channels()
    importance = net.layer2[1].conv3.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    stream = sum(b.bn3.weight.abs() for b in net.layer1) + net.layer1[0].downsample[1].weight.abs()
    assert torch.all(stream[:-1] >= stream[1:])


# ----------------------------------------------------------------------------- backbone for detection


def test_backbone_features_strides_and_channels() -> None:
    torch.manual_seed(7)
    backbone = randomize(ElasticMobileNetV1Backbone(MOBILENET_TINY, stem="imagenet", family="ssd_tiny_test"))
    assert backbone.space.family == "ssd_tiny_test"
    x = torch.randn(1, 3, 64, 64)
    for arch in archs(backbone.space):
        backbone.set_active(arch)
        feats = backbone.forward_features(x)
        assert [f.shape[1] for f in feats] == backbone.out_channels(arch)
        assert [f.shape[-1] for f in feats] == [64 // 8, 64 // 16]  # stem 2 x stages 1, 2, 2, 2
        plain = backbone.extract(arch)
        for got, want in zip(plain(x), feats, strict=True):
            assert torch.allclose(got, want, atol=1e-5)
    assert backbone.max_out_channels() == [64, 128]


def test_backbone_sort_returns_the_feature_permutations() -> None:
    torch.manual_seed(8)
    backbone = randomize(ElasticMobileNetV1Backbone(MOBILENET_TINY), seed=8)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = backbone(x)
        perms = backbone.sort_channels()
        after = backbone(x)
    assert len(perms) == 2
    for b, a, perm in zip(before, after, perms, strict=True):
        assert torch.allclose(b[:, perm], a, atol=1e-5)


# ----------------------------------------------------------------------------- configs and export


@pytest.mark.parametrize("family", ["resnet50", "resnext101_32x8d", "mobilenet_v1", "resnet_tiny", "mobilenet_tiny"])
def test_model_config(family: str) -> None:
    conf = yaml.safe_load((CONF / f"{family}.yaml").read_text())
    assert conf["name"] == family and isinstance(conf["resolution"], int)
    if family in TINY:
        net = create_supernet(conf["name"], num_classes=3, **conf["kwargs"])
        assert net.num_classes == 3 and net.space.family == family


def test_unknown_stem_is_rejected() -> None:
    with pytest.raises(ValueError, match="cifar"):
        create_supernet("resnet_tiny", stem="svhn")


@pytest.mark.parametrize("family", TINY)
def test_extract_exports_to_onnx_and_openvino(family: str, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    torch.manual_seed(9)
    net = randomize(create_supernet(family, num_classes=10, stem="cifar"))
    arch = net.space.sample(np.random.default_rng(9))
    plain = net.extract(arch).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(plain, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    assert (tmp_path / "m.onnx").stat().st_size > 1000
    model = ov.convert_model(plain, example_input=x, input=[1, 3, 32, 32])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x.numpy())[0]
    with torch.no_grad():
        want = plain(x).numpy()
    assert np.allclose(got, want, atol=1e-4)
