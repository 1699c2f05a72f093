"""The interface every family's supernet implements, and what all families share."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rlnas.arch import Arch, SearchSpace
from rlnas.spaces.elastic import LayerMacs, count_params, layer_macs

Device = torch.device | str | None
#: Extraction switches a supernet's active architecture for a moment: one at a time, so that
#: threads measuring in parallel (the Ray backend, the surrogate) never see another's.
_EXTRACTION = threading.RLock()


class Supernet(nn.Module):
    """A weight-sharing network that contains every architecture of its search space.

    Subclasses set ``space`` and ``task`` and implement :meth:`set_active` (which sub-network
    ``forward`` runs and sets ``active_arch``), :meth:`_extract_active` (the active sub-network as
    a plain module), :meth:`sort_channels` and :meth:`channel_plan` (the layer shapes
    :meth:`extract` builds, from which :meth:`network_key` tells apart distinct networks).
    :meth:`active`, :meth:`extract`, :meth:`count_params`, :meth:`count_macs` and :meth:`layer_macs` are
    shared.
    """

    space: SearchSpace
    task: str = "classification"  # or "detection"; "features" for a backbone
    active_arch: Arch

    def set_active(self, arch: Arch) -> None:
        """Validate ``arch`` (before changing anything) and make :meth:`forward` run it."""
        raise NotImplementedError

    def _extract_active(self, device: Device = None) -> nn.Module:
        """The active architecture as a standalone plain module: weights copied in, or shapes only
        on ``device="meta"`` (``None``: the supernet's device). Its train/eval mode is left as built."""
        raise NotImplementedError

    @contextmanager
    def active(self, arch: Arch) -> Iterator[Supernet]:
        """Run ``arch`` inside the ``with`` block; the previously active architecture is restored
        on exit, also when the block raises. Nests."""
        previous = self.active_arch
        try:
            self.set_active(arch)
            yield self
        finally:
            self.set_active(previous)

    def extract(self, arch: Arch) -> nn.Module:
        """``arch`` as a standalone plain module with the weights copied in, in the supernet's
        train/eval mode. The active architecture is left unchanged. Thread-safe (as are
        :meth:`count_params`, :meth:`count_macs` and :meth:`layer_macs`)."""
        return self._extract_plain(arch).train(self.training)

    def count_params(self, arch: Arch) -> int:
        """Parameters of ``arch``'s standalone network (counted on the ``meta`` device)."""
        return count_params(self._extract_plain(arch, "meta"))

    def count_macs(self, arch: Arch, resolution: int) -> int:
        """Multiply-accumulates of ``arch``'s standalone network on one ``resolution`` x
        ``resolution`` RGB image (:func:`rlnas.spaces.elastic.count_macs`, on the ``meta`` device)."""
        return sum(layer.macs for layer in self.layer_macs(arch, resolution))

    def layer_macs(self, arch: Arch, resolution: int) -> list[LayerMacs]:
        """The conv and linear layers of ``arch``'s standalone network on one ``resolution`` x
        ``resolution`` RGB image, in execution order (:func:`rlnas.spaces.elastic.layer_macs`).
        Cached per network (a meta-device extraction and forward: ~0.1 s for ResNet-50)."""
        key = (self.network_key(arch), int(resolution))
        cache = self.__dict__.setdefault("_layer_macs_cache", {})
        if key not in cache:
            cache[key] = tuple(self._count_layer_macs(arch, int(resolution)))
        return list(cache[key])

    def _count_layer_macs(self, arch: Arch, resolution: int) -> list[LayerMacs]:
        """Uncached :meth:`layer_macs`: hooks on a meta-device forward. A family may compute the
        same list from its channel plan instead (far cheaper where many networks are featurized)."""
        return layer_macs(self._extract_plain(arch, "meta"), (1, 3, resolution, resolution))

    def _extract_plain(self, arch: Arch, device: Device = None) -> nn.Module:
        with _EXTRACTION, self.active(arch):
            return self._extract_active(device)

    def sort_channels(self) -> None:
        """Reorder channels by importance so narrow sub-networks keep the most important ones."""
        raise NotImplementedError

    def channel_plan(self, arch: Arch) -> dict[str, Any]:
        """The network ``arch`` builds, as JSON-able plain data (ints, bools, strings, lists, dicts):
        every layer's channels, kernel, stride and groups, the blocks of each stage, the classifier
        or head sizes. Two architectures must get equal plans iff :meth:`extract` builds networks
        with identical layers and wiring (e.g. expand ratios that round to one width). Validates
        ``arch``; cheap (no tensors)."""
        raise NotImplementedError

    def network_key(self, arch: Arch) -> str:
        """A canonical string naming the network ``arch`` builds: equal for two architectures iff
        their extracted networks have identical layer shapes and wiring. Use it to count (and
        measure) each distinct network once. Raises :class:`~rlnas.arch.InvalidArchError` for an
        architecture outside the space."""
        return canonical_json({"family": self.space.family, "plan": self.channel_plan(arch)})


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces (tuples become lists), so equal data gives one string."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def conv_spec(in_ch: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> dict[str, int]:
    """One conv as :meth:`Supernet.channel_plan` records it."""
    return {"in": int(in_ch), "out": int(out), "kernel": int(kernel), "stride": int(stride), "groups": int(groups)}
