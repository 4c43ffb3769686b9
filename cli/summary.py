"""The ``--json`` summary of ``neoseg-infer``: the outcome of every scan, and the file it writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from neoseg.core.version import neoseg_version


@dataclass
class Outcome:
    name: str
    status: str  # done, skipped, failed, not run
    error: str | None = None


class Summary:
    """Per-scan outcomes, and the ``--json`` file."""

    FORMAT = "neoseg-infer-summary/1"

    def __init__(self, path: Path | None, overwrite: bool):
        self.path, self.scans, self.outcomes = path, [], []
        if path is not None and path.exists() and not overwrite and not self._ours(path):
            raise ValueError(f"--json {path} already exists and is not a neoseg summary; choose another file "
                             f"or pass --overwrite")
        if path is not None:  # found now, not after every scan is segmented
            from neoseg.core.io import check_can_write

            check_can_write(path)
        self.head: dict = {}

    @staticmethod
    def _ours(path: Path) -> bool:
        import json

        try:
            return json.loads(path.read_text()).get("format") == Summary.FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    def begin(self, model: Path, backend: str, root: Path | None, outdir: Path) -> None:
        self.head = {"format": self.FORMAT, "neoseg_version": neoseg_version(), "model": str(model), "backend": backend,
                     "dataset": None if root is None else str(root), "output": str(outdir), "started": now()}
        self.clock = time.perf_counter()

    def add(self, job, status: str, outputs: dict | None = None, error: str | None = None,
            timings: dict | None = None, computed_slices: int | None = None) -> None:
        self.outcomes.append(Outcome(job.name, status, error))
        self.scans.append({
            "input": str(job.scan), "subject": job.subject, "session": job.session, "status": status,
            "error": error, "outputs": {k: str(p) for k, p in (outputs or {}).items()},
            "timings": {k: round(v, 4) for k, v in (timings or {}).items()},
            "seconds": round(sum(timings.values()), 4) if timings else None, "computed_slices": computed_slices})

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def write(self) -> None:
        if self.path is None:
            return
        import json

        from neoseg.core.io import write_text

        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("done", "skipped", "failed", "not run")}
        body = {**self.head, "finished": now(), "seconds": round(time.perf_counter() - self.clock, 3),
                "counts": counts, "scans": self.scans}
        write_text(self.path, json.dumps(body, indent=2) + "\n", overwrite=True)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
