"""Model families (timm-style registry): ``@register_family``, ``create_supernet``, ``list_families``,
``get_space``.

A family is one module in this package whose builder registers itself with ``@register_family``
(:mod:`rlnas.spaces.registry`), plus one ``rlnas/conf/model/<name>.yaml``. Importing
:mod:`rlnas.spaces` imports every module of the package, so a new family file registers itself
with no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from rlnas.spaces.registry import create_supernet, get_space, list_families, register_family

#: every module of the package, families and the shared parts alike, imported once here
FAMILY_MODULES = tuple(importlib.import_module(f"{__name__}.{info.name}")
                       for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name))

__all__ = ["FAMILY_MODULES", "create_supernet", "get_space", "list_families", "register_family"]
