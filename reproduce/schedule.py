"""Runs of the grid in parallel worker processes: a run starts once the run it needs has finished,
spread over the GPUs where there are several; one failed run does not stop the others."""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from neoseg.core.workers import process_pool

from .grid import RunSpec
from .profiles import Profile
from .training import execute, init_worker

log = logging.getLogger("neoseg.experiments")


def run_runs(todo: list[RunSpec], done: set[str], total: int, profile: Profile, out: Path, data: Path, device: str,
             workers: int, gpus: int, began: float) -> dict[str, str]:
    """Train the runs of ``todo`` (``done``: the names finished, updated in place; ``total``: the
    runs of the grid; ``began``: when the command started, for the profile's deadline). Returns the
    failed runs, each with its reason."""
    todo, failed = list(todo), {}
    with process_pool(workers, init_worker, (profile.threads,)) as pool:  # Ctrl-C ends the runs at once
        running, slots = {}, {}  # future -> spec; future -> GPU index (runs spread over the GPUs)
        while todo or running:
            late = profile.deadline_minutes is not None and (time.monotonic() - began) / 60 > profile.deadline_minutes
            if late and todo:
                log.warning("%.0f min deadline reached: %d runs not started", profile.deadline_minutes, len(todo))
                todo = []
            for spec in [r for r in todo if all(n in done for n in r.needs)]:
                if len(running) >= workers:
                    break
                todo.remove(spec)
                on = device
                if gpus > 1:
                    free = sorted(set(range(gpus)) - set(slots.values()))
                    on = f"cuda:{free[0] if free else 0}"
                future = pool.submit(execute, spec, profile, out, data, on)
                running[future] = spec
                if gpus > 1:
                    slots[future] = int(on.split(":")[1])
            for spec in [r for r in todo if any(n in failed for n in r.needs)]:
                todo.remove(spec)
                failed[spec.name] = f"needs {', '.join(n for n in spec.needs if n in failed)}, which failed"
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                spec = running.pop(future)
                slots.pop(future, None)
                try:
                    record = future.result()
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the grid
                    failed[spec.name] = f"{type(e).__name__}: {e}"
                    log.error("%s failed: %s (log: %s)", spec.name, failed[spec.name], out / "logs" / f"{spec.name}.log")
                    continue
                done.add(spec.name)
                log.info("[%d/%d] %s: %.0f s, best epoch %d of %d", len(done), total, spec.name,
                         record["seconds"], record["best_epoch"], record["epochs"])
    return failed


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
