"""``neoseg-eval``: evaluate a checkpoint on the sessions of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import setup_logging, user_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="best.pt from neoseg-train.")],
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="dHCP-layout dataset; default: the checkpoint's own data.")] = None,
    subset: Annotated[Optional[str], typer.Option(help="test, val, train (the checkpoint's split) or all; "
                                                  "default test, or all with --data.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write per-volume rows to this CSV.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    thresholds: Annotated[Optional[str], typer.Option(help="One value or one per channel, comma-separated, in "
                                                      "[1e-6, 1 - 1e-6]; default: the checkpoint's.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Dice, HD95/HD100 (mm) and volume difference per structure, mean ± std per age group."""
    setup_logging()
    with user_errors("neoseg-eval"):
        subset = subset or ("all" if data is not None else "test")
        if subset not in ("test", "val", "train", "all"):
            raise ValueError(f"--subset must be test, val, train or all, got '{subset}'")
        if out is not None:
            from neoseg.core.io import check_writable
            check_writable(out, overwrite)
        from neoseg.data.dhcp import find_sessions
        from neoseg.data.splits import make_split
        from neoseg.runtime.model import parse_thresholds
        from neoseg.train import checkpoint as ckpt
        from neoseg.train.evaluate import evaluate_sessions, report, write_rows
        from neoseg.train.config import dataset_sessions
        from neoseg.train.ranks import resolve_device

        loaded = ckpt.load(checkpoint)
        config = loaded.config
        chosen = parse_thresholds(thresholds, len(loaded.hierarchy)) if thresholds \
            else loaded.state.get("thresholds", config.thresholds)
        if data is not None:
            sessions = find_sessions(data)
        else:
            sessions = dataset_sessions(config, progress=False)
        if subset != "all":
            split = make_split(sessions, config.full_fraction, seed=config.seed, draw=config.draw)
            sessions = list(getattr(split, subset))
        dev = resolve_device(device)
        rows = evaluate_sessions(loaded.model, loaded.hierarchy, sessions, config.axis, config.slice_size, dev,
                                 thresholds=chosen, progress=not quiet, model_spacing=loaded.spacing)
        if out is not None:
            write_rows(out, rows, overwrite)
    typer.echo(report(rows))


def main() -> None:
    app()
