"""``rlnas-convert-checkpoint PATH [--out PATH]``: rewrite a checkpoint you trust so that rlnas
loads it without running code.

rlnas reads every ``.pt`` file with ``torch.load(weights_only=True)``
(:func:`rlnas.supernet.checkpoint.safe_load`) and refuses one that needs more, e.g. a ``last.pt``,
``supernet.pt``, ``finetune.pt`` or ``model.pt`` written by an older rlnas, or an a0 saved as a whole
module (``torch.save(model)``). This command is the one place that loads such a file the unsafe
way (``weights_only=False``: whatever code the file holds runs), and only because the user asked
for that file: it then writes the same content as tensors and plain Python data (NumPy values as
lists and numbers, OmegaConf containers as dicts and lists, a whole module as its state dict),
atomically, to ``--out`` or over ``PATH``, and checks that the result loads the safe way. A file
that already loads the safe way is never loaded unsafely.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import rlnas
from rlnas.supernet.checkpoint import CONVERT_COMMAND, CheckpointError, atomic_save, safe_load


def load_trusted(path: str | os.PathLike) -> Any:
    """``path`` loaded the safe way, or else with ``weights_only=False`` (runs the code it holds).

    :raises CheckpointError: the file is missing or cannot be loaded either way.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return safe_load(path)
    except CheckpointError:
        pass
    print(f"{CONVERT_COMMAND}: loading {path} with weights_only=False, as asked (only for files you trust)",
          file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # e.g. a class that no longer exists
        raise CheckpointError(f"cannot read {path} even unsafely: {type(err).__name__}: {err}") from err


def convert_checkpoint(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Rewrite ``path`` (trusted) as a file :func:`~rlnas.supernet.checkpoint.safe_load` reads;
    returns where it was written (``out``, default ``path`` itself, replaced atomically).

    :raises CheckpointError: unreadable, or holding something that is not data (named).
    """
    obj = load_trusted(path)
    if isinstance(obj, nn.Module):  # torch.save(model): what rlnas reads is its state dict
        obj = obj.state_dict()
    target = Path(out) if out is not None else Path(path)
    atomic_save(obj, target)  # stores plain_tree(obj): raises before writing if something is not data
    safe_load(target)
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog=CONVERT_COMMAND,
        description="Rewrite a checkpoint you trust (last.pt, supernet.pt, finetune.pt, model.pt, an a0 state dict) "
                    "that rlnas refuses because loading it would run code: it is loaded once with "
                    "weights_only=False and written back as tensors and plain data, which rlnas loads safely.")
    parser.add_argument("path", help="the checkpoint to convert (only one you trust: loading it runs its code)")
    parser.add_argument("--out", help="where to write the converted file (default: replace PATH)")
    parser.add_argument("--version", action="version", version=f"rlnas {rlnas.__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code (2: the file cannot be converted, one line on stderr)."""
    args = parse_args(argv)
    try:
        target = convert_checkpoint(args.path, args.out)
    except (CheckpointError, OSError) as err:
        print(f"{CONVERT_COMMAND}: {err}", file=sys.stderr)
        return 2
    print(f"{args.path} -> {target}: loads without running code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
