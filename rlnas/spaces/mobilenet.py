"""Elastic MobileNetV1: a reusable multi-scale backbone and the classification supernet.

Stages group MobileNetV1's depthwise-separable blocks by output width (64 / 128 / 256 / 512 /
1024); the stage width multiplier scales every block output of the stage, and the depth of the
512-channel stage is elastic (its stride-2 block plus 1..5 of the five repeated blocks). The maximal
network is MobileNetV1 1.0 (4,231,976 parameters for 1000 classes).

:class:`ElasticMobileNetV1Backbone` returns the outputs of its ``feature_stages`` (strides 16 and 32
with the ``imagenet`` stem), for detection heads such as SSD. The ``cifar`` stem runs the same
3x3 conv at stride 1 (same parameters; the features then sit at strides 8 and 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlnas.arch import Arch, SearchSpace
from rlnas.errors import ConfigError
from rlnas.spaces.base import Device, Supernet, conv_spec
from rlnas.spaces.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLinear,
    importance_order,
    make_divisible,
    permute_,
    permute_bn_,
)
from rlnas.spaces.registry import register_family

STEMS = ("imagenet", "cifar")


@dataclass(frozen=True)
class MobileNetStage:
    """Blocks of one output width: the first has ``stride``, the rest stride 1."""

    channels: int
    stride: int
    max_blocks: int
    min_blocks: int


@dataclass(frozen=True)
class MobileNetConfig:
    """The numbers that define one MobileNetV1 family.

    :param feature_stages: stages whose outputs the backbone returns; the last must be the last stage.
    """

    family: str
    stem_channels: int
    stages: tuple[MobileNetStage, ...]
    width_choices: tuple[float, ...]
    feature_stages: tuple[int, ...]
    divisor: int = 8

    def space(self, family: str | None = None) -> SearchSpace:
        return SearchSpace(family or self.family, tuple(s.max_blocks for s in self.stages),
                           tuple(s.min_blocks for s in self.stages), self.width_choices, (),
                           tuple(f"c{s.channels}" for s in self.stages))

    def out_channels(self, stage: int, width: float) -> int:
        channels = self.stages[stage].channels
        return make_divisible(width * channels, self.divisor, channels)


MOBILENET_V1 = MobileNetConfig(
    "mobilenet_v1", 32,
    (MobileNetStage(64, 1, 1, 1), MobileNetStage(128, 2, 2, 2), MobileNetStage(256, 2, 2, 2),
     MobileNetStage(512, 2, 6, 2), MobileNetStage(1024, 2, 2, 2)),
    (0.25, 0.5, 0.75, 1.0), feature_stages=(3, 4))
MOBILENET_TINY = MobileNetConfig(
    "mobilenet_tiny", 8,
    (MobileNetStage(16, 1, 1, 1), MobileNetStage(32, 2, 2, 2), MobileNetStage(64, 2, 3, 1),
     MobileNetStage(128, 2, 2, 2)),
    (0.25, 0.5, 0.75, 1.0), feature_stages=(2, 3), divisor=4)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 conv + BN + ReLU."""

    def __init__(self, dw: nn.Conv2d, bn1: nn.BatchNorm2d, pw: nn.Conv2d, bn2: nn.BatchNorm2d) -> None:
        super().__init__()
        self.dw, self.bn1, self.pw, self.bn2 = dw, bn1, pw, bn2
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.pw(self.relu(self.bn1(self.dw(x))))))


class ElasticDepthwiseSeparable(DepthwiseSeparable):
    """A depthwise-separable block whose input and output widths are set by :meth:`select`."""

    def __init__(self, in_ch: int, out: int, stride: int) -> None:
        super().__init__(ElasticConv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False, depthwise=True),
                         ElasticBatchNorm2d(in_ch), ElasticConv2d(in_ch, out, 1, bias=False),
                         ElasticBatchNorm2d(out))

    def select(self, in_ch: int, out: int) -> None:
        self.dw.select(in_ch)
        self.bn1.select(in_ch)
        self.pw.select(out, in_ch)
        self.bn2.select(out)

    def extract(self, device: Device = None) -> DepthwiseSeparable:
        return DepthwiseSeparable(self.dw.extract(device), self.bn1.extract(device), self.pw.extract(device),
                                  self.bn2.extract(device))

    @torch.no_grad()
    def permute_inputs_(self, perm: Tensor) -> None:
        permute_(self.dw.weight, perm, 0)
        permute_bn_(self.bn1, perm)
        permute_(self.pw.weight, perm, 1)

    @torch.no_grad()
    def permute_outputs_(self, perm: Tensor) -> None:
        permute_(self.pw.weight, perm, 0)
        permute_bn_(self.bn2, perm)


