"""Supernet training (sandwich rule, in-place distillation), BN recalibration and checkpoints.

``train_supernet(cfg) -> Path`` trains (or resumes, or finds) ``<output_dir>/supernet.pt``;
``load_supernet(path) -> (supernet, meta)`` rebuilds it, ``meta["checkpoint_id"]`` being the key
of its accuracy measurements.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlnas.supernet.bn import bn_state, load_bn_state, preserved_bn_state, recalibrate_bn
from rlnas.supernet.checkpoint import CheckpointError, load_supernet, save_supernet, weights_hash

_LAZY = {"train_supernet": "rlnas.supernet.train", "compose_config": "rlnas.supernet.train",
         "Recipe": "rlnas.supernet.train", "SupernetTrainer": "rlnas.supernet.train"}

__all__ = ["CheckpointError", "bn_state", "load_bn_state", "load_supernet", "preserved_bn_state",
           "recalibrate_bn", "save_supernet", "weights_hash", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # the trainer imports Hydra/OmegaConf; keep `import rlnas.supernet` light
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlnas.supernet' has no attribute {name!r}")
