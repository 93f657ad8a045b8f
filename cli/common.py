"""What every ``cals-*`` command line shares: the one-line error, the detector choices, the
signature helper behind the commands that add shared options (``prep_command``,
``train_command``), and the conversion of option values for the library."""

from __future__ import annotations

import inspect
import typing
from enum import Enum
from typing import Callable, Sequence

import typer
from rich.console import Console

#: Where errors and progress go (stdout stays for results).
err = Console(stderr=True)


class DetectorName(str, Enum):
    mediapipe = "mediapipe"
    sfd = "sfd"
    none = "none"


class MediapipeModel(str, Enum):
    short = "short"
    full = "full"


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (no traceback)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def register_command(app: typer.Typer, name: str, command: Callable, parameters: Sequence[inspect.Parameter], doc: str | None) -> None:
    """Register ``command`` (which takes ``**options``) under ``name`` with the given options:
    how ``prep_command`` and ``train_command`` add their shared options to each command's own."""
    command.__signature__ = inspect.Signature(list(parameters))
    command.__doc__ = doc
    command.__name__ = name
    app.command(name)(command)


def keyword_parameters(function: Callable) -> list[inspect.Parameter]:
    """``function``'s parameters, keyword-only, with annotations resolved to types (Typer needs
    real types; modules using ``from __future__ import annotations`` hold strings)."""
    hints = typing.get_type_hints(function)
    return [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(function).parameters.values()
    ]


def plain_values(options: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """``options`` with each choice (an Enum such as :class:`DetectorName`) replaced by its
    value, as the library's dataclasses take plain strings."""
    return {name: value.value if isinstance(value, Enum) else value for name, value in options.items()}
