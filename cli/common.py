"""What every neoseg command shares: logging to stderr and one-line errors with exit codes."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator

import typer

# Errors a user can act on; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, PermissionError, ImportError)


def user_message(e: BaseException) -> str:
    """A user error in one line; a refused permission names the path and the fix."""
    if isinstance(e, PermissionError) and e.filename:
        return (f"{e.filename}: {e.strerror or 'permission denied'}; choose a folder you can write to, or fix its "
                "permissions")
    return str(e)


def make_app(help: str | None = None) -> typer.Typer:
    """Every command's Typer app: one plain help style (on/off flags shown as ``--x / --no-x``, no
    ``<bool>``), ``-h`` beside ``--help``, no shell-completion options, no rich tracebacks."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, help=help,
                       context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """The command line's choice type for values a module defines (one list, where the code checks them)."""
    return Enum(name, {v: v for v in values}, type=str)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn user errors into ``prog: error: message`` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as e:
        typer.echo(f"{prog}: error: {user_message(e)}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"{prog}: interrupted", err=True)
        raise typer.Exit(130) from None


@contextmanager
def as_user_error(*kinds: type[Exception]) -> Iterator[None]:
    """Treat errors of these kinds as the user's to act on (a missing backend, a mismatched engine):
    they are re-raised as ``ValueError``, which :func:`user_errors` reports in one line."""
    try:
        yield
    except kinds as e:
        raise ValueError(str(e)) from None


def _parse_list(text: str, what: str, kind: type, example: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"{what} must be comma-separated {noun} like {example}, got '{text}'") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """'16,32,64' -> [16, 32, 64]; None stays None."""
    return None if text is None else _parse_list(text, what, int, "16,32,64")


def parse_floats(text: str | None, what: str) -> float | list[float] | None:
    """'0.5' -> 0.5, '0.5,0.4' -> [0.5, 0.4]; None stays None."""
    if text is None:
        return None
    values = _parse_list(text, what, float, "0.5,0.4")
    return values[0] if len(values) == 1 else values


ATLAS_WARPS_HELP = ("--atlas: the registrations each atlas gets, all fused: regular, flexible (less smoothed: "
                    "closer to folded cortex and white matter), or regular,flexible (twice the time).")


def atlas_fusion(folder: Path, hierarchy, per_scan: int, weight: str, warps: str = "regular",
                 exclude: set[str] = frozenset()):
    """``--atlas DIR``: the fully labelled sessions of a dHCP-layout folder, less the session keys of
    ``exclude`` (the scans being evaluated), as the runtime's atlas fusion."""
    from neoseg.data.dhcp import find_sessions
    from neoseg.runtime.atlas import AtlasFusion

    sessions = [s for s in find_sessions(folder) if s.key not in exclude]
    return AtlasFusion.from_sessions(sessions, hierarchy, per_scan, weight, warps, where=str(folder))
