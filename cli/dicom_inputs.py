"""``neoseg-infer`` on DICOM folders: choose each folder's T2w series (or show the choice with
--dry-run) and plan its outputs, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import typer


def series_rules(descriptions, planes, max_voxel, numbers, repeats: str):
    """The rules of the DICOM options: --series-description replaces the default patterns and their
    exclusions, and so does --series-number without --series-description."""
    from neoseg.dicom.choice import SeriesRules

    explicit = bool(descriptions or planes or max_voxel is not None or numbers)
    return SeriesRules.given(tuple(descriptions) if descriptions else None, () if descriptions else None, planes,
                             max_voxel, numbers, repeats, explicit)


def dicom_jobs(folders: list[Path], outdir: Path, probabilities: bool, qc: bool, overwrite: bool, seg: bool,
               dry_run: bool, rules, model_digest: str = "") -> list:
    from neoseg.dicom.choice import NoChoice, choose, table
    from neoseg.dicom.run import dicom_output_paths, output_stem, series_source
    from neoseg.dicom.series import find_series
    from neoseg.runtime.files import output_state

    from .infer_jobs import Job

    if dry_run:
        typer.echo(rules.describe() + ("" if rules.explicit else " (a folder of one image series: that series)"))
    jobs = []
    for folder in folders:
        found = find_series(folder)
        try:
            chosen, outcome = choose(found, rules, folder), ""
        except NoChoice as e:
            if not dry_run:
                raise
            chosen, outcome = None, f"-> none chosen: {e.fix.removesuffix(' (see --dry-run)')}"
        if dry_run:
            typer.echo(f"{folder}: {len(found)} series\n{table(found)}\n{outcome or f'-> {chosen.name}'}")
            continue
        paths = dicom_output_paths(output_stem(folder), outdir, probabilities, qc, seg)
        state = "todo" if overwrite else output_state(paths, lambda: series_source(chosen), model_digest)
        jobs.append(Job(folder, outdir, f"{folder.name}, {chosen.name}", state=state,
                        overwrite=overwrite or state == "partial", dicom=chosen, paths=paths))
    return jobs
