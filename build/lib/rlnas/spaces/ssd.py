"""SSD detectors on the elastic MobileNetV1 backbone (SSD300-MobileNetV1 and a tiny test twin).

The classic SSD-MobileNetV1 layout: the backbone's stride-16 (conv11, 512 ch) and stride-32
(conv13, 1024 ch) features, then four extra layers (1x1 conv + 3x3/2 conv, BN, ReLU) down to 1x1,
six feature maps in all (19, 10, 5, 3, 2, 1 at 300 px), each with a 3x3 conv ``loc`` head
(``4 * A`` outputs) and ``conf`` head (``(C + 1) * A``, class 0 = background). Default boxes follow
the SSD paper (:func:`rlnas.spaces.priors.default_boxes`).

The search edits the backbone only (the ``mobilenet_v1`` space under the family name
``ssd_mobilenet_v1``); the layers reading the backbone (both first heads and the first extra
layer) slice their input channels to the active widths. ``forward`` and the extracted module
return the raw ``(loc (B, N, 4), conf (B, N, C + 1))``: decoding and NMS are post-processing
(:func:`rlnas.detection.boxes.postprocess`), so only the network goes into OpenVINO/INT8.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from rlnas.arch import Arch
from rlnas.spaces.base import Device, Supernet, conv_spec
from rlnas.spaces.elastic import ElasticConv2d, permute_
from rlnas.spaces.mobilenet import MOBILENET_TINY, MOBILENET_V1, ElasticMobileNetV1Backbone, MobileNetConfig
from rlnas.spaces.priors import boxes_per_location, default_boxes
from rlnas.spaces.registry import register_family


@dataclass(frozen=True)
class SSDConfig:
    """The numbers that define one SSD family.

    :param extras: ``(mid, out)`` channels of each extra layer (1x1 conv to ``mid``, 3x3/2 to ``out``).
    :param aspect_ratios: per feature map, the ratios ``r`` (each adds ``r`` and ``1/r`` boxes).
    :param head_kernel: 3 (SSD paper, 3x3 predictors) or 1 (TF Object Detection API's 1x1 heads).
    """

    family: str
    backbone: MobileNetConfig
    extras: tuple[tuple[int, int], ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    resolution: int
    num_classes: int
    min_scale: float = 0.2
    max_scale: float = 0.95
    head_kernel: int = 3


SSD_MOBILENET_V1 = SSDConfig("ssd_mobilenet_v1", MOBILENET_V1, ((256, 512), (128, 256), (128, 256), (64, 128)),
                             ((2.0, 3.0),) * 6, resolution=300, num_classes=80)
SSD_TINY = SSDConfig("ssd_tiny", MOBILENET_TINY, ((16, 32), (8, 16), (8, 16), (8, 16)), ((2.0,),) * 6,
                     resolution=32, num_classes=3)


def ssd_outputs(features: Sequence[Tensor], loc_heads: nn.ModuleList, conf_heads: nn.ModuleList,
                num_classes: int) -> tuple[Tensor, Tensor]:
    """Concatenate the heads' outputs over feature maps, locations row-major, as the priors are."""
    batch = features[0].shape[0]
    locs = [h(f).permute(0, 2, 3, 1).reshape(batch, -1, 4) for h, f in zip(loc_heads, features, strict=True)]
    confs = [h(f).permute(0, 2, 3, 1).reshape(batch, -1, num_classes + 1)
             for h, f in zip(conf_heads, features, strict=True)]
    return torch.cat(locs, dim=1), torch.cat(confs, dim=1)


class SSD(nn.Module):
    """A plain SSD detector (what :meth:`ElasticSSD.extract` returns): ``x -> (loc, conf)``.

    ``priors`` (``cx, cy, w, h`` in [0, 1], a non-persistent buffer) decode its outputs.
    """

    def __init__(self, backbone: nn.Module, extras: nn.ModuleList, loc_heads: nn.ModuleList,
                 conf_heads: nn.ModuleList, num_classes: int, priors: Tensor) -> None:
        super().__init__()
        self.backbone, self.extras = backbone, extras
        self.loc_heads, self.conf_heads = loc_heads, conf_heads
        self.num_classes = num_classes
        self.register_buffer("priors", priors.clone(), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = list(self.backbone(x))
        for extra in self.extras:
            features.append(extra(features[-1]))
        return ssd_outputs(features, self.loc_heads, self.conf_heads, self.num_classes)


def _extra_layer(in_ch: int, mid: int, out: int, elastic: bool) -> nn.Sequential:
    conv = ElasticConv2d if elastic else nn.Conv2d
    return nn.Sequential(conv(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))


def _head(in_ch: int, out: int, kernel: int, elastic: bool) -> nn.Conv2d:
    conv = (ElasticConv2d if elastic else nn.Conv2d)(in_ch, out, kernel, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ElasticSSD(Supernet):
    """Weight-sharing SSD: elastic MobileNetV1 backbone, fixed extra layers and heads whose input
    channels follow the active backbone widths.

    :param config: :data:`SSD_MOBILENET_V1` or :data:`SSD_TINY`.
    :param num_classes: object classes ``C`` (the ``conf`` head has ``C + 1`` with background).
    :param resolution: square input size the default boxes are laid out for.
    """

    def __init__(self, config: SSDConfig, num_classes: int | None = None, resolution: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_classes = int(num_classes or config.num_classes)
        self.resolution = int(resolution or config.resolution)
        self.task = "detection"
        self.backbone = ElasticMobileNetV1Backbone(config.backbone, family=config.family)
        self.space = self.backbone.space
        in_ch = self.backbone.max_out_channels()
        n_taps = len(in_ch)
        self.extras = nn.ModuleList()
        for i, (mid, out) in enumerate(config.extras):
            self.extras.append(_extra_layer(in_ch[-1], mid, out, elastic=i == 0))
            in_ch.append(out)
        pairs = list(enumerate(zip(in_ch, boxes_per_location(config.aspect_ratios), strict=True)))
        k = config.head_kernel
        self.loc_heads = nn.ModuleList(_head(c, 4 * a, k, i < n_taps) for i, (c, a) in pairs)
        self.conf_heads = nn.ModuleList(_head(c, (self.num_classes + 1) * a, k, i < n_taps) for i, (c, a) in pairs)
        self.register_buffer("priors", default_boxes(self.feature_sizes(), config.aspect_ratios,
                                                     config.min_scale, config.max_scale), persistent=False)
        self.set_active(self.space.max_arch())

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The static ``(1, 3, S, S)`` input the priors are laid out for."""
        return (1, 3, self.resolution, self.resolution)

    def feature_sizes(self) -> list[int]:
        """Side of each square feature map (every downsampling conv is 3x3, stride 2, padding 1)."""
        size, sizes = _down(self.resolution, 2), []
        for s, stage in enumerate(self.config.backbone.stages):
            size = _down(size, stage.stride)
            if s in self.config.backbone.feature_stages:
                sizes.append(size)
        for _ in self.config.extras:
            sizes.append(_down(sizes[-1], 2))
        return sizes

    def set_active(self, arch: Arch) -> None:
        """Validate ``arch`` and make :meth:`forward` run it (heads read the active widths)."""
        self.backbone.set_active(arch)
        channels = self.backbone.out_channels(arch)
        for i, ch in enumerate(channels):
            self.loc_heads[i].select(None, ch)
            self.conf_heads[i].select(None, ch)
        self.extras[0][0].select(None, channels[-1])
        self.active_arch = arch

    def channel_plan(self, arch: Arch) -> dict:
        """The detector ``arch`` builds: the backbone's plan
        (:meth:`ElasticMobileNetV1Backbone.channel_plan`), the ``extras`` (1x1 ``conv1`` and 3x3/2
        ``conv2`` each), the ``loc`` and ``conf`` heads of every feature map (each
        ``{in, out, kernel, stride, groups}``) and ``num_classes`` (without background)."""
        backbone = self.backbone.channel_plan(arch)
        channels = list(self.backbone.out_channels(arch))
        extras = []
        for extra in self.extras:
            conv1, conv2 = extra[0], extra[3]
            extras.append({"conv1": conv_spec(channels[-1], conv1.out_channels, conv1.kernel_size[0], conv1.stride[0]),
                           "conv2": conv_spec(conv2.in_channels, conv2.out_channels, conv2.kernel_size[0],
                                              conv2.stride[0])})
            channels.append(conv2.out_channels)
        heads = {name: [conv_spec(ch, h.out_channels, h.kernel_size[0], h.stride[0], h.groups)
                        for ch, h in zip(channels, group, strict=True)]
                 for name, group in (("loc", self.loc_heads), ("conf", self.conf_heads))}
        return {"backbone": backbone, "extras": extras, **heads, "num_classes": self.num_classes}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone.forward_features(x)
        for extra in self.extras:
            features.append(extra(features[-1]))
        return ssd_outputs(features, self.loc_heads, self.conf_heads, self.num_classes)

    def _extract_active(self, device: Device = None) -> SSD:
        """The active architecture as a plain :class:`SSD` (:meth:`set_active` made it the
        backbone's active one too); the priors come along."""
        n_taps = len(self.backbone.config.feature_stages)
        extras = _copy(self.extras, device)
        extras[0][0] = self.extras[0][0].extract(device)
        heads = [nn.ModuleList(h.extract(device) if i < n_taps else _copy(h, device)
                               for i, h in enumerate(group))
                 for group in (self.loc_heads, self.conf_heads)]
        return SSD(self.backbone._extract_active(device), extras, heads[0], heads[1], self.num_classes,
                   self.priors.to(device) if device else self.priors)

    def count_macs(self, arch: Arch, resolution: int | None = None) -> int:
        """Multiply-accumulates of ``arch`` on one ``resolution`` x ``resolution`` image (default:
        the model resolution the priors are laid out for)."""
        return super().count_macs(arch, resolution or self.resolution)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Sort the backbone's channels and permute the inputs of the layers reading its features."""
        perms = self.backbone.sort_channels()
        for i, perm in enumerate(perms):
            permute_(self.loc_heads[i].weight, perm, 1)
            permute_(self.conf_heads[i].weight, perm, 1)
        permute_(self.extras[0][0].weight, perms[-1], 1)


def _down(size: int, stride: int) -> int:
    return -(-size // stride)


def _copy(module: nn.Module, device: Device) -> nn.Module:
    clone = copy.deepcopy(module)
    return clone.to(device) if device else clone


def _builder(config: SSDConfig):
    def build(num_classes: int | None = None, resolution: int | None = None,
              head_kernel: int | None = None) -> ElasticSSD:
        chosen = replace(config, head_kernel=head_kernel) if head_kernel else config
        return ElasticSSD(chosen, num_classes, resolution)

    build.__doc__ = f"Build the ``{config.family}`` detection supernet ({config.num_classes} classes, " \
                    f"{config.resolution} px by default)."
    return build


for _config in (SSD_MOBILENET_V1, SSD_TINY):
    register_family(_config.family)(_builder(_config))
