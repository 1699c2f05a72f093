"""a0, the user's trained model: the reference of the constraint and the supernet's starting point.

a0 comes from one place, ``a0.checkpoint``: a torchvision-format state dict of the network the user
deploys today, trained for the task (its classifier has the task's number of classes). It is
loaded strictly into the family's maximal network: a checkpoint of another family or another class
count is an error naming the mismatching tensors, never silently skipped (torchvision's ImageNet
weights are an *initialisation*, ``init.torchvision``, not an a0). Any torchvision ResNet is an a0
(:func:`detect_a0_family` tells which from its state dict); one of another family than the
configured model is an error naming the family it is (``use model=resnet18``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlnas.data.spec import resolve_path
from rlnas.errors import UserError
from rlnas.spaces import create_supernet
from rlnas.spaces.base import Supernet
from rlnas.spaces.resnet import TORCHVISION_RESNETS, NotAResNetError, detect_torchvision_resnet
from rlnas.supernet.checkpoint import safe_load

log = logging.getLogger(__name__)


class A0Error(UserError, ValueError):
    """An a0 checkpoint that is missing or does not fit the family; the message says what."""


def resolve_a0(checkpoint: str | os.PathLike | None) -> Path | None:
    """The a0 checkpoint's absolute path, or None when none is configured.

    :raises A0Error: the path is configured but no file is there.
    """
    if checkpoint in (None, ""):
        return None
    path = resolve_path(checkpoint)
    if not path.is_file():
        raise A0Error(f"a0.checkpoint={str(checkpoint)!r}: {path} does not exist (a torchvision-format "
                      "state dict of the model you deploy; a0.checkpoint=null trains a supernet from scratch)")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (identifies a0 in cache keys and reports)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in ``path`` (a plain state dict, or a dict holding one under ``state_dict``),
    loaded without running code.

    :raises A0Error: unreadable, needing code to load (naming ``rlnas-convert-checkpoint``), or not
        a state dict.
    """
    state = safe_load(path, A0Error, "the a0 checkpoint")
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise A0Error(f"{path} is not a state dict (name -> tensor)")
    return dict(state)


def load_a0_weights(supernet: nn.Module, state: Mapping[str, Tensor], source: str = "a0") -> None:
    """Load a0's weights into the maximal network of ``supernet``, every tensor, strictly.

    :raises A0Error: naming missing, unexpected or differently shaped tensors.
    """
    own = supernet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        family = getattr(getattr(supernet, "space", None), "family", type(supernet).__name__)
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"shape {shapes[:3]}" if shapes else ""]
        detail = "; ".join(p for p in parts if p)
        _raise_other_family(family, getattr(supernet, "num_classes", None), state, source, detail)
        raise A0Error(f"{source} does not fit {family} with these settings ({detail}): "
                      "a0 must be this family trained for this task (e.g. its classifier has num_classes outputs)")
    supernet.load_state_dict(dict(state), strict=True)


def detect_a0_family(state: Mapping[str, Tensor]) -> tuple[str, int]:
    """The torchvision ResNet family of a0's state dict and its class count, e.g. ``("resnet18", 10)``
    (:func:`rlnas.spaces.resnet.detect_torchvision_resnet`: block type, depths, groups and width
    from the tensors).

    :raises A0Error: one line: what ``state`` looks like and the supported families.
    """
    try:
        return detect_torchvision_resnet(state)
    except NotAResNetError as err:
        raise A0Error(f"a0 is {err}") from None


def _raise_other_family(family: str, num_classes: int | None, state: Mapping[str, Tensor], source: str,
                        detail: str) -> None:
    """Raise the one-line :class:`A0Error` for an a0 that does not fit ``family``: the torchvision
    ResNet it is (``use model=<it>``), or, where ``family`` is a torchvision ResNet, that a0 is none
    of the supported ones. Returns where neither applies (the caller's generic message)."""
    try:
        found, found_classes = detect_torchvision_resnet(state)
    except NotAResNetError as err:
        if family in TORCHVISION_RESNETS:
            raise A0Error(f"{source} does not fit model={family}: it is {err}") from None
        return
    if found != family:
        hint = "" if num_classes in (None, found_classes) else \
            f" (and an a0 trained for this task's {num_classes} classes)"
        raise A0Error(f"{source} looks like {found} (num_classes={found_classes}), not {family}: "
                      f"use model={found}{hint}")
    raise A0Error(f"{source} is {found} with num_classes={found_classes}, but this task has {num_classes} classes "
                  f"({detail}): a0 must be {family} trained for this task")


def build_a0(family: str, model_kwargs: Mapping[str, Any], checkpoint: str | os.PathLike) -> nn.Module:
    """a0 as deployed: the plain network of ``family`` with the checkpoint's weights and its own
    BN statistics, in eval mode."""
    path = resolve_a0(checkpoint)
    supernet: Supernet = create_supernet(family, **dict(model_kwargs))
    load_a0_weights(supernet, read_state(path), str(path))
    return supernet.extract(supernet.space.max_arch()).eval()


def frozen_teacher(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` that never trains: eval mode (its BN statistics stay), no gradients."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher
