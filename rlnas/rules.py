"""What a config field accepts, said once: next to its default, in the dataclass field's metadata.

    lr: float = ruled(0.01, number(0, low_open=True))

The dataclass's ``__post_init__`` calls :func:`check_fields` (so a value built in Python is checked),
and :func:`rlnas.structured.check` checks a composed config against the same rules before anything
runs. A value a rule refuses is a :class:`FieldError`: one line naming the key, the value and what
is valid. This module imports nothing of rlnas but its errors: the timing worker imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from rlnas.errors import ConfigError

#: the metadata key of a field's :class:`Rule`
RULE = "rule"
#: the default of a field that has none: ``ruled(REQUIRED, rule)`` must be given a value
REQUIRED: Any = MISSING


@dataclass(frozen=True)
class Rule:
    """A test of one value and what it accepts, in words (``"an integer >= 1"``)."""

    ok: Callable[[Any], bool]
    valid: str


class FieldError(ConfigError):
    """``key=value`` refused: ``key must be <valid>``."""

    def __init__(self, key: str, value: Any, valid: str) -> None:
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={value!r} is not valid: {key} must be {valid}")

    def at(self, prefix: str) -> FieldError:
        """The same error for the field under ``prefix`` (``"finalists."``)."""
        return FieldError(prefix + self.key, self.value, self.valid)


class UnknownKeyError(ConfigError):
    """``key`` is not in the schema: the message lists the keys that are."""

    def __init__(self, key: str, known: Iterable[str]) -> None:
        super().__init__(f"{key} is not a key of the config (valid keys there: {', '.join(known)})")


def _words(valid: str, null: str | None, note: str) -> str:
    if null is not None:
        valid = f"null{f' ({null})' if null else ''} or {valid}"
    return f"{valid} ({note})" if note else valid


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int | None = None, *, null: str | None = None, note: str = "") -> Rule:
    """An integer, ``>= low`` when given; ``null``: None is valid too (the words say what it means)."""

    def ok(value: Any) -> bool:
        if value is None:
            return null is not None
        return _is_int(value) and (low is None or value >= low)

    return Rule(ok, _words("an integer" + (f" >= {low}" if low is not None else ""), null, note))


def _range_words(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"a number {'<' if high_open else '<='} {high}"
    return "a number"


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
           null: str | None = None, note: str = "") -> Rule:
    """A number in the range the bounds give (closed unless ``*_open``); ``null`` as in :func:`integer`."""

    def ok(value: Any) -> bool:
        if value is None:
            return null is not None
        if not _is_number(value):
            return False
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    return Rule(ok, _words(_range_words(low, high, low_open, high_open), null, note))


def one_of(*choices: str) -> Rule:
    """One of fixed words."""
    return Rule(lambda value: value in choices, f"one of {', '.join(choices)}")


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def each_of(*choices: str) -> Rule:
    """A list of fixed words (none, some or all of them)."""
    return Rule(lambda value: _is_list(value) and all(v in choices for v in value), f"a list of {', '.join(choices)}")


def non_empty(what: str) -> Rule:
    """A list of at least one ``what``."""
    return Rule(lambda value: _is_list(value) and len(value) > 0, f"a non-empty list of {what}")


def ruled(default: Any, rule: Rule) -> Any:
    """A dataclass field with ``default`` (:data:`REQUIRED`: none) that accepts what ``rule`` accepts."""
    return field(default=default, metadata={RULE: rule})


def rule_of(spec: Field) -> Rule | None:
    """The rule of a dataclass field, if it has one."""
    return spec.metadata.get(RULE)


def check_fields(obj: Any) -> None:
    """Raise :class:`FieldError` for the first field of dataclass ``obj`` its rule refuses."""
    for spec in fields(obj):
        rule = rule_of(spec)
        value = getattr(obj, spec.name)
        if rule is not None and not rule.ok(value):
            raise FieldError(spec.name, value, rule.valid)
