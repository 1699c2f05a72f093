"""Model families (timm-style registry): ``@register_family``, ``create_supernet``, ``list_families``,
``get_space``.

A family is one module whose builder registers itself with ``@register_family``
(:mod:`rlnas.spaces.registry`) plus one ``rlnas/conf/model/<name>.yaml``; the modules are imported
here so that importing :mod:`rlnas.spaces` registers them all.
"""

from __future__ import annotations

from rlnas.spaces import mobilenet, resnet, ssd
from rlnas.spaces.registry import create_supernet, get_space, list_families, register_family

FAMILY_MODULES = (mobilenet, resnet, ssd)

__all__ = ["FAMILY_MODULES", "create_supernet", "get_space", "list_families", "register_family"]
