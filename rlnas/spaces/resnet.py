"""Elastic ResNet / ResNeXt / Wide ResNet supernets (Once-for-All style) whose maximal network is
torchvision's.

Every torchvision ResNet constructor is a family of the same name (:data:`TORCHVISION_RESNETS`):
``resnet18``/``34`` (basic blocks), ``resnet50``/``101``/``152``, ``resnext50_32x4d``,
``resnext101_32x8d``, ``resnext101_64x4d``, ``wide_resnet50_2``, ``wide_resnet101_2`` (bottlenecks).

Elastic dimensions, per stage (``layerN``):

- depth: the leading blocks run, trailing ones are skipped;
- width multiplier: scales the stage's output channels (the residual stream); the first block's
  projection conv adapts to the previous stage's active width. Where the first stage has no
  projection (basic blocks: the stem's 64 channels are ``layer1``'s residual stream), the stem's
  output width is the first stage's width;
- expand ratio, per block: the block's inner width = ``expand * active output width``, rounded to
  a multiple of 8 (of the group count for ResNeXt, whose groups stay while each group narrows).
  The inner width is a bottleneck's 1x1/3x3/1x1 middle, a basic block's first 3x3 conv's output.

Module names equal torchvision's (``conv1``, ``layer3.5.conv2``, ``layer1.0.downsample.0``, ...), so
the maximal network has torchvision's state dict, keys and shapes, and loads its checkpoints;
:func:`detect_torchvision_resnet` tells from a state dict which family it is.

The ``cifar`` stem runs the same 7x7 conv with stride 1 and no max pool (overall stride 8 instead of
32), so its parameters equal the ``imagenet`` stem's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from math import lcm
from pathlib import Path

import torch
from torch import Tensor, nn

from rlnas.arch import Arch, SearchSpace
from rlnas.errors import UserError
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
BLOCKS = ("basic", "bottleneck")


class NotAResNetError(UserError, ValueError):
    """A state dict that is not one of the supported torchvision ResNets; the message lists them."""


@dataclass(frozen=True)
class ResNetConfig:
    """The numbers that define one ResNet family.

    :param stage_channels: maximal output channels of each stage (torchvision: ``planes * expansion``).
    :param expand_choices: inner width / output width; the last is the maximal network's.
    :param groups: groups of the 3x3 conv (32 for ResNeXt-32x8d); constant across the space.
    :param divisor: channel counts are rounded to multiples of this.
    :param block: ``"bottleneck"`` (1x1, 3x3, 1x1) or ``"basic"`` (3x3, 3x3; ``groups`` 1).
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
    block: str = "bottleneck"

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"{self.family}: unknown block {self.block!r}; choose one of {BLOCKS}")
        if self.block == "basic" and self.groups != 1:
            raise ValueError(f"{self.family}: basic blocks have groups=1 (torchvision's rule), got {self.groups}")
        if self.tied_stem and self.block != "basic":
            raise ValueError(f"{self.family}: a first stage without projection needs basic blocks")

    @property
    def tied_stem(self) -> bool:
        """The first stage's first block has no projection (same channels, stride 1, torchvision's
        rule): the stem writes the first stage's residual stream, so its width follows that stage's."""
        return self.stem_channels == self.stage_channels[0] and self.strides[0] == 1

    def projection(self, stage: int) -> bool:
        """Whether the first block of ``stage`` has a projection shortcut (``downsample``)."""
        return stage > 0 or not self.tied_stem

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

    def stem_out(self, arch: Arch) -> int:
        """The stem's output channels in ``arch``."""
        return self.out_channels(0, arch.widths[0]) if self.tied_stem else self.stem_channels


