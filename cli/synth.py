"""``neoseg-synth``: write the built-in synthetic neonatal cohort in the dHCP derivative layout."""

from __future__ import annotations

from pathlib import Path
from enum import Enum
from typing import Annotated, Optional

import typer

from .common import make_app, setup_logging, user_errors

app = make_app()


class Anatomy(str, Enum):
    v1 = "v1"
    v2 = "v2"


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False,
                                      help="Dataset folder to write (dHCP derivative layout).")],
    subjects: Annotated[int, typer.Option(min=3, help="Number of subjects.")] = 40,
    grid: Annotated[int, typer.Option(min=16, help="Voxels per side over a 128 mm field of view "
                                      "(256 = 0.5 mm, like dHCP).")] = 64,
    seed: Annotated[int, typer.Option(help="Cohort seed: the same seed gives the same cohort.")] = 0,
    anatomy: Annotated[Anatomy, typer.Option(help="v2: separate deep grey nuclei, named and age-dependent "
                                             "sulci, cerebellar lobules; v1: the first generator, byte for "
                                             "byte (the cohort of the experiment report).")] = Anatomy.v2,
    folding: Annotated[float, typer.Option(min=0.0, max=2.0, help="v2: sulcal depth relative to the default "
                                           "(0 = smooth).")] = 1.0,
    montage: Annotated[Optional[Path], typer.Option(dir_okay=False,
                                                  help="Also save a PNG montage of some subjects to this file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite",
                                            help="Replace an existing different cohort in --out.")] = False,
) -> None:
    """Generate (or reuse, when the same spec is already there) the synthetic cohort."""
    setup_logging()
    with user_errors("neoseg-synth"):
        from neoseg.data.synth import CohortSpec, generate_cohort

        spec = CohortSpec(n_subjects=subjects, grid=grid, seed=seed, anatomy=anatomy.value, folding=folding)
        root = generate_cohort(out, spec, overwrite=overwrite)
        if montage is not None:
            from neoseg.core.io import check_writable
            from neoseg.data.montage import save_montage

            check_writable(montage, overwrite)
            save_montage(root, montage)
    typer.echo(f"cohort of {subjects} subjects at {grid}^3 ({128 / grid:.2f} mm), anatomy {anatomy.value}, in {root}")


def main() -> None:
    app()
