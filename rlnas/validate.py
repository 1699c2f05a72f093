"""Up-front validation of composed configs: every command checks its config once, before it
builds or writes anything, and a bad value is one line naming the key, the value and what is valid.

Names (a family, a device profile, a dataset, an agent) are checked where they are resolved, with
their registries' messages; this module checks the numbers and the choices among fixed values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlnas.errors import ConfigError
from rlnas.finalists import FinalistsConfig
from rlnas.oracles.ratios import TimingConfig

Rule = tuple[str, Callable[[Any], bool], str]


def _int(low: int | None = None, optional: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if v is None:
            return optional
        return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)

    return check


def _num(low: float | None = None, high: float | None = None, low_open: bool = False,
         optional: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or v <= high

    return check


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


#: rules of ``rlnas-search`` (and the export, finalists and experiments built on its config)
SEARCH_RULES: list[Rule] = [
    ("budget", _int(1), "an integer >= 1 (unique architectures measured)"),
    ("tau", _num(0, 1, low_open=True), "a number in (0, 1] (feasible iff Acc_INT8 >= tau * Acc_FP32(a0))"),
    ("resolution", _int(8), "an integer >= 8 (pixels)"),
    ("threads", _int(1), "an integer >= 1"),
    ("seed", _int(0), "an integer >= 0"),
    ("accuracy.recal_images", _int(0), "an integer >= 0 (0: keep the supernet's BN statistics)"),
    ("accuracy.calib_images", _int(1), "an integer >= 1"),
    ("accuracy.eval_images", _int(1, optional=True), "null (the whole split) or an integer >= 1"),
    ("accuracy.fp32_images", _int(0, optional=True), "null (same as INT8), 0 (skip) or an integer >= 1"),
    ("accuracy.batch_size", _int(1), "an integer >= 1"),
    ("accuracy.inference_precision", _one_of("f32", "bf16", "f16"), "one of f32, bf16, f16"),
    ("latency.timeout_s", _num(0, low_open=True), "a number of seconds > 0"),
    ("latency.quantization.random_subset_size", _int(1), "an integer >= 1"),
    ("latency.timing.min_rounds", _int(1), "an integer >= 1"),
    ("latency.timing.max_time_s", _num(0, low_open=True), "a number of seconds > 0"),
    ("finalists.k", _int(0), "an integer >= 0 (0: no finalists)"),
    ("finalists.margin", _num(0), "a number >= 0"),
    ("finalists.rank", _one_of("objective", "latency"), "one of objective, latency"),
    ("finalists.confidence", _num(0, 1, low_open=True), "a probability in (0, 1)"),
    ("finalists.epochs", _num(0), "a number >= 0 (0: no fine-tuning)"),
    ("finalists.lr", _num(0, low_open=True), "a number > 0"),
    ("finalists.batch_size", _int(1), "an integer >= 1"),
    ("finalists.kd_alpha", _num(0, 1), "a number in [0, 1]"),
    ("finalists.checkpoint_every", _int(1), "an integer >= 1"),
    ("finalists.calib_images", _int(1), "an integer >= 1"),
    ("finalists.quantization", _one_of("ptq", "accuracy_control"), "one of ptq, accuracy_control"),
    ("finalists.max_drop", _num(0, 1, low_open=True), "a number in (0, 1]"),
    ("export.finetune_epochs", _int(0), "an integer >= 0"),
    ("export.finetune_lr", _num(0, low_open=True), "a number > 0"),
    ("export.finetune_batch_size", _int(1), "an integer >= 1"),
    ("export.kd_temperature", _num(0, low_open=True), "a number > 0"),
    ("export.onnx_opset", _int(7), "an integer >= 7"),
    ("export.calib_images", _int(1), "an integer >= 1"),
    ("export.verify_images", _int(0, optional=True), "null (the evaluation set), 0 (skip) or an integer >= 1"),
    ("logging.pareto_every", _int(1), "an integer >= 1"),
    ("supernet.max_seconds", _num(0, low_open=True, optional=True), "null or a number of seconds > 0"),
]

#: rules of ``rlnas-train-supernet``
TRAIN_RULES: list[Rule] = [
    ("resolution", _int(8), "an integer >= 8 (pixels)"),
    ("threads", _int(1), "an integer >= 1"),
    ("seed", _int(0), "an integer >= 0"),
    ("max_seconds", _num(0, low_open=True, optional=True), "null or a number of seconds > 0"),
    ("checkpoint.every_steps", _int(0), "an integer >= 0 (0: only at epoch ends)"),
    ("eval.recal_images", _int(0), "an integer >= 0"),
    ("recipe.batch_size", _int(1), "an integer >= 1"),
    ("recipe.lr", _num(0, low_open=True), "a number > 0"),
    ("recipe.kd_alpha", _num(0, 1), "a number in [0, 1]"),
    ("recipe.kd_temperature", _num(0, low_open=True), "a number > 0"),
    ("accelerator", _one_of("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
    ("recipe.num_random", _int(0), "an integer >= 0"),
    ("recipe.train_images", _int(1, optional=True), "null (all) or an integer >= 1"),
]


def _get(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not OmegaConf.is_config(node) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check(cfg: DictConfig, rules: Iterable[Rule]) -> DictConfig:
    """Raise :class:`ConfigError` for the first value that breaks a rule; keys absent from the
    config are not checked (a group that does not apply)."""
    for key, ok, valid in rules:
        present, value = _get(cfg, key)
        if present and not ok(value):
            raise ConfigError(f"{key}={value!r} is not valid: {key} must be {valid}")
    return cfg


#: groups of the ``rlnas-search`` config that a dataclass reads: it checks their keys and ranges
SEARCH_SCHEMAS: dict[str, Callable[[DictConfig], Any]] = {
    "latency.timing": lambda cfg: TimingConfig(**_plain(cfg.latency.timing)),
    "finalists": lambda cfg: FinalistsConfig(**_plain(cfg.finalists)),
    "finalists.confirm_timing": lambda cfg: TimingConfig(**{**_plain(cfg.latency.timing),
                                                            **_plain(cfg.finalists.confirm_timing)}),
}


def _plain(node: Any) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}


def check_schemas(cfg: DictConfig, schemas: dict[str, Callable[[DictConfig], Any]]) -> DictConfig:
    """Build each group's dataclass from the config: an unknown key or a value out of range is a
    :class:`ConfigError` naming the group."""
    for key, build in schemas.items():
        if not _get(cfg, key)[0]:
            continue
        try:
            build(cfg)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{key}: {err}") from None
    return cfg


def check_search(cfg: DictConfig) -> DictConfig:
    """The ``rlnas-search`` config (also what export and the finalists read)."""
    return check_schemas(check(cfg, SEARCH_RULES), SEARCH_SCHEMAS)


def check_train(cfg: DictConfig) -> DictConfig:
    """The ``rlnas-train-supernet`` config."""
    return check(cfg, TRAIN_RULES)
