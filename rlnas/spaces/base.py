"""The interface every family's supernet implements."""

from __future__ import annotations

from torch import nn

from rlnas.arch import Arch, SearchSpace


class Supernet(nn.Module):
    """A weight-sharing network that contains every architecture of its search space.

    Subclasses set ``space`` and ``task`` and implement :meth:`set_active` (which sub-network
    ``forward`` runs) and :meth:`extract` (a standalone plain module with the weights copied in).
    """

    space: SearchSpace
    task: str = "classification"  # or "detection"

    def set_active(self, arch: Arch) -> None:
        raise NotImplementedError

    def extract(self, arch: Arch) -> nn.Module:
        raise NotImplementedError

    def sort_channels(self) -> None:
        """Reorder channels by importance so narrow sub-networks keep the most important ones."""
        raise NotImplementedError
