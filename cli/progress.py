"""Progress over a list of items: a bar in an interactive terminal, plain lines otherwise.

Result lines go to stdout (``[3/40] sub-1_ses-1: ...``); the bar, when there is one, to stderr, so
neither a log file nor a pipe ever holds bar redraws.
"""

from __future__ import annotations

import sys

import typer


class Progress:
    def __init__(self, total: int, unit: str = "scan", bar: bool | None = None, quiet: bool = False):
        """``bar``: None shows one in a terminal; ``quiet``: only the lines written to stderr."""
        self.total, self.count, self.quiet = total, 0, quiet
        self.bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)

    def start(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)

    def done(self, message: str, err: bool = False) -> None:
        """One finished item: its line, then the bar advances."""
        self.count += 1
        line = f"[{self.count}/{self.total}] {message}"
        if self.quiet and not err:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr if err else sys.stdout)
            self.bar.update(1)
        else:
            typer.echo(line, err=err)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
