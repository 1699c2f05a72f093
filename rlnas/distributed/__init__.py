"""Distributed evaluation: :mod:`rlnas.distributed.ray_backend` (``backend=ray``).

Ray is an optional extra (``pip install 'rlnas[ray]'``). Nothing here imports it: a local run
never loads Ray, and a run asking for ``backend=ray`` without it gets :class:`RayNotInstalled`,
one line naming the install command.
"""

from __future__ import annotations

import importlib.util

from rlnas.errors import UserError

#: The oldest Ray with token authentication (RAY_AUTH_MODE=token), which the embedded Ray uses.
MIN_RAY = (2, 52)
RAY_INSTALL = "pip install 'rlnas[ray]'"


class RayNotInstalled(UserError, ImportError):
    """``backend=ray`` without Ray (or with a Ray too old for token authentication)."""


def require_ray(version: str | None = None) -> None:
    """Raise :class:`RayNotInstalled` unless Ray can be imported; with ``version`` (Ray's
    ``__version__``), also unless it is at least :data:`MIN_RAY`. Imports nothing."""
    if version is None:
        if importlib.util.find_spec("ray") is None:
            raise RayNotInstalled(f"backend=ray needs Ray, which is not installed: {RAY_INSTALL}")
        return
    try:
        have = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return  # a build without a plain version number: let it run
    if have < MIN_RAY:
        raise RayNotInstalled(f"backend=ray needs ray>={MIN_RAY[0]}.{MIN_RAY[1]} (token authentication), "
                              f"this environment has ray {version}: {RAY_INSTALL}")
