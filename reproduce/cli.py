"""``neoseg-reproduce`` (or ``python -m neoseg.reproduce``): the paper's experiments, resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from neoseg.cli.common import choices, make_app, parse_floats, setup_logging, user_errors
from neoseg.data.anatomy.subject import ANATOMIES

from .grid import GRIDS
from .profiles import PROFILES, RENAMED

app = make_app()


GridName = choices("GridName", GRIDS)
Anatomy = choices("Anatomy", ANATOMIES)


@app.command()
def reproduce(
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False,
                                      help="Experiment folder (runs, results.csv, REPORT.md); created if missing.")],
    profile: Annotated[str, typer.Option(
        metavar="[equal-epochs|equal-steps|paper]",
        help="equal-epochs: the paper's protocol (equal epochs, early stopping) at 2 mm, for 2 CPU cores (formerly "
             "'cpu'); equal-steps: the equal-step ablation at 4 mm; paper: the paper's scale, for GPU machines (the "
             "same as neoseg-train --profile paper).")] = "equal-epochs",
    grid: Annotated[Optional[GridName], typer.Option(help="headline: 2 % supervised / semi-supervised / IUC and the "
                                                     "100 % reference; full: Tables 1-3 and Appendix A (5 and 10 %, "
                                                     "HUC, WEIGHT, WNORM, SegFormer-B0); atlas: the levers for one "
                                                     "fully labelled subject (atlas propagation and pairs, a share of "
                                                     "fully labelled slices per batch, augmentation, label-set from "
                                                     "IUC) beside the paper's rows. Default: the profile's.")] = None,
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="dHCP-layout dataset folder; default: the profile's built-in cohort.")] = None,
    anatomy: Annotated[Optional[Anatomy], typer.Option(help="The built-in cohort's generator: v2 (realistic) or v1 "
                                                       "(the committed report's). Default: the profile's. One "
                                                       "experiment folder holds one anatomy.")] = None,
    fractions: Annotated[Optional[str], typer.Option(help="Fully labelled fractions, comma-separated, e.g. "
                                                     "0.02,0.05. Default: the profile's.")] = None,
    device: Annotated[str, typer.Option(help="Device: auto, cpu or cuda.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Runs trained at once (default: the profile's).")] = None,
    draws: Annotated[Optional[int], typer.Option(help="Random draws per fraction (default: the profile's: 3 for "
                                                 "equal-epochs, 5 for the others).")] = None,
    only: Annotated[Optional[str], typer.Option(help="Train only the runs whose name contains this text (or any of "
                                                "several, comma-separated, e.g. f100,d0), with the runs they start "
                                                "from; the report covers every finished run of the grid.")] = None,
    adopt: Annotated[Optional[Path], typer.Option(help="An earlier experiment's folder, or its report's (the one "
                                                  "holding results.csv), whose finished runs count as finished here: "
                                                  "their rows join every table and they are not trained again, so "
                                                  "that a grid too long for one session is completed over several. "
                                                  "The report compares them with this folder's own runs.")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Start no run: rebuild results.csv and "
                                              "REPORT.md from the runs finished so far.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run the paper's experiment grid (resumable) and write results.csv and REPORT.md."""
    setup_logging()
    with user_errors("neoseg-reproduce"):
        chosen = PROFILES[_profile(profile)]
        if draws is not None:
            chosen = dataclasses.replace(chosen, draws=draws)
        if grid is not None:
            chosen = dataclasses.replace(chosen, grid=grid.value)
        if anatomy is not None:
            if data is not None:
                raise ValueError("--anatomy chooses the built-in cohort's generator, but --data names your own; "
                                 "pass one of them")
            chosen = dataclasses.replace(chosen, cohort_anatomy=anatomy.value)
        if fractions is not None:
            chosen = dataclasses.replace(chosen, fractions=parse_fractions(fractions))
        from neoseg.train.ranks import resolve_device

        from .experiment import run_all

        meta = run_all(chosen, out, data, str(resolve_device(device)), workers, only, progress=not quiet,
                       start_runs=not report_only, adopt=adopt)
    took = f" ({meta['invocations'][-1]['seconds'] / 60:.1f} min)" if not report_only else ""
    typer.echo(f"{out / 'REPORT.md'} written{took}")


def parse_fractions(text: str) -> tuple[float, ...]:
    """``0.02,0.05`` as fractions, each in (0, 1), in the order given."""
    parsed = parse_floats(text, "--fractions")
    values = tuple(parsed if isinstance(parsed, list) else [parsed])
    if not all(0 < v < 1 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--fractions takes distinct fully labelled fractions in (0, 1) (1 is the reference, always "
                         f"run), e.g. 0.02,0.05; got '{text}'")
    return values


def _profile(name: str) -> str:
    if name in RENAMED:
        raise ValueError(f"the experiment profile '{name}' is now called '{RENAMED[name]}' (neoseg-train's "
                         f"'{name}' profile is another protocol); pass --profile {RENAMED[name]}")
    if name not in PROFILES:
        raise ValueError(f"unknown profile '{name}'; available: {', '.join(PROFILES)}")
    return name


def main() -> None:
    app()
