"""Supernet checkpoints: atomic writes, a content hash as the accuracy-cache key, RNG states.

Two files per training directory:

- ``last.pt``: everything needed to resume (model, optimizer, scheduler, progress, RNG states,
  config), rewritten every epoch and every N steps;
- ``supernet.pt``: the final weights and ``meta`` (family, builder kwargs, resolution, dataset,
  recipe, results) with ``meta["checkpoint_id"]``, a hash of the weights and the family, so that
  accuracy measurements cached under it are never reused for other weights.

Both are written to a temporary file in the same directory and renamed (``os.replace``), so a kill
at any moment leaves either the previous or the new file, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet

FINAL_NAME = "supernet.pt"
LAST_NAME = "last.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or inconsistent; the message says which."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict written by this module (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises a zoo of types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def weights_hash(state_dict: Mapping[str, torch.Tensor], family: str = "") -> str:
    """SHA-256 (first 16 hex digits) over the family and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(family.encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_supernet(path: str | os.PathLike, supernet: Supernet, meta: Mapping[str, Any]) -> str:
    """Write the final checkpoint; returns its ``checkpoint_id``.

    ``meta`` must hold ``family`` and ``kwargs`` (what :func:`create_supernet` needs).
    """
    missing = {"family", "kwargs"} - set(meta)
    if missing:
        raise CheckpointError(f"supernet meta lacks {sorted(missing)}")
    state = {k: v.detach().cpu().clone() for k, v in supernet.state_dict().items()}
    checkpoint_id = weights_hash(state, meta["family"])
    meta = {**json.loads(json.dumps(dict(meta), default=str)), "checkpoint_id": checkpoint_id,
            "format": FORMAT_VERSION}
    atomic_save({"model": state, "meta": meta}, path)
    return checkpoint_id


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/supernet.pt`` for a training directory."""
    path = Path(path)
    return path / FINAL_NAME if path.is_dir() else path


def load_supernet(path: str | os.PathLike, verify: bool = True) -> tuple[Supernet, dict[str, Any]]:
    """Rebuild a trained supernet: ``(supernet in eval mode, meta)``.

    :param path: a ``supernet.pt`` or the training directory holding one.
    :param verify: recompute the weights hash and refuse a file whose weights changed.
    """
    path = resolve_checkpoint(path)
    ckpt = load_file(path)
    if "meta" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a supernet checkpoint (keys: {sorted(ckpt)[:6]})")
    meta = ckpt["meta"]
    supernet = create_supernet(meta["family"], **meta["kwargs"])
    try:
        supernet.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {meta['family']}({meta['kwargs']}): {err}") from err
    if verify:
        actual = weights_hash(ckpt["model"], meta["family"])
        if actual != meta.get("checkpoint_id"):
            raise CheckpointError(f"{path}: weights hash {actual} != recorded {meta.get('checkpoint_id')}")
    meta = dict(meta, path=str(path.resolve()))
    return supernet.eval(), meta