@dataclass(frozen=True)
class TorchvisionResNet:
    """The arguments of one torchvision ResNet constructor (``torchvision.models.<name>``) and the
    search space around it.

    :param block: ``"basic"`` (``BasicBlock``) or ``"bottleneck"`` (``Bottleneck``).
    :param depths: blocks per stage (torchvision's ``layers``), the maximal depths.
    :param min_depths: the shallowest depths searched.
    :param groups: the 3x3 conv's groups (ResNeXt's cardinality).
    :param width_per_group: torchvision's ``width_per_group`` (64; 128 for Wide ResNets).
    :param expand_fractions: the expand choices as fractions of the maximal one.
    """

    name: str
    block: str
    depths: tuple[int, ...]
    min_depths: tuple[int, ...]
    groups: int = 1
    width_per_group: int = 64
    expand_fractions: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0)

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    def config(self) -> ResNetConfig:
        """The family's :class:`ResNetConfig`: torchvision's 64-channel stem and stage planes 64,
        128, 256, 512; the inner width of a bottleneck is ``planes * width_per_group / 64 * groups``."""
        max_expand = 1.0 if self.block == "basic" else self.width_per_group * self.groups / (64 * self.expansion)
        return ResNetConfig(self.name, 64, tuple(64 * 2 ** i * self.expansion for i in range(4)), (1, 2, 2, 2),
                            self.depths, self.min_depths, (0.5, 0.65, 0.8, 1.0),
                            tuple(round(max_expand * f, 6) for f in self.expand_fractions),
                            groups=self.groups, block=self.block)


