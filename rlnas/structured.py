"""Typed Hydra configs from rlnas's dataclasses: a key's type, default and rule are written once, in
the field of the dataclass rlnas builds from the config (``ruled(default, rule)``, :mod:`rlnas.rules`).

- :func:`node_of`: the Hydra node of such a dataclass, a mutable copy of its fields (Hydra makes a
  frozen dataclass a read-only node, which no override could change);
- :func:`typed`: a config over its schema, each value converted to its type (a config Hydra composed
  over the schema comes back as it was; a saved one, plain YAML, gets its types back);
- :func:`check`: every rule of a typed config, an error naming the full key
  (``recipe.phases[1].epochs``), and every key the schema does not know;
- :func:`rules`: a schema's rules by key.

The schemas: :mod:`rlnas.schema` (``rlnas-search``, ``rlnas-export``) and
:mod:`rlnas.supernet.config` (``rlnas-train-supernet``). This module imports nothing of rlnas but
its rules and errors, so the trainer can import its schema without the search's.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import Field, field, fields, is_dataclass, make_dataclass
from typing import Any

from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf

from rlnas.errors import ConfigError
from rlnas.rules import RULE, FieldError, Rule, UnknownKeyError, rule_of

# -- nodes -------------------------------------------------------------------------------------------


def target_of(cls: type) -> str:
    """The ``_target_`` Hydra instantiates ``cls`` by."""
    return f"{cls.__module__}.{cls.__qualname__}"


def defaults_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The default of each parameter of ``fn`` (a class: its constructor) that has one."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _copy(spec: Field, kind: Any, rule: Rule | None) -> tuple[str, Any, Field]:
    """Field ``spec`` for a node: a required field is Hydra's mandatory value (``???``), a tuple
    default a list."""
    metadata = {**spec.metadata, **({RULE: rule} if rule else {})}
    if spec.default_factory is not NO_DEFAULT:
        return spec.name, kind, field(default_factory=spec.default_factory, metadata=metadata)
    if spec.default is NO_DEFAULT:
        return spec.name, kind, field(default=MISSING, metadata=metadata)
    if isinstance(spec.default, tuple):
        return spec.name, kind, field(default_factory=functools.partial(list, spec.default), metadata=metadata)
    return spec.name, kind, field(default=spec.default, metadata=metadata)


def node_of(source: type, *, target: bool, module: str, rules: dict[str, Rule] | None = None,
            kinds: dict[str, Any] | None = None) -> type:
    """The Hydra node of dataclass ``source``: a mutable dataclass ``<source>Node`` of ``module``
    (which keeps it under that name, so a pickled config finds it) with ``source``'s fields,
    types, defaults and rules (plus ``rules``), and ``_target_`` = ``source`` when ``target``
    (Hydra instantiates the node as ``source``). ``kinds``: a field's type in the node where the
    source's is not one OmegaConf takes (a tuple of dataclasses: a list of their nodes).
    :func:`check` builds ``source`` from the node, so its ``__post_init__`` checks what no single
    field can (``block_skip`` below ``block_iters``)."""
    rules, kinds = rules or {}, {**typing.get_type_hints(source), **(kinds or {})}
    copied = [_copy(spec, kinds[spec.name], rules.get(spec.name)) for spec in fields(source)]
    head = [("_target_", str, field(default=target_of(source)))] if target else []
    return make_dataclass(f"{source.__name__}Node", head + copied,
                          namespace={"__module__": module,
                                     "__doc__": f"The config node of :class:`{source.__name__}`.",
                                     "SOURCE": source})


# -- typing and checking -----------------------------------------------------------------------------


def _is_node(kind: Any) -> bool:
    return isinstance(kind, type) and is_dataclass(kind)


def _item_node(kind: Any) -> type | None:
    """The node of a list field's items (``list[PhaseNode]``: ``PhaseNode``), else None."""
    args = typing.get_args(kind)
    return args[0] if typing.get_origin(kind) is list and args and _is_node(args[0]) else None


