"""Elastic layers shared by the weight-sharing supernets, and small counting helpers.

An elastic layer is a plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` (so state-dict keys
and shapes equal the maximal network's, e.g. torchvision's) whose forward uses a *selection* of
its channels, set by the supernet's ``set_active``. A selection is either an ``int`` (the leading
channels, ``weight[:n]``) or a :class:`GroupedSel` (the leading channels of every group, needed for
grouped convs whose group count stays fixed while the group width shrinks). ``extract()`` returns
the plain layer with the selected weights copied in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GroupedSel:
    """The leading ``active`` channels of each of ``groups`` groups of ``size`` channels."""

    groups: int
    active: int
    size: int

    @property
    def count(self) -> int:
        return self.groups * self.active

    def index(self, device: torch.device) -> Tensor:
        starts = torch.arange(self.groups, device=device)[:, None] * self.size
        return (starts + torch.arange(self.active, device=device)[None, :]).flatten()


Sel = int | GroupedSel | None  # None: all channels


def make_divisible(value: float, divisor: int, max_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``, at most
    ``max_value``), never more than 10% below ``value`` (the MobileNet/OFA rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return min(rounded, max_value) if max_value is not None else rounded


def take(t: Tensor, sel: Sel, dim: int) -> Tensor:
    """The channels ``sel`` of ``t`` along ``dim`` (a view for leading selections)."""
    if sel is None:
        return t
    if isinstance(sel, GroupedSel):
        if sel.active == sel.size:
            return t
        return t.index_select(dim, sel.index(t.device))
    return t.narrow(dim, 0, sel)


def sel_count(sel: Sel, full: int) -> int:
    if sel is None:
        return full
    return sel.count if isinstance(sel, GroupedSel) else sel


class ElasticConv2d(nn.Conv2d):
    """A conv running ``weight[out_sel][:, in_sel]``.

    ``in_sel`` indexes the weight's second dimension, i.e. the input channels *per group* for a
    grouped conv. With ``depthwise=True`` the group count follows the active channel count.
    """

    def __init__(self, *args, depthwise: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.depthwise = depthwise
        self.out_sel: Sel = None
        self.in_sel: Sel = None

    def select(self, out_sel: Sel, in_sel: Sel = None) -> None:
        self.out_sel, self.in_sel = out_sel, in_sel

    def active_weight(self) -> Tensor:
        return take(take(self.weight, self.out_sel, 0), self.in_sel, 1)

    def active_bias(self) -> Tensor | None:
        return None if self.bias is None else take(self.bias, self.out_sel, 0)

    def active_groups(self) -> int:
        return sel_count(self.out_sel, self.out_channels) if self.depthwise else self.groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.active_weight(), self.active_bias(), self.stride, self.padding,
                        self.dilation, self.active_groups())

    def extract(self, device: torch.device | str | None = None) -> nn.Conv2d:
        """The active sub-conv as a plain ``nn.Conv2d`` (weights copied unless on ``meta``)."""
        weight, groups = self.active_weight(), self.active_groups()
        device = device or weight.device
        conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], self.kernel_size, self.stride,
                         self.padding, self.dilation, groups, bias=self.bias is not None,
                         device=device, dtype=weight.dtype)
        _copy_params(conv, {"weight": weight, "bias": self.active_bias()})
        return conv


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the channels ``sel``; training updates the selected running statistics."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sel: Sel = None

    def select(self, sel: Sel) -> None:
        self.sel = sel

    def forward(self, x: Tensor) -> Tensor:
        if sel_count(self.sel, self.num_features) == self.num_features:
            return super().forward(x)
        factor = self._average_factor()
        use_batch = self.training or self.running_mean is None
        stats = self._stats(self.training and not self.track_running_stats)
        out = F.batch_norm(x, stats[0], stats[1], take(self.weight, self.sel, 0),
                           take(self.bias, self.sel, 0), use_batch, factor, self.eps)
        if isinstance(self.sel, GroupedSel) and stats[0] is not None and use_batch:
            # index_select copied the statistics: write the updated ones back
            index = self.sel.index(x.device)
            self.running_mean.index_copy_(0, index, stats[0])
            self.running_var.index_copy_(0, index, stats[1])
        return out

    def _stats(self, batch_only: bool) -> tuple[Tensor | None, Tensor | None]:
        if batch_only or self.running_mean is None:
            return None, None
        return take(self.running_mean, self.sel, 0), take(self.running_var, self.sel, 0)

    def _average_factor(self) -> float:
        # same rule as nn.BatchNorm2d.forward, including momentum=None (cumulative average)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return factor

    def extract(self, device: torch.device | str | None = None) -> nn.BatchNorm2d:
        """The active channels as a plain ``nn.BatchNorm2d`` with statistics copied."""
        n = sel_count(self.sel, self.num_features)
        device = device or self.weight.device
        bn = nn.BatchNorm2d(n, self.eps, self.momentum, self.affine, self.track_running_stats,
                            device=device, dtype=self.weight.dtype)
        _copy_params(bn, {name: take(getattr(self, name), self.sel, 0)
                          for name in ("weight", "bias", "running_mean", "running_var")})
        if str(device) != "meta" and self.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class ElasticLinear(nn.Linear):
    """A linear layer over the leading ``in_sel`` input features (all outputs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_sel: Sel = None

    def select(self, in_sel: Sel) -> None:
        self.in_sel = in_sel

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, take(self.weight, self.in_sel, 1), self.bias)

    def extract(self, device: torch.device | str | None = None) -> nn.Linear:
        weight = take(self.weight, self.in_sel, 1)
        device = device or weight.device
        fc = nn.Linear(weight.shape[1], weight.shape[0], bias=self.bias is not None, device=device,
                       dtype=weight.dtype)
        _copy_params(fc, {"weight": weight, "bias": self.bias})
        return fc


