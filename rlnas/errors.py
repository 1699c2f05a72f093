"""The base of every error a user can cause (a bad value, path, file or name).

The commands print such an error as one line and exit with code 2; anything else is a bug and
keeps its traceback. Each layer defines its own subclass (``DatasetError``, ``A0Error``...), so
this module imports nothing of rlnas.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and what is valid."""


class ConfigError(UserError, ValueError):
    """A config value out of range or not among the valid choices; the message says which."""


def user_error_in(err: BaseException) -> UserError | None:
    """``err`` itself or the first :class:`UserError` it was raised from (``raise ... from``:
    Hydra's ``instantiate`` wraps what a constructor raises so), else None. An error raised
    while handling a UserError (``__context__``) is a bug, and keeps its traceback."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None