class MobileNetV1Features(nn.Module):
    """A plain MobileNetV1 backbone returning the outputs of ``feature_stages`` (extracted form)."""

    def __init__(self, stem: tuple[nn.Conv2d, nn.BatchNorm2d], stages: list[nn.Sequential],
                 feature_stages: tuple[int, ...]) -> None:
        super().__init__()
        self.conv, self.bn = stem
        self.relu = nn.ReLU(inplace=True)
        self.stages = nn.ModuleList(stages)
        self.feature_stages = tuple(feature_stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn(self.conv(x)))
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.feature_stages:
                features.append(x)
        return features


class ElasticMobileNetV1Backbone(Supernet):
    """Weight-sharing MobileNetV1 backbone; :meth:`forward_features` gives multi-scale features.

    A :class:`~rlnas.spaces.base.Supernet` of task ``"features"`` (not registered as a family):
    :meth:`extract` gives a plain :class:`MobileNetV1Features`.

    :param config: :data:`MOBILENET_V1` or :data:`MOBILENET_TINY`.
    :param stem: ``"imagenet"`` (3x3/2 conv) or ``"cifar"`` (same conv at stride 1).
    :param family: family name of the search space (e.g. ``"ssd_mobilenet_v1"`` for a detector).
    """

    def __init__(self, config: MobileNetConfig = MOBILENET_V1, stem: str = "imagenet",
                 family: str | None = None) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"unknown stem {stem!r}; choose one of {STEMS}")
        if not config.feature_stages or config.feature_stages[-1] != len(config.stages) - 1:
            raise ConfigError(f"feature_stages {config.feature_stages} must end with the last stage")
        self.config, self.stem = config, stem
        self.space, self.task = config.space(family), "features"
        self.conv = ElasticConv2d(3, config.stem_channels, 3, 2 if stem == "imagenet" else 1, 1, bias=False)
        self.bn = ElasticBatchNorm2d(config.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], config.stem_channels
        for spec in config.stages:
            blocks = [ElasticDepthwiseSeparable(in_ch if b == 0 else spec.channels, spec.channels,
                                                spec.stride if b == 0 else 1) for b in range(spec.max_blocks)]
            stages.append(nn.Sequential(*blocks))
            in_ch = spec.channels
        self.stages = nn.ModuleList(stages)
        self.set_active(self.space.max_arch())

    def set_active(self, arch: Arch) -> None:
        """Validate ``arch`` and make :meth:`forward_features` run it."""
        self.space.validate(arch)
        in_ch = self.config.stem_channels
        for s, stage in enumerate(self.stages):
            out = self.config.out_channels(s, arch.widths[s])
            for b in range(arch.depths[s]):
                stage[b].select(in_ch if b == 0 else out, out)
            in_ch = out
        self.active_arch = arch

    def channel_plan(self, arch: Arch) -> dict:
        """The backbone ``arch`` builds: equal plans mean equal networks.

        ``stages`` lists ``[in, out]`` per active block (so the depth is each list's length);
        ``blocks`` the same blocks conv by conv as built (depthwise ``dw``, pointwise ``pw``, each
        ``{in, out, kernel, stride, groups}``); ``stem`` the first conv; ``features`` the stages
        whose outputs :meth:`forward_features` returns.
        """
        self.space.validate(arch)
        stages, blocks, in_ch = [], [], self.config.stem_channels
        for s, depth in enumerate(arch.depths):
            out = self.config.out_channels(s, arch.widths[s])
            stage = [[in_ch if b == 0 else out, out] for b in range(depth)]
            stages.append(stage)
            blocks.append([{"dw": conv_spec(c_in, c_in, 3, self.config.stages[s].stride if b == 0 else 1, c_in),
                            "pw": conv_spec(c_in, c_out, 1)} for b, (c_in, c_out) in enumerate(stage)])
            in_ch = out
        return {"stem": {"conv": conv_spec(3, self.config.stem_channels, 3, self.conv.stride[0])},
                "stages": stages, "blocks": blocks, "features": list(self.config.feature_stages)}

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Outputs of the ``feature_stages`` of the active architecture, shallowest first."""
        x = self.relu(self.bn(self.conv(x)))
        features = []
        for i, (stage, depth) in enumerate(zip(self.stages, self.active_arch.depths, strict=True)):
            for block in stage[:depth]:
                x = block(x)
            if i in self.config.feature_stages:
                features.append(x)
        return features

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_features(x)

    def out_channels(self, arch: Arch | None = None) -> list[int]:
        """Channels of each feature map for ``arch`` (default: the active one)."""
        arch = arch or self.active_arch
        return [self.config.out_channels(s, arch.widths[s]) for s in self.config.feature_stages]

    def max_out_channels(self) -> list[int]:
        """Channels of each feature map of the maximal network (sizes a shared head's weights)."""
        return [self.config.stages[s].channels for s in self.config.feature_stages]

    def _extract_active(self, device: Device = None) -> MobileNetV1Features:
        """The active architecture as a plain :class:`MobileNetV1Features`."""
        stages = [nn.Sequential(*[block.extract(device) for block in stage[:depth]])
                  for stage, depth in zip(self.stages, self.active_arch.depths, strict=True)]
        stem = (self.conv.extract(device), self.bn.extract(device))
        return MobileNetV1Features(stem, stages, self.config.feature_stages)

    @torch.no_grad()
    def sort_channels(self) -> list[Tensor]:
        """Order each stage's output channels by the summed |BN gamma| of its blocks (one order per
        stage, so readers see the same order whatever the depth). Returns the permutation applied to
        each feature map: a module reading feature ``i`` must apply ``weight[:, perms[i]]``."""
        perms = []
        for s, stage in enumerate(self.stages):
            perm = importance_order(sum(block.bn2.weight.abs() for block in stage))
            for b, block in enumerate(stage):
                block.permute_outputs_(perm)
                if b + 1 < len(stage):
                    stage[b + 1].permute_inputs_(perm)
            if s + 1 < len(self.stages):
                self.stages[s + 1][0].permute_inputs_(perm)
            perms.append(perm)
        return [perms[s] for s in self.config.feature_stages]


class MobileNetV1(nn.Module):
    """A plain MobileNetV1 classifier (what :meth:`ElasticMobileNetV1.extract` returns).

    Its module names are the supernet's (``backbone.*``, ``fc.*``): the maximal network's state
    dict loads strictly into the supernet (an a0) and its ``backbone.*`` tensors into an SSD's
    backbone (:func:`rlnas.detection.train.load_backbone`). A state dict saved with the former
    name ``features.*`` still loads.
    """

    def __init__(self, backbone: MobileNetV1Features, fc: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc
        self.register_load_state_dict_pre_hook(_renamed_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.backbone(x)[-1]), 1))


