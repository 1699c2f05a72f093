"""Supernet training (sandwich rule, in-place or a0 distillation), BN recalibration and checkpoints.

``train_supernet(cfg) -> Path`` trains (or resumes, or finds) ``<output_dir>/supernet.pt``;
``load_supernet(path) -> (supernet, meta)`` rebuilds it, ``meta["checkpoint_id"]`` being the key
of its accuracy measurements.
"""

from __future__ import annotations

from rlnas.supernet.bn import bn_state, load_bn_state, preserved_bn_state, recalibrate_bn
from rlnas.supernet.checkpoint import CheckpointError, load_supernet, save_supernet, weights_hash
from rlnas.supernet.recipe import Recipe
from rlnas.supernet.train import SupernetTrainer, compose_config, train_supernet

__all__ = ["CheckpointError", "Recipe", "SupernetTrainer", "bn_state", "compose_config", "load_bn_state",
           "load_supernet", "preserved_bn_state", "recalibrate_bn", "save_supernet", "train_supernet",
           "weights_hash"]
