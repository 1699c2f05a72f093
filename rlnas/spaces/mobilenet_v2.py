"""Elastic MobileNetV2 (Once-for-All style) whose maximal network is torchvision's ``mobilenet_v2``.

The family ``mobilenet_v2``: torchvision's stem (3x3/2 conv to 32 channels, then the one inverted
residual of expand ratio 1 to 16 channels) and head (1x1 conv to 1280 channels, pooling, dropout
0.2, linear) stay fixed; the six stages of inverted residuals after the stem (24, 32, 64, 96, 160
and 320 channels; 2, 3, 4, 3, 3 and 1 blocks) are elastic:

- depth: the leading blocks run, trailing ones are skipped (at least :attr:`MobileNetV2Config.min_depths`);
- width multiplier: scales the stage's output channels, rounded to a multiple of 8;
- expand ratio, per block: the block's inner width = ``expand * active input width``, rounded to a
  multiple of 8 (choices 3, 4 and 6; torchvision's is 6).

A block adds its input to its output where it is not the first of its stage (torchvision's rule
``stride == 1 and inp == oup`` gives exactly those blocks in the maximal network).

Module names equal torchvision's (``features.0.0``, ``features.5.conv.1.0``, ``features.18.1``,
``classifier.1``, ...) and so do the initialisation and the forward pass, so the maximal network is
``torchvision.models.mobilenet_v2(num_classes=N)``: it loads that network's state dict strictly and
its state dict loads into that network. The ``cifar`` stem runs the first conv at stride 1 (same
parameters; overall stride 16 instead of 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
from rlnas.spaces.mobilenet import STEMS
from rlnas.spaces.registry import register_family


@dataclass(frozen=True)
class MobileNetV2Config:
    """The numbers that define one MobileNetV2 family (defaults: torchvision's ``mobilenet_v2``).

    :param stage_channels: maximal output channels of each elastic stage.
    :param expand_choices: inner width / input width of a block; the last is the maximal network's.
    """

    family: str = "mobilenet_v2"
    stem_channels: int = 32
    stem_out: int = 16
    stage_channels: tuple[int, ...] = (24, 32, 64, 96, 160, 320)
    strides: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
    max_depths: tuple[int, ...] = (2, 3, 4, 3, 3, 1)
    min_depths: tuple[int, ...] = (1, 1, 2, 1, 1, 1)
    width_choices: tuple[float, ...] = (0.5, 0.75, 1.0)
    expand_choices: tuple[float, ...] = (3.0, 4.0, 6.0)
    head_channels: int = 1280
    dropout: float = 0.2
    divisor: int = 8

    def space(self) -> SearchSpace:
        return SearchSpace(self.family, self.max_depths, self.min_depths, self.width_choices, self.expand_choices,
                           tuple(f"c{c}" for c in self.stage_channels))

    def out_channels(self, stage: int, width: float) -> int:
        return make_divisible(width * self.stage_channels[stage], self.divisor, self.stage_channels[stage])

    def max_in(self, stage: int, block: int) -> int:
        """Input channels of block ``block`` of ``stage`` in the maximal network."""
        if block > 0:
            return self.stage_channels[stage]
        return self.stage_channels[stage - 1] if stage > 0 else self.stem_out

    def hidden_channels(self, stage: int, block: int, in_ch: int, expand: float) -> int:
        cap = round(self.max_in(stage, block) * self.expand_choices[-1])
        return make_divisible(expand * in_ch, self.divisor, cap)


MOBILENET_V2 = MobileNetV2Config()


class ConvBNActivation(nn.Sequential):
    """conv, BN, ReLU6: torchvision's ``Conv2dNormActivation`` (its state-dict keys ``0.*``, ``1.*``)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__(conv, bn, nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """torchvision's inverted residual built from given layers: ``conv`` is (expand 1x1 conv, BN,
    ReLU6,) depthwise 3x3 conv, BN, ReLU6, projection 1x1 conv, BN; the input is added where
    ``residual``."""

    def __init__(self, conv: nn.Sequential, residual: bool) -> None:
        super().__init__()
        self.conv = conv
        self.use_res_connect = residual

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """A plain MobileNetV2 classifier with torchvision's module names (what
    :meth:`ElasticMobileNetV2.extract` returns)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _conv_bn(in_ch: int, out: int, kernel: int, stride: int = 1, depthwise: bool = False) -> ConvBNActivation:
    conv = ElasticConv2d(in_ch, out, kernel, stride, kernel // 2, groups=out if depthwise else 1, bias=False,
                         depthwise=depthwise)
    return ConvBNActivation(conv, ElasticBatchNorm2d(out))