def _renamed_features(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """``features.*`` -> ``backbone.*`` in a state dict of :class:`MobileNetV1` saved before the rename."""
    old = prefix + "features."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "backbone." + key[len(old):]] = state_dict.pop(key)


class ElasticMobileNetV1(Supernet):
    """Weight-sharing MobileNetV1 classifier: :class:`ElasticMobileNetV1Backbone` + pooling + linear."""

    def __init__(self, config: MobileNetConfig = MOBILENET_V1, num_classes: int = 10,
                 stem: str = "imagenet") -> None:
        super().__init__()
        self.backbone = ElasticMobileNetV1Backbone(config, stem)
        self.space, self.task, self.num_classes = self.backbone.space, "classification", num_classes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = ElasticLinear(config.stages[-1].channels, num_classes)
        self.set_active(self.space.max_arch())

    def set_active(self, arch: Arch) -> None:
        self.backbone.set_active(arch)
        self.fc.select(self.backbone.out_channels(arch)[-1])
        self.active_arch = arch

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.backbone.forward_features(x)[-1]), 1))

    def channel_plan(self, arch: Arch) -> dict:
        """The backbone's plan (:meth:`ElasticMobileNetV1Backbone.channel_plan`) and the
        classifier's ``fc: [in, out]``."""
        plan = self.backbone.channel_plan(arch)
        return {**plan, "fc": [plan["stages"][-1][-1][1], self.num_classes]}

    def _extract_active(self, device: Device = None) -> MobileNetV1:
        """The active architecture as a plain :class:`MobileNetV1` (:meth:`set_active` made it
        the backbone's active one too)."""
        return MobileNetV1(self.backbone._extract_active(device), self.fc.extract(device))

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Sort the backbone's channels (see :meth:`ElasticMobileNetV1Backbone.sort_channels`)."""
        permute_(self.fc.weight, self.backbone.sort_channels()[-1], 1)


def _builder(config: MobileNetConfig):
    def build(num_classes: int = 10, stem: str = "imagenet") -> ElasticMobileNetV1:
        return ElasticMobileNetV1(config, num_classes, stem)

    build.__doc__ = f"Build the ``{config.family}`` supernet."
    return build


for _config in (MOBILENET_V1, MOBILENET_TINY):
    register_family(_config.family)(_builder(_config))