def rules(schema: type, prefix: str = "") -> Iterator[tuple[str, Rule]]:
    """Every key of ``schema`` that has a rule, with it, nested nodes included
    (``latency.timing.min_rounds``; the items of a list are not keys: ``recipe.phases`` is)."""
    kinds = typing.get_type_hints(schema)
    for spec in fields(schema):
        if _is_node(kinds[spec.name]):
            yield from rules(kinds[spec.name], f"{prefix}{spec.name}.")
        elif rule_of(spec) is not None:
            yield f"{prefix}{spec.name}", rule_of(spec)


def _build_source(node: DictConfig, source: type, path: str) -> None:
    """``source`` from the node's values: its ``__post_init__`` checks what one field cannot."""
    values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    try:
        source(**values)
    except FieldError as err:
        raise err.at(path) from None


def added_keywords(schema: type) -> list[str]:
    """The keywords a node of ``schema`` may have beyond its fields: with a ``_target_`` that is not
    a dataclass (an oracle), the other parameters with a default of the target's constructor;
    else none."""
    target = next((spec.default for spec in fields(schema) if spec.name == "_target_"), None)
    built = get_object(target) if isinstance(target, str) else None
    if built is None or is_dataclass(built):
        return []
    names = {spec.name for spec in fields(schema)}
    return [name for name in defaults_of(built) if name not in names]


def _check_keys(cfg: DictConfig, schema: type, path: str) -> None:
    """Every key of ``cfg`` is a field of ``schema`` or a keyword it may add (Hydra's ``+key=value``)."""
    known = [spec.name for spec in fields(schema) if spec.name != "_target_"]
    added = added_keywords(schema)
    for key in cfg:
        if key not in known and key != "_target_" and key not in added:
            raise UnknownKeyError(f"{path}{key}", known + added)


def _check_given(spec: Field, path: str) -> None:
    """A mandatory value (``???``) left without one: refused where the field has a rule (a phase's
    ``epochs``); else it is Hydra's to require (a group) or the command's (``rlnas-export``'s ``run``)."""
    rule = rule_of(spec)
    if rule is not None:
        raise ConfigError(f"{path}{spec.name} has no value: give {rule.valid}")


def _check_items(items: Any, path: str) -> None:
    """Each node of a list field (``recipe.phases[0].``...)."""
    for index, item in enumerate(items or ()):
        check(item, f"{path}[{index}].")


def check(cfg: DictConfig, path: str = "") -> DictConfig:
    """Raise :class:`~rlnas.rules.FieldError` for the first value of the typed ``cfg`` (a
    :func:`typed` config or a Hydra-composed one) a rule refuses, named by its full key, and
    :class:`~rlnas.rules.UnknownKeyError` for a key the schema does not know."""
    schema = OmegaConf.get_type(cfg)
    kinds = typing.get_type_hints(schema)
    _check_keys(cfg, schema, path)
    for spec in fields(schema):
        if OmegaConf.is_missing(cfg, spec.name):
            _check_given(spec, path)
            continue
        if _is_node(kinds[spec.name]):
            check(cfg[spec.name], f"{path}{spec.name}.")
            continue
        rule = rule_of(spec)
        if rule is not None and not rule.ok(cfg[spec.name]):
            raise FieldError(f"{path}{spec.name}", cfg[spec.name], rule.valid)
        if _item_node(kinds[spec.name]) is not None:
            _check_items(cfg[spec.name], f"{path}{spec.name}")
    source = getattr(schema, "SOURCE", None)
    if source is not None:
        _build_source(cfg, source, path)
    return cfg


def typed(cfg: DictConfig, schema: type) -> DictConfig:
    """``cfg`` (Hydra's own node aside) over ``schema``: values converted to their types (a value
    of the wrong type is an OmegaConf error), unknown keys kept for :func:`check`. A config Hydra
    composed over the schema comes back as it was; a saved one (``<run>/.hydra/config.yaml``)
    gets its types back, and the keys it lacks their defaults."""
    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, False)  # a key the schema does not know is for check() to name
    merged = OmegaConf.merge(base, body)
    OmegaConf.set_struct(merged, True)
    return merged
