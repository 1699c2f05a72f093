"""Elastic supernets: maximal networks of the published sizes (the ResNets' equality to torchvision
is in tests/test_resnet_families.py), exact extraction, sorting, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import PLAIN, archs, randomize
from torch import nn

import rlnas
from rlnas.arch import Arch, InvalidArchError
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet
from rlnas.spaces.elastic import ElasticBatchNorm2d, count_macs, count_params
from rlnas.spaces.mobilenet import MOBILENET_TINY, ElasticMobileNetV1Backbone
from rlnas.spaces.resnet import RESNEXT_TINY, ElasticResNet

TINY = ["resnet_tiny", "mobilenet_tiny"]
CONF = rlnas.CONF_DIR / "model"


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


ALL_TINY = ["resnet_tiny", "mobilenet_tiny", "ssd_tiny"]


def run(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of ``net`` as a list (a classifier gives one tensor, SSD ``(loc, conf)``)."""
    with torch.no_grad():
        out = net(x)
    return list(out) if isinstance(out, tuple) else [out]


def same_outputs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("family", ALL_TINY)
def test_active_runs_the_arch_and_restores_the_previous_one(family: str) -> None:
    torch.manual_seed(14)
    net = randomize(create_supernet(family))
    big, small = net.space.max_arch(), net.space.min_arch()
    other = net.space.sample(np.random.default_rng(14))
    x = torch.randn(1, 3, 32, 32)
    net.set_active(small)
    expected = run(net, x)
    net.set_active(other)
    before = run(net, x)
    with net.active(small) as same:
        assert same is net and net.active_arch == small
        assert same_outputs(run(net, x), expected)
        with net.active(big):  # nests
            assert net.active_arch == big
        assert net.active_arch == small
    assert net.active_arch == other and same_outputs(run(net, x), before)
    with pytest.raises(RuntimeError, match="inside"), net.active(small):
        raise RuntimeError("inside the block")
    assert net.active_arch == other and same_outputs(run(net, x), before)
    top = net.space.max_arch()
    with pytest.raises(InvalidArchError), net.active(Arch("not_" + family, top.depths, top.widths, top.expands)):
        pass
    assert net.active_arch == other
    # extracting and counting go through active(): what forward runs stays as it was
    net.extract(small)
    assert net.count_params(small) > 0 and net.count_macs(small, 32) > 0
    assert net.active_arch == other and same_outputs(run(net, x), before)


@pytest.mark.parametrize("family", ALL_TINY)
def test_counts_equal_a_direct_count_on_the_extracted_network(family: str) -> None:
    torch.manual_seed(15)
    net = create_supernet(family)
    seen = set()
    for arch in archs(net.space, n_random=3, seed=15):
        plain = net.extract(arch)  # real weights on the CPU, not the meta device
        params = sum(p.numel() for p in plain.parameters())
        assert net.count_params(arch) == params == count_params(plain)
        for resolution in (32, 48):
            macs = count_macs(plain, (1, 3, resolution, resolution))  # a real forward
            assert net.count_macs(arch, resolution) == macs > 0
        seen.add((params, net.count_macs(arch, 32)))
    assert len(seen) > 1
    if family == "ssd_tiny":  # detection: the default input is the model resolution
        arch = net.space.min_arch()
        assert net.count_macs(arch) == count_macs(net.extract(arch), net.input_shape)


@pytest.mark.parametrize("family", ALL_TINY)
def test_extract_keeps_the_supernet_mode(family: str) -> None:
    net = create_supernet(family)
    arch = net.space.sample(np.random.default_rng(16))
    for training in (True, False):
        net.train(training)
        assert all(m.training == training for m in net.extract(arch).modules())


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


# ----------------------------------------------------------------------------- network keys

KEY_FAMILIES = ["resnet50", "resnext101_32x8d", "resnet_tiny", "mobilenet_v1", "mobilenet_tiny",
                "ssd_mobilenet_v1", "ssd_tiny"]


def layer_shapes(module: nn.Module) -> tuple:
    """State-dict names and shapes of a plain module."""
    return tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())


def built_network(module: nn.Module) -> tuple:
    """Everything that identifies a plain network: shapes and the module tree with every layer's
    hyper-parameters (strides, groups, paddings, pools)."""
    return layer_shapes(module), repr(module)


def with_stage(arch: Arch, stage: int, width: float, expand: float) -> Arch:
    widths = list(arch.widths)
    widths[stage] = width
    expands = list(arch.expands)
    expands[stage] = (expand,) * arch.depths[stage]
    return Arch(arch.family, arch.depths, tuple(widths), tuple(expands))


