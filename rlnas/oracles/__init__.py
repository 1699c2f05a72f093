"""Oracles that put numbers on architectures: measured latency (and accuracy, elsewhere).

Exports are lazy so that ``python -m rlnas.oracles.worker`` imports neither torch nor NNCF.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeviceProfile": "rlnas.oracles.device",
    "DeviceProfileError": "rlnas.oracles.device",
    "list_profiles": "rlnas.oracles.device",
    "load_profile": "rlnas.oracles.device",
    "profile_from_config": "rlnas.oracles.device",
    "MeasurementStore": "rlnas.oracles.store",
    "TimingConfig": "rlnas.oracles.worker",
    "LatencyOracle": "rlnas.oracles.latency",
    "LatencyResult": "rlnas.oracles.latency",
    "QuantizationConfig": "rlnas.oracles.latency",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlnas.oracles' has no attribute {name!r}")