def _extract_cba(layer: ConvBNActivation, device: Device) -> ConvBNActivation:
    """A plain copy of an elastic conv-BN-ReLU6."""
    return ConvBNActivation(layer[0].extract(device), layer[1].extract(device))


def _extract_layers(layers: nn.Sequential, device: Device) -> nn.Sequential:
    """A plain copy of a block's ``conv`` sequence (conv-BN-ReLU6s, a conv, a BN)."""
    return nn.Sequential(*[_extract_cba(layer, device) if isinstance(layer, ConvBNActivation)
                           else layer.extract(device) for layer in layers])


class ElasticInvertedResidual(InvertedResidual):
    """An inverted residual whose input, inner and output widths are set by :meth:`select`
    (``expand=False``: torchvision's expand-ratio-1 block, no expand conv, fixed widths)."""

    def __init__(self, in_ch: int, hidden: int, out: int, stride: int, residual: bool, expand: bool = True) -> None:
        layers = [_conv_bn(in_ch, hidden, 1)] if expand else []
        layers += [_conv_bn(hidden, hidden, 3, stride, depthwise=True), ElasticConv2d(hidden, out, 1, bias=False),
                   ElasticBatchNorm2d(out)]
        super().__init__(nn.Sequential(*layers), residual)
        self.expand = expand

    @property
    def layers(self) -> tuple[ConvBNActivation | None, ConvBNActivation, ElasticConv2d, ElasticBatchNorm2d]:
        """The expand conv-BN-ReLU6 (None without), the depthwise one, the projection conv and its BN."""
        if self.expand:
            return self.conv[0], self.conv[1], self.conv[2], self.conv[3]
        return None, self.conv[0], self.conv[1], self.conv[2]

    def select(self, in_ch: int, hidden: int, out: int) -> None:
        expand, dw, project, bn = self.layers
        if expand is not None:
            expand[0].select(hidden, in_ch)
            expand[1].select(hidden)
        dw[0].select(hidden)
        dw[1].select(hidden)
        project.select(out, hidden)
        bn.select(out)

    def extract(self, device: Device = None) -> InvertedResidual:
        """The selected sub-block as a plain :class:`InvertedResidual`."""
        return InvertedResidual(_extract_layers(self.conv, device), self.use_res_connect)

    @torch.no_grad()
    def sort_hidden_channels(self) -> None:
        """Order the inner channels by the L1 norm of the projection weights reading them."""
        expand, dw, project, _ = self.layers
        if expand is None:
            return
        perm = importance_order(project.weight.abs().sum(dim=(0, 2, 3)))
        permute_(project.weight, perm, 1)
        for layer in (dw, expand):
            permute_(layer[0].weight, perm, 0)
            permute_bn_(layer[1], perm)

    @torch.no_grad()
    def permute_outputs_(self, perm: Tensor) -> None:
        _, _, project, bn = self.layers
        permute_(project.weight, perm, 0)
        permute_bn_(bn, perm)

    @torch.no_grad()
    def permute_inputs_(self, perm: Tensor) -> None:
        permute_(self.layers[0][0].weight, perm, 1)


