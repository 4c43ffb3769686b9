"""Runs finished in another experiment folder, adopted into this one (``--adopt``): a grid too long
for one machine's session is completed over several, each session training what is left.

An earlier experiment's (or its committed report's) ``results.csv`` rows, with its ``runs.json``
run records where it has one, are copied into ``OUT/adopted/``. Adopted runs count as finished
(they are trained here only when a run to train starts from one: it needs the weights); their rows
join ``results.csv`` and every table. Every report compares them with what this folder trained
itself: the test volumes and their true volumes must be the same (else the adopted rows were
measured on other data and are left out), and a run trained here again shows how far its Dice
is from the adopted one (0 where the code and data are the same: runs are deterministic)."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

from neoseg.core.io import atomic_paths, write_text

from .grid import RunSpec, with_needs
from .profiles import Profile
from .results import RESULT_FIELDS

log = logging.getLogger("neoseg.experiments")

FOLDER = "adopted"  # OUT/adopted/: results.csv, runs.json (what was adopted), check.json (the last comparison)
DEFAULTS = {"budget": "1", "select": "val-loss", "output": "mask"}  # columns older results.csv files lack
TOLERANCE = 1e-6  # true volumes (ml) and Dice that differ by more are different


def read_source(source: Path, planned: list[str], profile: Profile, anatomy: str | None) -> tuple[list[dict], dict]:
    """The rows and run records of ``source`` (an experiment or report folder, or its results.csv),
    checked against this experiment: its runs are in the grid, and where it has an ``experiment.json``,
    the same profile and built-in anatomy. Raises ValueError with the fix."""
    source = Path(source)
    folder = source.parent if source.suffix == ".csv" else source
    path = source if source.suffix == ".csv" else source / "results.csv"
    if not path.is_file():
        raise ValueError(f"--adopt {source}: no results.csv there; name an earlier experiment folder or its report's "
                         "folder (the one holding results.csv)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [{**DEFAULTS, **r} for r in rows]  # written before those columns: the values they stand for
    missing = [k for k in RESULT_FIELDS if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"--adopt {path}: " + ("holds no rows" if not rows else f"lacks the columns {', '.join(missing)}")
                         + "; adopt the results.csv that neoseg-reproduce wrote")
    unknown = sorted({r["run"] for r in rows} - set(planned))
    if unknown:
        raise ValueError(f"--adopt {path}: {len(unknown)} of its runs are not in this grid (e.g. {unknown[0]}); adopt "
                         f"from an experiment of the same --grid ({profile.grid})")
    theirs = folder / "experiment.json"
    if theirs.is_file():
        meta = json.loads(theirs.read_text())
        if meta.get("profile") != profile.name or (anatomy and meta.get("anatomy") not in (None, anatomy)):
            raise ValueError(f"--adopt {source}: its runs are of profile {meta.get('profile')}, anatomy "
                             f"{meta.get('anatomy', '-')}, not {profile.name}, {anatomy or '-'}; adopt from an "
                             "experiment on the same profile and data")
    records_path = folder / "runs.json"
    records = json.loads(records_path.read_text()) if records_path.is_file() else {}  # run -> its record
    adopted = {r["run"] for r in rows}
    return rows, {name: {**r, "adopted": True} for name, r in records.items() if name in adopted}


def save(out: Path, source: Path, rows: list[dict], records: dict) -> list[str]:
    """Add ``rows`` and ``records`` to ``OUT/adopted`` (replacing earlier adopted rows of the same
    runs), all files at once; returns the runs adopted."""
    runs = sorted({r["run"] for r in rows})
    kept = [r for r in adopted_rows(out) if r["run"] not in set(runs)]
    held = {k: v for k, v in adopted_records(out).items() if k not in set(runs)}
    listed = [s for s in sources(out) if s["from"] != str(source)] + [
        {"from": str(source), "runs": len(runs), "records": len(records)}]
    folder = out / FOLDER
    with atomic_paths({"rows": folder / "results.csv", "records": folder / "runs.json",
                       "sources": folder / "sources.json"}, overwrite=True) as tmp:
        with tmp["rows"].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept + rows)
        tmp["records"].write_text(json.dumps({**held, **records}, indent=1))
        tmp["sources"].write_text(json.dumps(listed, indent=1))
    return runs


def adopted_rows(out: Path) -> list[dict]:
    path = out / FOLDER / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def adopted_records(out: Path) -> dict[str, dict]:
    path = out / FOLDER / "runs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def sources(out: Path) -> list[dict]:
    path = out / FOLDER / "sources.json"
    return json.loads(path.read_text()) if path.is_file() else []


def to_train(chosen: list[RunSpec], done: set[str], adopted: set[str]) -> list[RunSpec]:
    """The runs of ``chosen`` to train: those neither finished here nor adopted, and the adopted
    runs they start from (an adopted run's weights are not here)."""
    return with_needs(chosen, {r.name for r in chosen if r.name not in done | adopted}, have=done)


def compare(local: list[dict], adopted: list[dict]) -> dict:
    """How the adopted rows agree with this folder's own: ``same_data`` (the same test volumes and
    true volumes, None with no own rows yet), and per run in both, the largest Dice difference."""
    if not local or not adopted:
        return {"same_data": None, "rerun": {}}
    volume = lambda r: (r["subject"], r["session"], r["output"], r["structure"])  # noqa: E731
    truth = {volume(r): r["vol_true_ml"] for r in local}
    theirs = {volume(r): r["vol_true_ml"] for r in adopted}
    same = {k[:2] for k in truth} == {k[:2] for k in theirs} and all(
        _difference(theirs[k], v) <= TOLERANCE for k, v in truth.items() if k in theirs)
    own = {(r["run"], *volume(r)): r["dice"] for r in local}
    rerun: dict[str, dict] = {}
    for r in adopted:
        mine = own.get((r["run"], *volume(r)))
        if mine is None:
            continue
        diff = _difference(mine, r["dice"])
        entry = rerun.setdefault(r["run"], {"rows": 0, "max_dice_difference": 0.0})
        entry["rows"] += 1
        entry["max_dice_difference"] = max(entry["max_dice_difference"], diff)
    return {"same_data": same, "rerun": rerun}


def refuse_other_data(local: list[dict], adopted: list[dict], source: Path) -> None:
    """Raise where ``adopted`` was measured on other test volumes or labels than ``local``."""
    if compare(local, adopted)["same_data"] is False:
        raise ValueError(f"--adopt {source}: its test volumes or their true volumes differ from those of the runs in "
                         "this folder, so it was measured on other data (cohort, anatomy or split); adopt from an "
                         "experiment on the same data")


def usable_rows(out: Path, local: list[dict]) -> list[dict]:
    """The adopted rows of the runs this folder has not finished itself, compared with its own rows
    first (``check.json``); none where they were measured on other test volumes or labels."""
    adopted = adopted_rows(out)
    if not adopted:
        return []
    check = compare(local, adopted)
    write_text(out / FOLDER / "check.json", json.dumps(check, indent=1), overwrite=True)
    if check["same_data"] is False:
        log.warning("%s: the adopted runs were measured on other test volumes or labels than this folder's runs; "
                    "they are left out of results.csv and REPORT.md; remove %s to train those runs here", out, out / FOLDER)
        return []
    own = {r["run"] for r in local}
    return [r for r in adopted if r["run"] not in own]


def _difference(a: str, b: str) -> float:
    x, y = (float(v) if v not in ("", None) else math.nan for v in (a, b))
    if math.isnan(x) and math.isnan(y):
        return 0.0
    return math.inf if math.isnan(x) or math.isnan(y) else abs(x - y)


def read_check(out: Path) -> dict:
    path = out / FOLDER / "check.json"
    return json.loads(path.read_text()) if path.is_file() else {}