@pytest.mark.parametrize(("family", "n_random", "twins"), [
    ("resnet_tiny", 200, (0.25, 0.5)), ("mobilenet_tiny", 200, ()), ("ssd_tiny", 200, ()),
    ("resnet50", 40, (0.15, 0.2)),
], ids=["resnet_tiny", "mobilenet_tiny", "ssd_tiny", "resnet50"])
def test_network_key_is_equal_iff_the_built_networks_are(family: str, n_random: int, twins: tuple) -> None:
    device = "meta" if family == "resnet50" else "cpu"  # meta: shapes without weights, cheap
    with torch.device(device):
        net = create_supernet(family, num_classes=5)
    candidates = archs(net.space, n_random, seed=11)
    # twins: the first stage at its narrowest width with expand ratios that round to one width
    candidates += [with_stage(a, 0, net.space.width_choices[0], e) for a in candidates[:10] for e in twins]
    by_key: dict[str, set] = {}
    by_shapes: dict[tuple, set] = {}
    for arch in candidates:
        key, plain = net.network_key(arch), net.extract(arch)
        by_key.setdefault(key, set()).add(built_network(plain))
        by_shapes.setdefault(layer_shapes(plain), set()).add(key)
    assert all(len(networks) == 1 for networks in by_key.values())  # equal keys: identical networks
    assert all(len(keys) == 1 for keys in by_shapes.values())  # different keys: different shapes
    distinct_archs = len(set(candidates))
    assert len(by_key) <= distinct_archs
    if family.startswith("resnet"):
        assert len(by_key) < distinct_archs  # rounding really merges architectures


def test_resnet50_expands_that_round_alike_are_one_network() -> None:
    with torch.device("meta"):
        net = create_supernet("resnet50")
    base = net.space.max_arch()
    a, b = (with_stage(base, 0, 0.5, e) for e in (0.15, 0.2))
    assert a != b and net.network_key(a) == net.network_key(b)
    assert net.channel_plan(a)["stages"][0] == [[64, 24, 128], [128, 24, 128], [128, 24, 128]]
    assert layer_shapes(net.extract(a)) == layer_shapes(net.extract(b))
    c = with_stage(base, 0, 0.5, 0.25)
    assert net.network_key(c) != net.network_key(a)
    # a different depth is another network even with the same remaining channels
    shallow = Arch("resnet50", (2, *base.depths[1:]), base.widths, (base.expands[0][:2], *base.expands[1:]))
    assert net.network_key(shallow) != net.network_key(base)


def test_colliding_resnet_tiny_archs_extract_the_same_weights() -> None:
    torch.manual_seed(12)
    net = randomize(create_supernet("resnet_tiny", num_classes=3))
    base = net.space.max_arch()
    a, b = (with_stage(base, 0, 0.5, e) for e in net.space.expand_choices)  # both round to 4 channels
    assert a != b and net.network_key(a) == net.network_key(b)
    plain_a, plain_b = net.extract(a), net.extract(b)
    state_a, state_b = plain_a.state_dict(), plain_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # the very same network
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain_a(x), plain_b(x))


@pytest.mark.parametrize("family", KEY_FAMILIES)
def test_network_key_is_a_deterministic_canonical_string(family: str) -> None:
    with torch.device("meta"):
        net, twin = create_supernet(family), create_supernet(family)
    rng = np.random.default_rng(13)
    for arch in [net.space.max_arch(), net.space.min_arch(), net.space.sample(rng)]:
        key = net.network_key(arch)
        assert isinstance(key, str)
        assert key == net.network_key(arch) == twin.network_key(Arch.from_json(arch.to_json()))
        net.set_active(net.space.min_arch())  # the active arch does not matter
        assert net.network_key(arch) == key
        data = json.loads(key)
        assert set(data) == {"family", "plan"} and data["family"] == family
        assert data["plan"] == net.channel_plan(arch)
        assert key == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert net.network_key(net.space.max_arch()) != net.network_key(net.space.min_arch())
    top = net.space.max_arch()
    with pytest.raises(InvalidArchError):
        net.network_key(Arch("not_" + family, top.depths, top.widths, top.expands))


def test_network_key_covers_the_fixed_layers() -> None:
    with torch.device("meta"):
        arch = create_supernet("resnet_tiny").space.max_arch()
        keys = {create_supernet("resnet_tiny", num_classes=n, stem=stem).network_key(arch)
                for n in (3, 5) for stem in ("cifar", "imagenet")}
        assert len(keys) == 4  # classifier size and stem stride/pool are part of the network
        ssd = {create_supernet("ssd_tiny", num_classes=n, head_kernel=k).network_key(
               create_supernet("ssd_tiny").space.max_arch()) for n in (2, 3) for k in (1, 3)}
        assert len(ssd) == 4
    plan = create_supernet("ssd_tiny", num_classes=3).channel_plan(create_supernet("ssd_tiny").space.min_arch())
    widths = [plan["backbone"]["stages"][s][-1][1] for s in plan["backbone"]["features"]]
    assert [h["in"] for h in plan["loc"][:2]] == widths and plan["extras"][0]["conv1"]["in"] == widths[-1]
    assert [h["out"] for h in plan["conf"]] == [4 * 4] * 6  # (3 classes + background) x 4 boxes


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
    assert isinstance(backbone, Supernet) and backbone.task == "features"
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