class ElasticMobileNetV2(Supernet):
    """Weight-sharing MobileNetV2 classifier; the maximal architecture is torchvision's model.

    :param config: the family's numbers (:data:`MOBILENET_V2`).
    :param num_classes: classifier outputs.
    :param stem: ``"imagenet"`` (3x3/2 first conv) or ``"cifar"`` (the same conv at stride 1).
    """

    def __init__(self, config: MobileNetV2Config = MOBILENET_V2, num_classes: int = 10,
                 stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"unknown stem {stem!r}; choose one of {STEMS}")
        self.config, self.stem, self.num_classes = config, stem, num_classes
        self.space, self.task = config.space(), "classification"
        first = ElasticInvertedResidual(config.stem_channels, config.stem_channels, config.stem_out, 1, False,
                                        expand=False)
        blocks: list[nn.Module] = [_conv_bn(3, config.stem_channels, 3, 2 if stem == "imagenet" else 1), first]
        for s, (out, stride, depth) in enumerate(zip(config.stage_channels, config.strides, config.max_depths,
                                                     strict=True)):
            for b in range(depth):
                in_ch = config.max_in(s, b)
                blocks.append(ElasticInvertedResidual(in_ch, round(in_ch * config.expand_choices[-1]), out,
                                                      stride if b == 0 else 1, residual=b > 0))
        blocks.append(_conv_bn(config.stage_channels[-1], config.head_channels, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), ElasticLinear(config.head_channels, num_classes))
        _torchvision_init(self)
        self.set_active(self.space.max_arch())

    @property
    def stages(self) -> list[list[ElasticInvertedResidual]]:
        """The elastic blocks of each stage (``features[2:-1]``, cut by the maximal depths)."""
        blocks, stages = list(self.features[2:-1]), []
        for depth in self.config.max_depths:
            stages.append(blocks[:depth])
            blocks = blocks[depth:]
        return stages

    def channel_plan(self, arch: Arch) -> dict:
        """The network ``arch`` builds (see :meth:`Supernet.channel_plan`): equal plans mean equal
        networks, even where rounding maps different ratios to one width.

        ``stages`` lists ``[in, hidden, out]`` per active block; ``blocks`` the same blocks conv by
        conv as built (``expand``, depthwise ``dw``, ``project``, each ``{in, out, kernel, stride,
        groups}``, and whether the input is added: ``residual``); ``stem`` the first conv and the
        fixed expand-ratio-1 block; ``head`` the last 1x1 conv; ``fc`` the classifier's ``[in, out]``.
        """
        self.space.validate(arch)
        config = self.config
        stages, blocks, in_ch = [], [], config.stem_out
        for s, expands in enumerate(arch.expands):
            out = config.out_channels(s, arch.widths[s])
            stage, stage_blocks = [], []
            for b, e in enumerate(expands):
                c_in = in_ch if b == 0 else out
                hidden = config.hidden_channels(s, b, c_in, e)
                stage.append([c_in, hidden, out])
                stage_blocks.append({"expand": conv_spec(c_in, hidden, 1),
                                     "dw": conv_spec(hidden, hidden, 3, config.strides[s] if b == 0 else 1, hidden),
                                     "project": conv_spec(hidden, out, 1), "residual": b > 0})
            stages.append(stage)
            blocks.append(stage_blocks)
            in_ch = out
        c = config.stem_channels
        stem = {"conv": conv_spec(3, c, 3, self.features[0][0].stride[0]),
                "block": {"dw": conv_spec(c, c, 3, 1, c), "project": conv_spec(c, config.stem_out, 1)}}
        return {"stem": stem, "stages": stages, "blocks": blocks, "head": conv_spec(in_ch, config.head_channels, 1),
                "fc": [config.head_channels, self.num_classes]}

    def set_active(self, arch: Arch) -> None:
        """Validate ``arch`` and make :meth:`forward` run it."""
        plan = self.channel_plan(arch)
        for stage, channels in zip(self.stages, plan["stages"], strict=True):
            for block, (in_ch, hidden, out) in zip(stage, channels, strict=False):
                block.select(in_ch, hidden, out)
        self.features[-1][0].select(None, plan["head"]["in"])
        self.active_arch = arch

    def forward(self, x: Tensor) -> Tensor:
        x = self.features[1](self.features[0](x))
        for stage, depth in zip(self.stages, self.active_arch.depths, strict=True):
            for block in stage[:depth]:
                x = block(x)
        x = F.adaptive_avg_pool2d(self.features[-1](x), (1, 1))
        return self.classifier(torch.flatten(x, 1))

    def _extract_active(self, device: Device = None) -> MobileNetV2:
        """The active architecture as a plain torchvision-named :class:`MobileNetV2`."""
        blocks = [_extract_cba(self.features[0], device), self.features[1].extract(device)]
        for stage, depth in zip(self.stages, self.active_arch.depths, strict=True):
            blocks += [block.extract(device) for block in stage[:depth]]
        blocks.append(_extract_cba(self.features[-1], device))
        classifier = nn.Sequential(nn.Dropout(self.config.dropout), self.classifier[1].extract(device))
        return MobileNetV2(nn.Sequential(*blocks), classifier)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Order every stage's output channels by the summed |BN gamma| of its blocks' projection
        BNs (one order per stage: the residual adds keep the blocks' channels aligned), then every
        block's inner channels by the L1 norm of the projection weights reading them. The maximal
        network computes the same function afterwards."""
        stages = self.stages
        for s, stage in enumerate(stages):
            perm = importance_order(sum(block.layers[3].weight.abs() for block in stage))
            for b, block in enumerate(stage):
                block.permute_outputs_(perm)
                if b > 0:
                    block.permute_inputs_(perm)
            if s + 1 < len(stages):
                stages[s + 1][0].permute_inputs_(perm)
            else:
                permute_(self.features[-1][0].weight, perm, 1)
        for stage in stages:
            for block in stage:
                block.sort_hidden_channels()


def _torchvision_init(model: nn.Module) -> None:
    """torchvision's MobileNetV2 initialisation: convs Kaiming-normal (fan out), BNs identity,
    the classifier N(0, 0.01), biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_family(MOBILENET_V2.family)
def mobilenet_v2(num_classes: int = 10, stem: str = "imagenet") -> ElasticMobileNetV2:
    """Build the ``mobilenet_v2`` supernet."""
    return ElasticMobileNetV2(MOBILENET_V2, num_classes, stem)
