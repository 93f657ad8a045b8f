"""What every ``cals-*`` command line shares: the one edge every ``main()`` goes through
(:func:`run_app`: one-line errors, ``--debug``), the detector choices, the signature helper
behind the commands that add shared options (``prep_command``, ``train_command``), and the
conversion of option values for the library."""

from __future__ import annotations

import inspect
import os
import re
import sys
import typing
from enum import Enum
from typing import Callable, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from typer._click import exceptions as click_errors  # Typer 0.2x ships its own click: its exception types

from cals.errors import UserError
from cals.native_logs import DEBUG_ENV, VERBOSE_ENV, debug_env_set

#: Where errors and progress go (stdout stays for results).
err = Console(stderr=True)


class DetectorName(str, Enum):
    mediapipe = "mediapipe"
    sfd = "sfd"
    none = "none"


class MediapipeModel(str, Enum):
    short = "short"
    full = "full"


#: Exit status of a failure the user caused (bad flag, missing file, full disk), as click's usage errors.
USER_ERROR_EXIT = 2
#: Exit status of an unexpected internal error (a bug).
INTERNAL_ERROR_EXIT = 1
#: Exit status after Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT = 130
#: The flag, accepted anywhere on every ``cals-*`` command line, that shows tracebacks.
DEBUG_FLAG = "--debug"
#: The flag, accepted anywhere on every ``cals-*`` command line, that shows native libraries'
#: log lines (MediaPipe/TFLite/absl), hidden by default (cals.native_logs).
VERBOSE_FLAG = "--verbose"
#: What the user can fix: these reach the edge as ``error: <message>``, exit USER_ERROR_EXIT.
#: ``OSError`` covers missing files, folders where files belong, permissions and full disks;
#: ``ImportError`` an optional package not installed (the messages name the ``pip install``).
USER_ERRORS = (UserError, ValueError, OSError, ImportError)
#: Environment that keeps native libraries quiet (MediaPipe/absl/TFLite logs below ERROR).
QUIET_NATIVE_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = USER_ERROR_EXIT) -> None:
    """Print a one-line error and exit (no traceback)."""
    print_error(message)
    raise typer.Exit(code)


def one_line(error: "BaseException | str") -> str:
    """``error``'s message on one line, without Python's ``[Errno N]`` prefix (its type name if empty)."""
    text = " ".join(str(error).split())
    text = re.sub(r"^\[Errno \d+\] ", "", text)
    return text or type(error).__name__


def debug_requested(args: Sequence[str]) -> bool:
    """Whether ``--debug`` is among the options (before any ``--``) or CALS_DEBUG is set."""
    options = args[: list(args).index("--")] if "--" in args else args
    return DEBUG_FLAG in options or debug_env_set()


def run_app(app: typer.Typer, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None) -> int:
    """Run a ``cals-*`` Typer app on ``args`` (default: ``sys.argv[1:]``) and return its exit
    status, never a traceback unless asked: the one edge every command's ``main()`` goes through.

    A user error (:data:`USER_ERRORS`) prints ``error: <message>`` and returns 2; any other
    exception prints one line naming its type and the hint to set CALS_DEBUG=1, and returns 1.
    With ``--debug`` anywhere on the command line, or CALS_DEBUG=1, the exception propagates
    (its traceback is printed). Native libraries are quieted first (:data:`QUIET_NATIVE_ENV`).
    """
    args = list(sys.argv[1:] if args is None else args)
    debug = debug_requested(args)
    if DEBUG_FLAG in args:
        args.remove(DEBUG_FLAG)
    if VERBOSE_FLAG in args:
        args.remove(VERBOSE_FLAG)
        os.environ[VERBOSE_ENV] = "1"  # the command edge: read by native_stderr_quiet, inherited by Ray workers
    for name, value in QUIET_NATIVE_ENV.items():
        os.environ.setdefault(name, value)
    try:
        code = app(args=args, prog_name=prog_name or os.path.basename(sys.argv[0]), standalone_mode=False)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else INTERNAL_ERROR_EXIT)
    except click_errors.NoArgsIsHelpError as error:
        error.show()
        return error.exit_code
    except click_errors.ClickException as error:  # a bad flag value, a missing option: one line, not click's three
        where = error.ctx.command_path if isinstance(error, click_errors.UsageError) and error.ctx else ""
        print_error(f"{where}: {one_line(error.format_message())} (see {where} --help)" if where else one_line(error.format_message()))
        return error.exit_code
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            raise
        print_error("interrupted")
        return INTERRUPTED_EXIT
    except USER_ERRORS as error:
        if debug:
            raise
        print_error(one_line(error))
        return USER_ERROR_EXIT
    except Exception as error:  # noqa: BLE001 - the edge: a bug still gets one line, not a traceback
        if debug:
            raise
        print_error(f"internal error: {type(error).__name__}: {one_line(error)} (a bug; run with {DEBUG_ENV}=1 for the traceback)")
        return INTERNAL_ERROR_EXIT
    return code if isinstance(code, int) else 0


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


class PlainUsageCommand(typer.core.TyperCommand):
    """A command whose usage line names its arguments as Click does (``DATASET``, ``[PATH]``),
    not as Typer's ``{dataset}``."""

    def collect_usage_pieces(self, ctx: typing.Any) -> list[str]:
        return [re.sub(r"^\{(.+)\}", lambda name: name.group(1).upper(), piece) if piece != self.options_metavar else piece
                for piece in super().collect_usage_pieces(ctx)]


class CommandApp(typer.Typer):
    """A Typer app whose commands are :class:`PlainUsageCommand` unless they name their own class."""

    def command(self, *args: typing.Any, cls: Optional[type] = None, **options: typing.Any) -> Callable:
        return super().command(*args, cls=cls or PlainUsageCommand, **options)


def new_app(doc: str) -> typer.Typer:
    """The Typer app of a ``cals-*`` command, in the one help style they all share: plain Click
    help (no Rich boxes, no ``<bool>`` on flags), usage lines as Click writes them, and the
    module docstring's first paragraph as the summary with its RST literal quotes (````x````)
    removed."""
    summary = doc.split("\n\n")[0].replace("``", "")
    return CommandApp(add_completion=False, no_args_is_help=True, help=summary, rich_markup_mode=None)
