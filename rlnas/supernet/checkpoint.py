"""Supernet checkpoints: atomic writes, a content hash as the accuracy-cache key, RNG states.

Two files per training directory:

- ``last.pt``: everything needed to resume (model, optimizer, scheduler, progress, RNG states,
  config), rewritten every epoch and every N steps;
- ``supernet.pt``: the final weights and ``meta`` (family, builder kwargs, resolution, dataset,
  recipe, results) with ``meta["checkpoint_id"]``, a hash of the weights and the family, so that
  accuracy measurements cached under it are never reused for other weights.

Both are written to a temporary file in the same directory and renamed (``os.replace``), so a kill
at any moment leaves either the previous or the new file, never a torn one.

Nothing read runs code: every file is loaded with ``torch.load(weights_only=True)`` (:func:`safe_load`),
and :func:`atomic_save` stores only what that reads (:func:`plain_tree`: tensors and plain Python
data; NumPy values become lists and numbers, OmegaConf containers dicts and lists). A file that
needs more (a pickled object, from an older rlnas or another tool) is refused with one line naming
the convert command, ``rlnas-convert-checkpoint PATH`` (:mod:`rlnas.convert`), for files one trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct
from omegaconf import OmegaConf

from rlnas.errors import UserError
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet

FINAL_NAME = "supernet.pt"
LAST_NAME = "last.pt"
FORMAT_VERSION = 1
CONVERT_COMMAND = "rlnas-convert-checkpoint"
# last.pt files written before the RNG states were stored as lists hold NumPy's state as a uint32
# array: these rebuild exactly that (an array of plain numbers, never an object array), no code
NUMPY_RNG_GLOBALS: list[Any] = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray,
                                np.dtype, np.dtypes.UInt32DType]
_ALLOWED_NAMES = {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                  "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType"}
# stored as they are: what torch.load(weights_only=True) reads (exact types: np.float64 is a float)
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or inconsistent; the message says which."""


def plain_tree(obj: Any, where: str = "") -> Any:
    """``obj`` as only what ``torch.load(weights_only=True)`` reads: tensors, plain numbers and
    strings, dicts (an ``OrderedDict`` keeps its state-dict ``_metadata``), lists and tuples.
    NumPy arrays and scalars become lists and numbers, OmegaConf containers dicts and lists,
    paths strings.

    :raises CheckpointError: naming the place and type of anything else.
    """
    if type(obj) in _LEAVES or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    if OmegaConf.is_config(obj):
        return plain_tree(OmegaConf.to_container(obj, resolve=True), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return _plain_mapping(obj, where)
    if isinstance(obj, list | tuple):
        items = [plain_tree(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise CheckpointError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} at "
                          f"{where or 'the top level'}: a checkpoint holds only tensors and plain Python data")


def _plain_mapping(obj: Mapping[Any, Any], where: str) -> dict[Any, Any]:
    out: dict[Any, Any] = OrderedDict() if isinstance(obj, OrderedDict) else {}
    for key, value in obj.items():
        out[plain_tree(key, f"{where} key")] = plain_tree(value, f"{where}[{key!r}]")
    if hasattr(obj, "_metadata"):  # a state dict's module versions
        out._metadata = plain_tree(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
    return out


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """The classes and functions ``path`` would import to load, beyond what :func:`safe_load`
    allows (read from the pickle, nothing run; [] when the file cannot be parsed)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a corrupt file: the load error says what is wrong
        return []
    return [n for n in names if n not in _ALLOWED_NAMES]


def refusal(path: str | os.PathLike, what: str) -> str:
    """The one line that refuses a file needing code to load and says how to convert it."""
    return (f"refused to load {what} {path}: loading it would run code{_holding(unsafe_globals(path))}, as files "
            f"from older rlnas versions or other tools may; if you trust it, convert it once with "
            f"`{CONVERT_COMMAND} {path}`")


def _holding(names: list[str]) -> str:
    """' (it holds a, b, c, ... N names from packages p, q)': sorted, so the same file gives the same line."""
    if not names:
        return ""
    names = sorted(names)
    if len(names) <= 3:
        return f" (it holds {', '.join(names)})"
    packages = sorted({name.split(".")[0] for name in names})
    return f" (it holds {', '.join(names[:3])}, ... {len(names)} names from {', '.join(packages)})"


def safe_load(path: str | os.PathLike, error: type[Exception] = CheckpointError, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: a file that needs code to load is never run.

    :param error: the caller's error type, raised with the message.
    :param what: how the message names the file (``"the a0 checkpoint"``).
    :raises error: one line: the file needs code to load (naming :data:`CONVERT_COMMAND`), or it is
        unreadable (saying why).
    """
    try:
        with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise error(refusal(path, what)) from None
        raise error(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err
    except Exception as err:  # torch raises a zoo of types for corrupt files
        raise error(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` of :func:`plain_tree` ``(obj)`` (so :func:`safe_load` reads it) to a temporary
    file next to ``path``, fsync, then rename over ``path``."""
    obj = plain_tree(obj)
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
    """Load a checkpoint dict written by this module (tensors on CPU), running no code.

    :raises CheckpointError: missing, unreadable, or needing code to load (see :func:`safe_load`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return safe_load(path)


def weights_hash(state_dict: Mapping[str, torch.Tensor], family: str = "") -> str:
    """SHA-256 (first 16 hex digits) over the family and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(family.encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states (NumPy's key as a list: plain data)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (str(name), key.tolist(), int(pos), int(has_gauss), float(gauss))
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (NumPy's key as a list or an array)."""
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
