"""Up-front validation of composed configs: every command checks its config once, before it
builds or writes anything, and a bad value is one line naming the key, the value and what is valid.

Each command's config has a schema: ``rlnas-search``'s :mod:`rlnas.schema`,
``rlnas-train-supernet``'s :mod:`rlnas.supernet.config`. Its types, defaults and per-field rules
live there; :func:`check_search` and :func:`check_train` type a config by it (a saved run's plain
YAML too) and check every rule (:func:`rlnas.structured.check`), and :func:`check_search` adds what
involves two sections (the confirmation's timing: ``latency.timing`` with
``finalists.confirm_timing`` over it). Names (a family, a device profile, a dataset, an agent) are
checked where they are resolved, with their registries' messages.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rlnas.errors import ConfigError
from rlnas.oracles.ratios import TimingConfig
from rlnas.rules import FieldError, Rule, UnknownKeyError
from rlnas.schema import SearchConfig
from rlnas.structured import check, rules, typed
from rlnas.supernet.config import TrainSupernetConfig

#: the rules of ``rlnas-search`` (and the export, finalists and experiments built on its config),
#: by key: what the schema (:mod:`rlnas.schema`) declares
SEARCH_RULES: list[tuple[str, Rule]] = list(rules(SearchConfig))

#: the rules of ``rlnas-train-supernet``, by key: what its schema (:mod:`rlnas.supernet.config`) declares
TRAIN_RULES: list[tuple[str, Rule]] = list(rules(TrainSupernetConfig))


def one_line(err: Exception) -> ConfigError:
    """An error of Hydra or OmegaConf (a value of the wrong type, an unknown key, a missing group
    option) as one line: the key, the value and what was expected, when the error names them."""
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__ or err
    if not isinstance(cause, OmegaConfBaseException) or not getattr(cause, "full_key", None):
        return ConfigError(_joined(str(err)))
    key, text = cause.full_key, " ".join(str(cause).splitlines()[0].split())
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):
        schema = cause.object_type
        if isinstance(schema, type) and is_dataclass(schema):
            return UnknownKeyError(key, (f.name for f in fields(schema) if f.name != "_target_"))
        return ConfigError(f"{key} is not a key of the config: {text}")
    value = getattr(cause, "value", None)
    shown = f"={value!r}" if value is not None and not OmegaConf.is_config(value) else ""
    return ConfigError(f"{key}{shown} is not valid: {text}")


def _joined(message: str) -> str:
    """Hydra's message on one line: its paragraphs joined by '; ', each list in one (the config
    search path left out)."""
    message = message.split("Config search path")[0]
    paragraphs = [[line.strip() for line in part.splitlines() if line.strip()] for part in message.split("\n\n")]
    return "; ".join(lines[0] + (" " + ", ".join(lines[1:]) if lines[1:] else "") for lines in paragraphs if lines)


def _check_confirm_timing(cfg: DictConfig) -> None:
    """The confirmation times with ``latency.timing`` and ``finalists.confirm_timing`` over it."""
    timing = {k: v for k, v in OmegaConf.to_container(cfg.latency.timing, resolve=True).items() if k != "_target_"}
    confirm = OmegaConf.to_container(cfg.finalists.confirm_timing, resolve=True)
    for key in confirm:
        if key not in timing:
            raise UnknownKeyError(f"finalists.confirm_timing.{key}", timing)
    try:
        TimingConfig(**{**timing, **confirm})
    except FieldError as err:
        raise err.at("finalists.confirm_timing.") from None


def checked(cfg: DictConfig, schema: type) -> DictConfig:
    """``cfg`` typed by ``schema`` (a value of the wrong type: one line) and checked against its
    rules; Hydra's own node aside."""
    try:
        cfg = typed(cfg, schema)
    except OmegaConfBaseException as err:
        raise one_line(err) from None
    return check(cfg)


def check_search(cfg: DictConfig) -> DictConfig:
    """The ``rlnas-search`` config (also what export and the finalists read), typed by the schema
    and checked against its rules: returns it typed (Hydra's own node aside)."""
    cfg = checked(cfg, SearchConfig)
    _check_confirm_timing(cfg)
    return cfg


def check_train(cfg: DictConfig) -> DictConfig:
    """The ``rlnas-train-supernet`` config (a composed one, a saved run's, the search's), typed by
    its schema and checked against its rules: returns it typed."""
    return checked(cfg, TrainSupernetConfig)