_QUARTERS = (0.25, 0.5, 0.75, 1.0)
#: every torchvision ResNet constructor, by name (the family registered under that name)
TORCHVISION_RESNETS: dict[str, TorchvisionResNet] = {spec.name: spec for spec in (
    TorchvisionResNet("resnet18", "basic", (2, 2, 2, 2), (1, 1, 1, 1), expand_fractions=_QUARTERS),
    TorchvisionResNet("resnet34", "basic", (3, 4, 6, 3), (1, 2, 4, 1), expand_fractions=_QUARTERS),
    TorchvisionResNet("resnet50", "bottleneck", (3, 4, 6, 3), (1, 2, 4, 1)),
    TorchvisionResNet("resnet101", "bottleneck", (3, 4, 23, 3), (1, 2, 8, 1)),
    TorchvisionResNet("resnet152", "bottleneck", (3, 8, 36, 3), (1, 2, 12, 1)),
    TorchvisionResNet("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), (1, 2, 4, 1), 32, 4, _QUARTERS),
    TorchvisionResNet("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), (1, 2, 8, 1), 32, 8, _QUARTERS),
    TorchvisionResNet("resnext101_64x4d", "bottleneck", (3, 4, 23, 3), (1, 2, 8, 1), 64, 4, _QUARTERS),
    TorchvisionResNet("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), (1, 2, 4, 1), width_per_group=128),
    TorchvisionResNet("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), (1, 2, 8, 1), width_per_group=128),
)}

RESNET50 = TORCHVISION_RESNETS["resnet50"].config()
RESNEXT101_32X8D = TORCHVISION_RESNETS["resnext101_32x8d"].config()
RESNET_TINY = ResNetConfig("resnet_tiny", 8, (16, 32, 48), (1, 2, 2), (2, 2, 2), (1, 1, 1),
                           (0.5, 0.75, 1.0), (0.25, 0.5), divisor=4)
# not registered: exercise the grouped-conv and basic-block code paths in tests at a tiny size
RESNEXT_TINY = ResNetConfig("resnext_tiny", 8, (16, 32), (1, 2), (2, 2), (1, 1), (0.5, 1.0),
                            (0.5, 1.0), groups=4, divisor=4)
BASIC_TINY = ResNetConfig("basic_tiny", 8, (8, 16, 24), (1, 2, 2), (2, 2, 2), (1, 1, 1), (0.5, 0.75, 1.0),
                          (0.5, 1.0), divisor=4, block="basic")


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


class BasicBlock(nn.Module):
    """torchvision's basic block (two 3x3 convs, stride on the first) built from given layers."""

    def __init__(self, convs: list[nn.Conv2d], bns: list[nn.BatchNorm2d],
                 downsample: nn.Sequential | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = convs[0], bns[0]  # torchvision's order (so its state dict's)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = convs[1], bns[1]
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _elastic_downsample(in_ch: int, out: int, stride: int, projection: bool) -> nn.Sequential | None:
    if not projection:
        return None
    return nn.Sequential(ElasticConv2d(in_ch, out, 1, stride, bias=False), ElasticBatchNorm2d(out))


def _select_downsample(downsample: nn.Sequential | None, in_ch: int, out: int) -> None:
    if downsample is not None:
        downsample[0].select(out, in_ch)
        downsample[1].select(out)


def _extract_downsample(downsample: nn.Sequential | None, device: Device) -> nn.Sequential | None:
    if downsample is None:
        return None
    return nn.Sequential(downsample[0].extract(device), downsample[1].extract(device))


class ElasticBottleneck(Bottleneck):
    """A bottleneck whose input, bottleneck and output widths are set by :meth:`select`."""

    def __init__(self, in_ch: int, mid: int, out: int, stride: int, groups: int, projection: bool) -> None:
        convs = [ElasticConv2d(in_ch, mid, 1, bias=False),
                 ElasticConv2d(mid, mid, 3, stride, 1, groups=groups, bias=False),
                 ElasticConv2d(mid, out, 1, bias=False)]
        bns = [ElasticBatchNorm2d(mid), ElasticBatchNorm2d(mid), ElasticBatchNorm2d(out)]
        super().__init__(convs, bns, _elastic_downsample(in_ch, out, stride, projection))
        self.groups = groups

    @property
    def out_layers(self) -> tuple[ElasticConv2d, ElasticBatchNorm2d]:
        """The conv and BN writing the block's output (the residual stream)."""
        return self.conv3, self.bn3

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
        _select_downsample(self.downsample, in_ch, out)

    def extract(self, device: Device = None) -> Bottleneck:
        """The selected sub-block as a plain :class:`Bottleneck`."""
        return Bottleneck([c.extract(device) for c in (self.conv1, self.conv2, self.conv3)],
                          [b.extract(device) for b in (self.bn1, self.bn2, self.bn3)],
                          _extract_downsample(self.downsample, device))

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


class ElasticBasicBlock(BasicBlock):
    """A basic block whose input, inner (first conv's output) and output widths are set by
    :meth:`select`."""

    def __init__(self, in_ch: int, mid: int, out: int, stride: int, projection: bool) -> None:
        convs = [ElasticConv2d(in_ch, mid, 3, stride, 1, bias=False), ElasticConv2d(mid, out, 3, 1, 1, bias=False)]
        super().__init__(convs, [ElasticBatchNorm2d(mid), ElasticBatchNorm2d(out)],
                         _elastic_downsample(in_ch, out, stride, projection))

    @property
    def out_layers(self) -> tuple[ElasticConv2d, ElasticBatchNorm2d]:
        """The conv and BN writing the block's output (the residual stream)."""
        return self.conv2, self.bn2

    def select(self, in_ch: int, mid: int, out: int) -> None:
        self.conv1.select(mid, in_ch)
        self.bn1.select(mid)
        self.conv2.select(out, mid)
        self.bn2.select(out)
        _select_downsample(self.downsample, in_ch, out)

    def extract(self, device: Device = None) -> BasicBlock:
        """The selected sub-block as a plain :class:`BasicBlock`."""
        return BasicBlock([c.extract(device) for c in (self.conv1, self.conv2)],
                          [b.extract(device) for b in (self.bn1, self.bn2)],
                          _extract_downsample(self.downsample, device))

    @torch.no_grad()
    def sort_mid_channels(self) -> None:
        """Order the first conv's output channels by the L1 norm of the second conv's weights reading them."""
        perm = importance_order(self.conv2.weight.abs().sum(dim=(0, 2, 3)))
        permute_(self.conv2.weight, perm, 1)
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

    :param config: the family's numbers (:data:`RESNET50`, :data:`RESNEXT101_32X8D`,
        ``TORCHVISION_RESNETS[name].config()``, ...).
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
            blocks = [self._block(in_ch if b == 0 else out, config.max_mid(s), out, stride if b == 0 else 1,
                                  projection=b == 0 and config.projection(s))
                      for b in range(depth)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            in_ch = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = ElasticLinear(in_ch, num_classes)
        self.set_active(self.space.max_arch())

    def _block(self, in_ch: int, mid: int, out: int, stride: int, projection: bool) -> nn.Module:
        if self.config.block == "basic":
            return ElasticBasicBlock(in_ch, mid, out, stride, projection)
        return ElasticBottleneck(in_ch, mid, out, stride, self.config.groups, projection)

    @property
    def layers(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.space.num_stages)]

    def channel_plan(self, arch: Arch) -> dict:
        """The network ``arch`` builds (see :meth:`Supernet.channel_plan`): equal plans mean equal
        networks, even where rounding maps different ratios to one width.

        ``stages`` lists ``[in, mid, out]`` per active block (so the depth is each list's length;
        ``mid`` is a bottleneck's inner width, a basic block's first conv's output); ``blocks`` the
        same blocks conv by conv as built (``conv1``-``conv3`` for a bottleneck, ``conv1``-``conv2``
        for a basic block, and the projection ``downsample`` or None, each ``{in, out, kernel,
        stride, groups}``); ``stem`` the first conv and whether a max pool follows; ``fc`` the
        classifier's ``[in, out]``.
        """
        self.space.validate(arch)
        config = self.config
        stem_out = config.stem_out(arch)
        stages, blocks, in_ch = [], [], stem_out
        for s, expands in enumerate(arch.expands):
            out = config.out_channels(s, arch.widths[s])
            stage = [[in_ch if b == 0 else out, config.mid_channels(s, out, e), out] for b, e in enumerate(expands)]
            stages.append(stage)
            blocks.append([_block_convs(config.block, block, config.strides[s] if b == 0 else 1, config.groups,
                                        b == 0 and config.projection(s))
                           for b, block in enumerate(stage)])
            in_ch = out
        stem = {"conv": conv_spec(3, stem_out, 7, self.conv1.stride[0]),
                "maxpool": isinstance(self.maxpool, nn.MaxPool2d)}
        return {"stem": stem, "stages": stages, "blocks": blocks, "fc": [in_ch, self.num_classes]}

    def _count_layer_macs(self, arch: Arch, resolution: int) -> list[LayerMacs]:
        """:meth:`layer_macs` from the channel plan, in execution order (stem, then per block
        the projection and the convs; ~1000x cheaper than the meta forward, equal to it:
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
                for name in _CONVS[self.config.block]:
                    size = _conv_out(size, block[name])
                    layers.append(_conv_macs(block[name], size))
        fc_in, fc_out = plan["fc"]
        layers.append(LayerMacs("fc", 1, fc_in * fc_out))
        return layers

    def set_active(self, arch: Arch) -> None:
        """Validate ``arch`` and make :meth:`forward` run it."""
        plan = self.channel_plan(arch)
        stem_out = plan["stem"]["conv"]["out"]
        self.conv1.select(stem_out)
        self.bn1.select(stem_out)
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
        residual stream (the blocks' last BN, the projection's BN, the stem's BN where it writes the
        first stage's stream), then every block's inner channels by the L1 norm of the conv reading
        them. The maximal network computes the same function afterwards."""
        layers = self.layers
        for s, layer in enumerate(layers):
            writers = [block.out_layers for block in layer]
            if layer[0].downsample is not None:
                writers.append((layer[0].downsample[0], layer[0].downsample[1]))
            if s == 0 and self.config.tied_stem:
                writers.append((self.conv1, self.bn1))
            perm = importance_order(sum(bn.weight.abs() for _, bn in writers))
            for conv, bn in writers:
                permute_(conv.weight, perm, 0)
                permute_bn_(bn, perm)
            readers = [block.conv1 for block in layer if block is not layer[0] or block.downsample is None]
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


#: the convs of a block, in execution order after the projection
_CONVS = {"basic": ("conv1", "conv2"), "bottleneck": ("conv1", "conv2", "conv3")}


def _block_convs(block: str, channels: list[int], stride: int, groups: int, projection: bool) -> dict:
    in_ch, mid, out = channels
    if block == "basic":
        convs = {"conv1": conv_spec(in_ch, mid, 3, stride), "conv2": conv_spec(mid, out, 3)}
    else:
        convs = {"conv1": conv_spec(in_ch, mid, 1), "conv2": conv_spec(mid, mid, 3, stride, groups),
                 "conv3": conv_spec(mid, out, 1)}
    return {**convs, "downsample": conv_spec(in_ch, out, 1, stride) if projection else None}


def _conv_out(size: int, spec: dict) -> int:
    """Output side of a conv padded by ``kernel // 2`` (every conv of the family)."""
    return (size + 2 * (spec["kernel"] // 2) - spec["kernel"]) // spec["stride"] + 1


def _conv_macs(spec: dict, out_size: int) -> LayerMacs:
    kind = "grouped" if spec["groups"] > 1 else ("conv1x1" if spec["kernel"] == 1 else "convkxk")
    per_output = spec["in"] // spec["groups"] * spec["kernel"] ** 2
    return LayerMacs(kind, out_size, out_size * out_size * spec["out"] * per_output)


def _copy_pool(pool: nn.Module) -> nn.Module:
    return nn.MaxPool2d(3, 2, 1) if isinstance(pool, nn.MaxPool2d) else nn.Identity()


# ----------------------------------------------------------------------------- torchvision state dicts

_BLOCK_KEY = re.compile(r"layer(\d+)\.(\d+)\.")


def detect_torchvision_resnet(state: Mapping[str, Tensor]) -> tuple[str, int]:
    """Which torchvision ResNet constructor made the state dict ``state``, and its class count.

    Reads the block type (``layer1.0.conv3`` present: bottleneck), the depths (the highest block
    index of each ``layerN``), the groups and width per group (``layer1.0.conv2``'s weight: inner
    width over input channels per group) and ``num_classes`` (``fc.weight``), picks the family of
    :data:`TORCHVISION_RESNETS` with those numbers and checks that every key and shape equals its
    maximal network's.

    :returns: ``(family name, num_classes)``, e.g. ``("resnet18", 10)``.
    :raises NotAResNetError: one line saying what ``state`` looks like and listing the supported
        families.
    """
    supported = f"supported: torchvision's {', '.join(TORCHVISION_RESNETS)}"
    needed = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "fc.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise NotAResNetError(f"not a torchvision ResNet state dict (no {', '.join(absent)}); {supported}")
    indices: dict[int, int] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            indices[stage] = max(indices.get(stage, 0), block + 1)
    depths = tuple(indices.get(s, 0) for s in range(1, max(indices) + 1))
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    conv2 = state["layer1.0.conv2.weight"]
    if conv2.dim() != 4 or conv2.shape[1] == 0 or conv2.shape[0] % conv2.shape[1] or state["fc.weight"].dim() != 2:
        raise NotAResNetError(f"not a torchvision ResNet state dict (layer1.0.conv2.weight {tuple(conv2.shape)}, "
                              f"fc.weight {tuple(state['fc.weight'].shape)}); {supported}")
    groups = conv2.shape[0] // conv2.shape[1]
    width_per_group = conv2.shape[0] // groups  # layer1's planes are 64: inner width = groups * width_per_group
    num_classes = int(state["fc.weight"].shape[0])
    found = f"{block} blocks, depths {depths}, groups {groups}, width_per_group {width_per_group}"
    for spec in TORCHVISION_RESNETS.values():
        if (spec.block, spec.depths, spec.groups, spec.width_per_group) == (block, depths, groups, width_per_group):
            differ = _shape_differences(spec.config(), num_classes, state)
            if differ:
                raise NotAResNetError(f"a ResNet state dict with {found} like {spec.name} but not its tensors "
                                      f"({'; '.join(differ[:3])}); {supported}")
            return spec.name, num_classes
    raise NotAResNetError(f"not a supported torchvision ResNet state dict ({found}); {supported}")


def _shape_differences(config: ResNetConfig, num_classes: int, state: Mapping[str, Tensor]) -> list[str]:
    """How ``state``'s keys and shapes differ from the maximal network of ``config`` (built on the
    ``meta`` device: no weights allocated)."""
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in ElasticResNet(config, num_classes).state_dict().items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {own[k]}" for k in own if k in state and tuple(state[k].shape) != own[k]]
    return ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {unexpected[:3]}"] if unexpected else []) \
        + shapes


def _builder(config: ResNetConfig):
    def build(num_classes: int = 10, stem: str = "imagenet") -> ElasticResNet:
        return ElasticResNet(config, num_classes, stem)

    build.__doc__ = f"Build the ``{config.family}`` supernet."
    return build


for _config in (*(spec.config() for spec in TORCHVISION_RESNETS.values()), RESNET_TINY):
    register_family(_config.family)(_builder(_config))
