"""The whole experiment in order: metadata, data, the grid's unfinished runs, results and report."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from . import adopt as adoption
from . import metadata
from .calibrate import calibrate, slice_passes
from .grid import plan, select
from .prepare import prepare_data
from .profiles import Profile
from .report import write_report
from .results import collect_results, own_rows
from .schedule import gpu_count, run_runs

log = logging.getLogger("neoseg.experiments")


def run_all(profile: Profile, out: Path, data: Path | None = None, device: str = "cpu", workers: int | None = None,
            only: str | None = None, progress: bool = True, start_runs: bool = True, adopt: Path | None = None) -> dict:
    """Run every unfinished run of the grid, or of its runs that ``only`` selects (see
    :func:`~.grid.select`; none with ``start_runs`` False), then rebuild ``results.csv`` and
    ``REPORT.md`` from every finished run of the grid. ``adopt``: an earlier experiment (or report)
    folder whose finished runs count as finished here (:mod:`.adopt`)."""
    began, started_at = time.monotonic(), datetime.now(timezone.utc)
    grid = plan(profile)
    chosen = select(grid, only)  # refuses an --only that matches nothing, before anything is written
    meta = metadata.load(out, profile, builtin_cohort=data is None)
    if adopt is not None:  # checked before anything is written
        adopted_rows, adopted_records = adoption.read_source(adopt, [r.name for r in grid], profile, meta.get("anatomy"))
        adoption.refuse_other_data(own_rows(out, grid), adopted_rows, adopt)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    data, sessions = prepare_data(profile, out, data, progress)
    setup_seconds = time.monotonic() - began
    if adopt is not None:
        log.info("%s: adopted %d finished runs from %s", out,
                 len(adoption.save(out, adopt, adopted_rows, adopted_records)), adopt)
    done = {r.name for r in grid if (out / "runs" / r.name / "done.json").is_file()}
    adopted = {r["run"] for r in adoption.adopted_rows(out)} - done
    todo = adoption.to_train(chosen, done, adopted) if start_runs else []
    log.info("%s: %d runs in the grid, %d finished%s, %d to run", out, len(grid), len(done),
             f" and {len(adopted)} adopted" if adopted else "", len(todo))
    gpus = gpu_count() if device == "cuda" else 0
    workers = workers or (max(gpus, 1) if device == "cuda" else profile.workers)
    passes = sum(slice_passes(r, profile, sessions, out / "cache") for r in todo)
    if passes:
        rate = calibrate(profile, device)
        log.info("estimated time: at most %.0f min (%.2g slice passes at %.0f slices/s per run, %d runs at once; "
                 "early stopping usually ends runs sooner)", passes / rate / workers / 60, passes, rate, workers)
    failed = run_runs(todo, done, len(grid), profile, out, data, device, workers, gpus, began)
    rows = collect_results(out, grid)  # the whole grid's finished runs, whatever --only chose
    if start_runs:  # a report-only call is not an invocation of the grid: it adds no time
        metadata.add_invocation(meta, started_at, time.monotonic() - began, setup_seconds, workers, profile.threads,
                                device, failed)
    metadata.describe(out, meta, profile, data, len(sessions))
    metadata.save(out, meta)
    write_report(out, rows, meta, [r.name for r in grid])
    if start_runs:
        meta["invocations"][-1]["seconds"] = round(time.monotonic() - began, 1)  # with the report
        metadata.save(out, meta)
    return meta
