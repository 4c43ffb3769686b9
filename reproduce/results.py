"""``OUT/results.csv``: one row per run, test volume and structure, rebuilt from the finished runs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .grid import RunSpec

EVALUATION_FIELDS = ["subject", "session", "scan_age", "age_group", "output", "structure", "dice", "hd95", "hd100",
                     "vol_diff_ml", "vol_true_ml", "missed", "truth_empty"]
RESULT_FIELDS = ["run", "model", "kind", "loss", "reduction", "budget", "select", "fraction", "draw",
                 *EVALUATION_FIELDS]


def collect_results(out: Path, runs: list[RunSpec]) -> list[dict]:
    """Rebuild ``OUT/results.csv`` from the evaluation of every finished run, and the rows of the
    runs adopted from another experiment that this folder has not finished itself (:mod:`.adopt`)."""
    from .adopt import usable_rows

    rows = own_rows(out, runs)
    adopted = usable_rows(out, rows)
    by_run: dict[str, list[dict]] = {}
    for r in rows + adopted:
        by_run.setdefault(r["run"], []).append(r)
    rows = [r for spec in runs for r in by_run.get(spec.name, [])]  # in the grid's order
    if rows:
        with (out / "results.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return rows


def own_rows(out: Path, runs: list[RunSpec]) -> list[dict]:
    """The result rows of the runs finished in ``OUT/runs``."""
    rows = []
    for spec in runs:
        run_dir = out / "runs" / spec.name
        if not (run_dir / "done.json").is_file():
            continue
        with (run_dir / "evaluation.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                rows.append({"run": spec.name, "model": spec.model, "kind": spec.kind, "loss": spec.recipe,
                             "reduction": spec.reduction, "budget": spec.budget, "select": spec.select,
                             "fraction": spec.fraction, "draw": spec.draw,
                             **{k: r.get(k, "mask") if k == "output" else r[k] for k in EVALUATION_FIELDS}})
    return rows


def load_results(path: str | Path) -> list[dict]:
    """``results.csv`` rows with numbers and flags parsed."""
    with Path(path).open(newline="") as f:
        return [parse_row(r) for r in csv.DictReader(f)]


def parse_row(row: dict) -> dict:
    out = dict(row)
    for k in ("fraction", "dice", "hd95", "hd100", "vol_diff_ml", "vol_true_ml", "scan_age"):
        if k in out and not isinstance(out[k], float):
            out[k] = float(out[k]) if out[k] not in ("", None) else math.nan
    out["draw"] = int(out["draw"])
    out["budget"] = int(out.get("budget") or 1)
    out["select"] = out.get("select") or "val-loss"  # results written before model selection was an option
    out["output"] = out.get("output") or "mask"  # results written before the label map was scored
    for k in ("missed", "truth_empty"):
        if isinstance(out.get(k), str):
            out[k] = out[k] == "True"
    return out