def _copy_params(module: nn.Module, values: dict[str, Tensor | None]) -> None:
    if next(module.parameters()).device.type == "meta":
        return
    with torch.no_grad():
        for name, value in values.items():
            target = getattr(module, name)
            if target is not None and value is not None:
                target.copy_(value)


# ----------------------------------------------------------------------------- channel sorting


def importance_order(importance: Tensor, groups: int = 1) -> Tensor:
    """A permutation putting the most important channels first (within each group)."""
    per_group = importance.view(groups, -1)
    local = torch.argsort(per_group, dim=1, descending=True, stable=True)
    starts = torch.arange(groups, device=importance.device)[:, None] * per_group.shape[1]
    return (local + starts).flatten()


@torch.no_grad()
def permute_(tensor: Tensor, perm: Tensor, dim: int) -> None:
    """Reorder ``tensor`` in place along ``dim``."""
    tensor.copy_(tensor.index_select(dim, perm))


@torch.no_grad()
def permute_bn_(bn: nn.BatchNorm2d, perm: Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None:
            permute_(t, perm, 0)


@torch.no_grad()
def permute_grouped_inputs_(conv: nn.Conv2d, perm: Tensor) -> None:
    """Reorder the per-group input dimension of a grouped conv whose input channels were
    permuted within groups by ``perm`` (the output channels are reordered separately)."""
    groups = conv.groups
    per_in = conv.weight.shape[1]
    per_out = conv.weight.shape[0] // groups
    local = (perm.view(groups, per_in) - torch.arange(groups, device=perm.device)[:, None] * per_in)
    weight = conv.weight.view(groups, per_out, per_in, *conv.weight.shape[2:])
    index = local[:, None, :].expand(groups, per_out, per_in)
    index = index.reshape(*index.shape, *([1] * (weight.dim() - 3))).expand_as(weight)
    weight.copy_(torch.gather(weight, 2, index))


# ----------------------------------------------------------------------------- counting


def count_params(module: nn.Module) -> int:
    """Number of parameters (works on ``meta`` modules)."""
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class LayerMacs:
    """One conv or linear layer of a forward pass: its kind (``conv1x1``, ``convkxk``, ``grouped``,
    ``fc``), the height of its output (1 for ``fc``) and its multiply-accumulates per sample."""

    kind: str
    out_size: int
    macs: int


@torch.no_grad()
def layer_macs(module: nn.Module, input_shape: Iterable[int]) -> list[LayerMacs]:
    """The conv and linear layers of one forward pass of ``module`` on an input of
    ``input_shape``, in execution order. Runs on the module's device; a ``meta`` module makes it free."""
    layers: list[LayerMacs] = []

    def conv_hook(m: nn.Conv2d, inputs: tuple, out: Tensor) -> None:
        kernel = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        kind = "grouped" if m.groups > 1 else ("conv1x1" if tuple(m.kernel_size) == (1, 1) else "convkxk")
        layers.append(LayerMacs(kind, int(out.shape[-2]), int(out[0].numel() * kernel)))

    def linear_hook(m: nn.Linear, inputs: tuple, out: Tensor) -> None:
        layers.append(LayerMacs("fc", 1, int(out[0].numel() * m.in_features)))

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        param = next(module.parameters())
        was_training = module.training
        module.eval()
        module(torch.zeros(*input_shape, device=param.device, dtype=param.dtype))
        module.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return layers


def count_macs(module: nn.Module, input_shape: Iterable[int]) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on an input of ``input_shape``
    (convs and linears only; per sample of the batch). Runs on the module's device; a ``meta``
    module makes it free."""
    return sum(layer.macs for layer in layer_macs(module, input_shape))
