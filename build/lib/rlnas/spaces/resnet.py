"""Elastic ResNet / ResNeXt supernets (Once-for-All style) whose maximal network is torchvision's.

Elastic dimensions, per stage (``layerN``):

- depth: the leading blocks run, trailing ones are skipped;
- width multiplier: scales the stage's output channels (the residual stream); the first block's
  projection conv adapts to the previous stage's active width;
- expand ratio, per block: bottleneck width = ``expand * active output width``, rounded to a
  multiple of 8 (of the group count for ResNeXt, whose 32 groups stay while each group narrows).

Module names equal torchvision's (``conv1``, ``layer3.5.conv2``, ``layer1.0.downsample.0``, ...), so
the maximal network has torchvision's state dict, keys and shapes, and loads its checkpoints.

The ``cifar`` stem runs the same 7x7 conv with stride 1 and no max pool (overall stride 8 instead of
32), so its parameters equal the ``imagenet`` stem's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import lcm
from pathlib import Path

import torch
from torch import Tensor, nn

from rlnas.arch import Arch, SearchSpace
from rlnas.spaces.base import Device, Supernet, conv_spec
from rlnas.spaces.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLinear,
    GroupedSel,
    LayerMacs,
    Sel,
    importance_order,
    make_divisible,
    permute_,
    permute_bn_,
    permute_grouped_inputs_,
)
from rlnas.spaces.registry import register_family

STEMS = ("imagenet", "cifar")


@dataclass(frozen=True)
class ResNetConfig:
    """The numbers that define one ResNet family.

    :param stage_channels: maximal output channels of each stage (torchvision: ``planes * 4``).
    :param expand_choices: bottleneck width / output width; the last is the maximal network's.
    :param groups: groups of the 3x3 conv (32 for ResNeXt-32x8d); constant across the space.
    :param divisor: channel counts are rounded to multiples of this.
    """

    family: str
    stem_channels: int
    stage_channels: tuple[int, ...]
    strides: tuple[int, ...]
    max_depths: tuple[int, ...]
    min_depths: tuple[int, ...]
    width_choices: tuple[float, ...]
    expand_choices: tuple[float, ...]
    groups: int = 1
    divisor: int = 8

    @property
    def mid_divisor(self) -> int:
        return lcm(self.divisor, self.groups)

    def space(self) -> SearchSpace:
        return SearchSpace(self.family, self.max_depths, self.min_depths, self.width_choices,
                           self.expand_choices, tuple(f"layer{i + 1}" for i in range(len(self.max_depths))))

    def max_mid(self, stage: int) -> int:
        return round(self.stage_channels[stage] * self.expand_choices[-1])

    def out_channels(self, stage: int, width: float) -> int:
        return make_divisible(width * self.stage_channels[stage], self.divisor, self.stage_channels[stage])

    def mid_channels(self, stage: int, out: int, expand: float) -> int:
        return make_divisible(expand * out, self.mid_divisor, self.max_mid(stage))


RESNET50 = ResNetConfig("resnet50", 64, (256, 512, 1024, 2048), (1, 2, 2, 2), (3, 4, 6, 3), (1, 2, 4, 1),
                        (0.5, 0.65, 0.8, 1.0), (0.1, 0.15, 0.2, 0.25))
RESNEXT101_32X8D = ResNetConfig("resnext101_32x8d", 64, (256, 512, 1024, 2048), (1, 2, 2, 2),
                                (3, 4, 23, 3), (1, 2, 8, 1), (0.5, 0.65, 0.8, 1.0),
                                (0.25, 0.5, 0.75, 1.0), groups=32)
RESNET_TINY = ResNetConfig("resnet_tiny", 8, (16, 32, 48), (1, 2, 2), (2, 2, 2), (1, 1, 1),
                           (0.5, 0.75, 1.0), (0.25, 0.5), divisor=4)
# not registered: exercises the grouped-conv code paths in tests at a tiny size
RESNEXT_TINY = ResNetConfig("resnext_tiny", 8, (16, 32), (1, 2), (2, 2), (1, 1), (0.5, 1.0),
                            (0.5, 1.0), groups=4, divisor=4)


class Bottleneck(nn.Module):
    """torchvision's bottleneck (v1.5: stride on the 3x3 conv) built from given layers."""

    def __init__(self, convs: list[nn.Conv2d], bns: list[nn.BatchNorm2d],
                 downsample: nn.Sequential | None) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = convs
        self.bn1, self.bn2, self.bn3 = bns
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ElasticBottleneck(Bottleneck):
    """A bottleneck whose input, bottleneck and output widths are set by :meth:`select`."""

    def __init__(self, in_ch: int, mid: int, out: int, stride: int, groups: int, projection: bool) -> None:
        convs = [ElasticConv2d(in_ch, mid, 1, bias=False),
                 ElasticConv2d(mid, mid, 3, stride, 1, groups=groups, bias=False),
                 ElasticConv2d(mid, out, 1, bias=False)]
        bns = [ElasticBatchNorm2d(mid), ElasticBatchNorm2d(mid), ElasticBatchNorm2d(out)]
        downsample = None
        if projection:
            downsample = nn.Sequential(ElasticConv2d(in_ch, out, 1, stride, bias=False), ElasticBatchNorm2d(out))
        super().__init__(convs, bns, downsample)
        self.groups = groups

    def mid_sel(self, mid: int) -> Sel:
        if self.groups == 1:
            return mid
        return GroupedSel(self.groups, mid // self.groups, self.conv2.out_channels // self.groups)

    def select(self, in_ch: int, mid: int, out: int) -> None:
        sel = self.mid_sel(mid)
        self.conv1.select(sel, in_ch)
        self.bn1.select(sel)
        self.conv2.select(sel, sel if self.groups == 1 else mid // self.groups)
        self.bn2.select(sel)
        self.conv3.select(out, sel)
        self.bn3.select(out)
        if self.downsample is not None:
            self.downsample[0].select(out, in_ch)
            self.downsample[1].select(out)

    def extract(self, device: Device = None) -> Bottleneck:
        """The selected sub-block as a plain :class:`Bottleneck`."""
        downsample = None
        if self.downsample is not None:
            downsample = nn.Sequential(self.downsample[0].extract(device), self.downsample[1].extract(device))
        return Bottleneck([c.extract(device) for c in (self.conv1, self.conv2, self.conv3)],
                          [b.extract(device) for b in (self.bn1, self.bn2, self.bn3)], downsample)

    @torch.no_grad()
    def sort_mid_channels(self) -> None:
        """Order the bottleneck channels by the L1 norm of the 1x1 conv weights reading them."""
        perm = importance_order(self.conv3.weight.abs().sum(dim=(0, 2, 3)), self.groups)
        permute_(self.conv3.weight, perm, 1)
        permute_bn_(self.bn2, perm)
        permute_(self.conv2.weight, perm, 0)
        if self.groups == 1:
            permute_(self.conv2.weight, perm, 1)
        else:
            permute_grouped_inputs_(self.conv2, perm)
        permute_bn_(self.bn1, perm)
        permute_(self.conv1.weight, perm, 0)


class ResNet(nn.Module):
    """A plain ResNet with torchvision's module names (what :meth:`ElasticResNet.extract` returns)."""

    def __init__(self, stem: tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module], layers: list[nn.Sequential],
                 fc: nn.Linear) -> None:
        super().__init__()
        self.conv1, self.bn1, self.maxpool = stem
        self.relu = nn.ReLU(inplace=True)
        for i, layer in enumerate(layers):
            setattr(self, f"layer{i + 1}", layer)
        self.num_layers = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ElasticResNet(Supernet):
    """Weight-sharing ResNet/ResNeXt supernet; the maximal architecture is torchvision's model.

    :param config: the family's numbers (:data:`RESNET50`, :data:`RESNEXT101_32X8D`, ...).
    :param num_classes: classifier outputs.
    :param stem: ``"imagenet"`` (7x7/2 conv + max pool) or ``"cifar"`` (same conv, stride 1, no pool).
    """

    def __init__(self, config: ResNetConfig, num_classes: int = 10, stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        self.config, self.stem, self.num_classes = config, stem, num_classes
        self.space = config.space()
        self.task = "classification"
        imagenet = stem == "imagenet"
        self.conv1 = ElasticConv2d(3, config.stem_channels, 7, 2 if imagenet else 1, 3, bias=False)
        self.bn1 = ElasticBatchNorm2d(config.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        in_ch = config.stem_channels
        for s, (out, stride, depth) in enumerate(zip(config.stage_channels, config.strides, config.max_depths, strict=True)):
            blocks = [ElasticBottleneck(in_ch if b == 0 else out, config.max_mid(s), out,
                                        stride if b == 0 else 1, config.groups, projection=b == 0)
                      for b in range(depth)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            in_ch = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = ElasticLinear(in_ch, num_classes)
        self.set_active(self.space.max_arch())

    @property
    def layers(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.space.num_stages)]

    def channel_plan(self, arch: Arch) -> dict:
        """The network ``arch`` builds (see :meth:`Supernet.channel_plan`): equal plans mean equal
        networks, even where rounding maps different ratios to one width.

        ``stages`` lists ``[in, mid, out]`` per active block (so the depth is each list's length);
        ``blocks`` the same blocks conv by conv as built (``conv1``-``conv3`` and the first block's
        projection ``downsample``, each ``{in, out, kernel, stride, groups}``); ``stem`` the first
        conv and whether a max pool follows; ``fc`` the classifier's ``[in, out]``.
        """
        self.space.validate(arch)
        config = self.config
        stages, blocks, in_ch = [], [], config.stem_channels
        for s, expands in enumerate(arch.expands):
            out = config.out_channels(s, arch.widths[s])
            stage = [[in_ch if b == 0 else out, config.mid_channels(s, out, e), out] for b, e in enumerate(expands)]
            stages.append(stage)
            blocks.append([_block_convs(block, config.strides[s] if b == 0 else 1, config.groups, b == 0)
                           for b, block in enumerate(stage)])
            in_ch = out
        stem = {"conv": conv_spec(3, config.stem_channels, 7, self.conv1.stride[0]),
                "maxpool": isinstance(self.maxpool, nn.MaxPool2d)}
        return {"stem": stem, "stages": stages, "blocks": blocks, "fc": [in_ch, self.num_classes]}

    def _count_layer_macs(self, arch: Arch, resolution: int) -> list[LayerMacs]:
        """:meth:`layer_macs` from the channel plan, in execution order (stem, then per block
        the projection and conv1-conv3; ~1000x cheaper than the meta forward, equal to it:
        ``tests/test_arch.py``)."""
        plan = self.channel_plan(arch)
        size = _conv_out(resolution, plan["stem"]["conv"])
        layers = [_conv_macs(plan["stem"]["conv"], size)]
        if plan["stem"]["maxpool"]:
            size = (size + 2 - 3) // 2 + 1
        for stage in plan["blocks"]:
            for block in stage:
                if block["downsample"] is not None:  # the projection runs first in this family's blocks
                    layers.append(_conv_macs(block["downsample"], _conv_out(size, block["downsample"])))
                for name in ("conv1", "conv2", "conv3"):
                    size = _conv_out(size, block[name])
                    layers.append(_conv_macs(block[name], size))
        fc_in, fc_out = plan["fc"]
        layers.append(LayerMacs("fc", 1, fc_in * fc_out))
        return layers

    def set_active(self, arch: Arch) -> None:
        """Validate ``arch`` and make :meth:`forward` run it."""
        plan = self.channel_plan(arch)
        for layer, blocks in zip(self.layers, plan["stages"], strict=True):
            for block, (in_ch, mid, out) in zip(layer, blocks, strict=False):
                block.select(in_ch, mid, out)
        self.fc.select(plan["stages"][-1][-1][2])
        self.active_arch = arch

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer, depth in zip(self.layers, self.active_arch.depths, strict=True):
            for block in layer[:depth]:
                x = block(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _extract_active(self, device: Device = None) -> ResNet:
        """The active architecture as a plain torchvision-named :class:`ResNet`."""
        stem = (self.conv1.extract(device), self.bn1.extract(device), _copy_pool(self.maxpool))
        layers = [nn.Sequential(*[block.extract(device) for block in layer[:depth]])
                  for layer, depth in zip(self.layers, self.active_arch.depths, strict=True)]
        return ResNet(stem, layers, self.fc.extract(device))

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Order every stage's output channels by the summed |BN gamma| of the layers writing the
        residual stream, then every bottleneck's channels by the L1 norm of the conv reading them.
        The maximal network computes the same function afterwards."""
        layers = self.layers
        for s, layer in enumerate(layers):
            bns = [block.bn3 for block in layer] + [layer[0].downsample[1]]
            perm = importance_order(sum(bn.weight.abs() for bn in bns))
            for block in layer:
                permute_(block.conv3.weight, perm, 0)
                permute_bn_(block.bn3, perm)
            permute_(layer[0].downsample[0].weight, perm, 0)
            permute_bn_(layer[0].downsample[1], perm)
            readers = [block.conv1 for block in layer[1:]]
            if s + 1 < len(layers):
                readers += [layers[s + 1][0].conv1, layers[s + 1][0].downsample[0]]
            for conv in readers:
                permute_(conv.weight, perm, 1)
            if s + 1 == len(layers):
                permute_(self.fc.weight, perm, 1)
        for layer in layers:
            for block in layer:
                block.sort_mid_channels()

    def load_torchvision_weights(self, state_dict: Mapping[str, Tensor] | str | Path) -> list[str]:
        """Initialise the maximal network from a torchvision checkpoint (a state dict or a local
        file; nothing is downloaded). A classifier of another size is skipped; returns the keys
        not loaded."""
        if isinstance(state_dict, (str, Path)):
            state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        state = dict(state_dict)
        own = self.state_dict()
        skipped = [k for k in ("fc.weight", "fc.bias") if k in state and state[k].shape != own[k].shape]
        for k in skipped:
            del state[k]
        problems = sorted((set(own) ^ set(state)) - set(skipped))
        problems += [k for k in state if k in own and state[k].shape != own[k].shape]
        if problems:
            raise ValueError(f"checkpoint does not match {self.space.family}: {problems[:10]}")
        self.load_state_dict(state, strict=False)
        return skipped


def _block_convs(channels: list[int], stride: int, groups: int, projection: bool) -> dict:
    in_ch, mid, out = channels
    return {"conv1": conv_spec(in_ch, mid, 1), "conv2": conv_spec(mid, mid, 3, stride, groups),
            "conv3": conv_spec(mid, out, 1), "downsample": conv_spec(in_ch, out, 1, stride) if projection else None}


def _conv_out(size: int, spec: dict) -> int:
    """Output side of a conv padded by ``kernel // 2`` (every conv of the family)."""
    return (size + 2 * (spec["kernel"] // 2) - spec["kernel"]) // spec["stride"] + 1


def _conv_macs(spec: dict, out_size: int) -> LayerMacs:
    kind = "grouped" if spec["groups"] > 1 else ("conv1x1" if spec["kernel"] == 1 else "convkxk")
    per_output = spec["in"] // spec["groups"] * spec["kernel"] ** 2
    return LayerMacs(kind, out_size, out_size * out_size * spec["out"] * per_output)


def _copy_pool(pool: nn.Module) -> nn.Module:
    return nn.MaxPool2d(3, 2, 1) if isinstance(pool, nn.MaxPool2d) else nn.Identity()


def _builder(config: ResNetConfig):
    def build(num_classes: int = 10, stem: str = "imagenet") -> ElasticResNet:
        return ElasticResNet(config, num_classes, stem)

    build.__doc__ = f"Build the ``{config.family}`` supernet."
    return build


for _config in (RESNET50, RESNEXT101_32X8D, RESNET_TINY):
    register_family(_config.family)(_builder(_config))
