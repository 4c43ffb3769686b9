"""What every neoseg command shares: logging to stderr and one-line errors with exit codes."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

import typer

# Errors a user can act on; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, ImportError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn user errors into ``prog: error: message`` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as e:
        typer.echo(f"{prog}: error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"{prog}: interrupted", err=True)
        raise typer.Exit(130) from None


def parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers like 16,32,64, got '{text}'") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def parse_floats(text: str | None, what: str) -> float | list[float] | None:
    """'0.5' -> 0.5, '0.5,0.4' -> [0.5, 0.4]; None stays None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be one number or comma-separated numbers like 0.5,0.4, got '{text}'") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values[0] if len(values) == 1 else values
