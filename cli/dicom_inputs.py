"""``neoseg-infer`` on DICOM folders: choose each folder's T2w series (or show the choice with
--dry-run) and plan its outputs, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import typer


def dicom_jobs(folders: list[Path], outdir: Path, probabilities: bool, qc: bool, overwrite: bool, seg: bool,
               dry_run: bool, descriptions, planes, max_voxel, model_digest: str = "") -> list:
    from neoseg.runtime.files import output_state
    from neoseg.dicom.run import dicom_output_paths, output_stem, series_source
    from neoseg.dicom.series import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, SeriesRules, choose, find_series, table

    from .infer import Job

    explicit = bool(descriptions or planes or max_voxel is not None)
    rules = SeriesRules(tuple(descriptions) if descriptions else DEFAULT_INCLUDE,
                        () if descriptions else DEFAULT_EXCLUDE, tuple(p.lower() for p in planes or ()), max_voxel,
                        explicit)
    if dry_run:
        typer.echo(rules.describe() + ("" if explicit else " (a folder of one series: that series)"))
    jobs, planned = [], {}
    for folder in folders:
        found = find_series(folder)
        try:
            chosen = choose(found, rules, folder)
        except ValueError:
            if not dry_run:
                raise
            chosen = None
        if dry_run:
            typer.echo(f"{folder}: {len(found)} series\n{table(found)}\n"
                       + (f"-> {chosen.name}" if chosen else "-> none chosen; set the rules (see --help)"))
            continue
        stem = output_stem(folder)
        paths = dicom_output_paths(stem, outdir, probabilities, qc, seg)
        for path in paths.values():
            if path in planned:
                raise ValueError(f"{folder} and {planned[path]} would both write {path}; run them separately")
            planned[path] = folder
        state = "todo" if overwrite else output_state(paths, lambda: series_source(chosen), model_digest)
        jobs.append(Job(folder, outdir, f"{folder.name}, {chosen.name}", state=state,
                        overwrite=overwrite or state == "partial", dicom=chosen, paths=paths))
    return jobs
