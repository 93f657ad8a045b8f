"""The one base of failures a user caused and can fix: a bad flag, a missing or wrong file, a
full disk. Library code raises :class:`UserError` (or ``ValueError`` / ``OSError`` with a
one-line message naming what and where); the ``cals-*`` commands print it as one line,
``error: <message>``, and exit 2 (:func:`cli.common.run_app`)."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Any, Iterator

#: ``errno`` values meaning "the disk (or the user's quota) is full".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserError(Exception):
    """A failure the user can fix; its message is one line naming what and where."""


class NoSpaceError(UserError, OSError):
    """Out of disk space (or quota) while writing output. ``OSError`` too, with
    ``errno.ENOSPC``, so code that handles OS errors handles it."""

    def __init__(self, message: str) -> None:
        UserError.__init__(self, message)
        self.errno = errno.ENOSPC
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # crosses Ray's process boundary intact
        return (type(self), (self.message,))


def is_no_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk / exceeded quota."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def flag(field: str) -> str:
    """The command-line flag that sets the config field ``field`` (``d_model`` → ``--d-model``)."""
    return "--" + field.replace("_", "-")


def require_positive(config: Any, *fields: str) -> None:
    """Raise a one-line ``ValueError`` naming the flag of the first of ``config``'s ``fields``
    (numbers, or tuples of numbers) that is not > 0: checked before a model is built."""
    for name in fields:
        value = getattr(config, name)
        if any(v <= 0 for v in (value if isinstance(value, tuple) else (value,))):
            raise ValueError(f"{flag(name)} must be > 0, got {value}")


def require_fraction(config: Any, field: str, *, closed: bool = False) -> None:
    """Raise a one-line ``ValueError`` naming the flag unless ``config.<field>`` is in [0, 1)
    (``closed``: [0, 1])."""
    value = getattr(config, field)
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ValueError(f"{flag(field)} must be in [0, 1{']' if closed else ')'}, got {value}")


@contextmanager
def no_space_raised_as_one_line(where: str) -> Iterator[None]:
    """Turn a full disk inside the block into :class:`NoSpaceError` naming ``where`` (the file
    being written) and what to do; other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        if is_no_space(error) and not isinstance(error, NoSpaceError):
            raise NoSpaceError(f"no space left on device writing {where}; free space and re-run the same command to resume") from error
        raise
