"""What each finished run's folder says about the run: ``done.json`` (how it ended, its wall time),
``metrics.csv`` (its validation criterion per epoch) and ``atlas.json`` (its registration time)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from .grid import RunSpec


def finished_records(out: Path, patience: int = 8) -> list[dict]:
    """What ``done.json`` records for every finished run, with what the run's folder adds:
    ``still_improving``, ``registration_seconds`` and ``needs`` (the runs it started from).
    ``patience``: the profile's, for runs whose ``done.json`` predates recording it."""
    records = {}
    for path in sorted((Path(out) / "runs").glob("*/done.json")):
        record = json.loads(path.read_text())
        record.setdefault("patience", patience * record.get("budget", 1))
        spec = spec_of(record)
        record["needs"], record["evaluates"] = list(spec.needs), spec.evaluates
        record["still_improving"] = not spec.evaluates and still_improving(path.parent, record)
        # another seed of a run reuses its registrations (cached per draw): counted once, with seed 0
        record["registration_seconds"] = 0.0 if spec.seed else registration_seconds(path.parent)
        records[path.parent.name] = record
    for record in records.values():  # an evaluation run: as any run it evaluates
        if record["evaluates"]:
            record["still_improving"] = any(records[n]["still_improving"] for n in record["needs"] if n in records)
    return list(records.values())


def spec_of(record: dict) -> RunSpec:
    """The :class:`RunSpec` a ``done.json`` was written for (fields added since take their defaults)."""
    fields = {f.name: record[f.name] for f in dataclasses.fields(RunSpec) if f.name in record}
    return RunSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})  # JSON lists: tuples


def criterion(run_dir: Path) -> list[bool]:
    """Per epoch of ``metrics.csv``: whether its validation criterion (the run's selection: loss or
    child Dice) improved on every earlier epoch; runs written before the ``best`` column: the
    validation loss."""
    rows = metrics_rows(run_dir)
    if rows and rows[0].get("best") not in (None, ""):
        return [r["best"] == "1" for r in rows]
    best, improved = math.inf, []
    for r in rows:
        loss = float(r["val_loss"])
        improved.append(loss < best)
        best = min(best, loss)
    return improved


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's ``metrics.csv``, one per epoch trained ([] before its first epoch)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def still_improving(run_dir: Path, record: dict) -> bool:
    """Whether the run was cut by a cap (its epoch cap or time budget, not early stopping) while its
    validation criterion was still improving: a new best in its last ``window`` epochs, half its
    patience (at least 2), the run being likely to have gone on improving with more epochs."""
    if record.get("stopped_by", "epoch cap") == "early stopping":
        return False
    improved = criterion(run_dir)
    return any(improved[-window(record):])


def window(record: dict) -> int:
    return max(2, int(record["patience"]) // 2)


def registration_seconds(run_dir: Path) -> float:
    """The registrations' time the run's ``atlas.json`` records (0 where the run registered nothing)."""
    path = run_dir / "atlas.json"
    return float(json.loads(path.read_text()).get("seconds", 0.0)) if path.is_file() else 0.0
