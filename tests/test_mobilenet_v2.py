"""The mobilenet_v2 family (issue 23, what a user would pick instead): its maximal network is
torchvision's ``mobilenet_v2`` (strict state dicts both ways, equal outputs), sub-networks extract
exactly, sorting keeps the maximal network, and experiments/train_a0.py trains one that
torchvision loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import archs, randomize, train_a0_argv

from rlnas.arch import Arch, InvalidArchError
from rlnas.spaces import create_supernet, get_space, list_families
from rlnas.spaces.elastic import count_macs, count_params
from rlnas.supernet.a0 import build_a0, load_a0_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import train_a0  # noqa: E402

FAMILY = "mobilenet_v2"


def test_registered_with_a_config_and_a_space() -> None:
    assert FAMILY in list_families()
    space = get_space(FAMILY)
    assert space.num_stages == 6 and space.max_depths == (2, 3, 4, 3, 3, 1)
    assert space.expand_choices == (3.0, 4.0, 6.0) and space.size() > 1
    with pytest.raises(InvalidArchError):
        space.validate(Arch(FAMILY, (5, 3, 4, 3, 3, 1), (1.0,) * 6))


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_max_arch_has_torchvisions_state_dict(num_classes: int) -> None:
    with torch.device("meta"):
        net = create_supernet(FAMILY, num_classes=num_classes)
        tv = torchvision.models.mobilenet_v2(num_classes=num_classes)
        plain = net.extract(net.space.max_arch())
    theirs = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == theirs
    assert list(plain.state_dict()) == list(tv.state_dict())  # torchvision's names, in its order
    assert net.count_params(net.space.max_arch()) == count_params(tv)
    if num_classes == 1000:
        assert count_params(tv) == 3_504_872


@torch.no_grad()
def test_the_maximal_network_is_torchvision() -> None:
    torch.manual_seed(0)
    tv = randomize(torchvision.models.mobilenet_v2(num_classes=5), seed=1)
    net = create_supernet(FAMILY, num_classes=5).eval()
    load_a0_weights(net, tv.state_dict())  # torchvision -> supernet, strictly
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want = tv(x)
    assert torch.allclose(net(x), want, atol=1e-5, rtol=1e-4)
    plain = net.extract(net.space.max_arch()).eval()
    again = torchvision.models.mobilenet_v2(num_classes=5).eval()
    again.load_state_dict(plain.state_dict(), strict=True)  # extracted -> torchvision, strictly
    assert torch.allclose(again(x), want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(plain(x), want, atol=1e-5, rtol=1e-4)
    assert net.count_macs(net.space.max_arch(), 224) == count_macs(tv, (1, 3, 224, 224))


@torch.no_grad()
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_sub_networks_extract_exactly(stem: str) -> None:
    torch.manual_seed(3)
    net = randomize(create_supernet(FAMILY, num_classes=4, stem=stem), seed=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for arch in archs(net.space, n_random=4, seed=5):
        with net.active(arch):
            expected = net(x)
        plain = net.extract(arch).eval()
        assert torch.allclose(plain(x), expected, atol=1e-5, rtol=1e-4), arch.short()
        assert not any("Elastic" in type(m).__name__ for m in plain.modules())
        assert net.count_params(arch) == count_params(plain)
    assert net.count_macs(net.space.min_arch(), 32) < net.count_macs(net.space.max_arch(), 32)
    assert net.active_arch == net.space.max_arch()


def test_network_keys_tell_networks_apart() -> None:
    with torch.device("meta"):
        net = create_supernet(FAMILY)
    space, rng = net.space, np.random.default_rng(6)
    samples = [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(20)]
    keys = {net.network_key(a) for a in samples}
    plans = {json.dumps(net.channel_plan(a), sort_keys=True) for a in samples}
    assert len(keys) == len(plans) > 2


@torch.no_grad()
def test_sorting_keeps_the_maximal_network() -> None:
    torch.manual_seed(7)
    net = randomize(create_supernet(FAMILY, num_classes=4), seed=7)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    small = net.space.min_arch()
    with net.active(small):
        small_before = net(x)
    before = net(x)
    net.sort_channels()
    assert torch.allclose(net(x), before, atol=1e-4, rtol=1e-4)
    with net.active(small):
        assert not torch.allclose(net(x), small_before, atol=1e-3)  # the order really changed


def test_train_a0_writes_a_mobilenet_v2_torchvision_loads(tmp_path: Path) -> None:
    out = tmp_path / "a0"
    argv = train_a0_argv(FAMILY, tmp_path, 8, 4)
    assert train_a0.main(argv) == 0
    record = json.loads((out / "a0.json").read_text())
    assert record["family"] == FAMILY and record["completed"] and record["model_kwargs"] == {"stem": "imagenet"}
    state = torch.load(out / "a0.pt", weights_only=True)
    model = torchvision.models.mobilenet_v2(num_classes=3).eval()
    model.load_state_dict(state, strict=True)
    ours = build_a0(FAMILY, {"num_classes": 3, "stem": "imagenet"}, out / "a0.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), model(x), atol=1e-5, rtol=1e-4)
