"""Per-draw statistics: each draw's mean Dice, the worst draw, and the target of the recipes beyond
the paper (shares of the 100 % model's Dice in the mean of the draws and in the worst draw).

A draw's cell is the mean Dice over the test volumes of one age group in the run of that draw (the
test volumes are the same in every draw). The worst draw is taken per cell: the lowest draw's value
there, and which draw it was."""

from __future__ import annotations

import math

import numpy as np

from .stats import (AGE_GROUPS, DICE_STRUCTURES, LABEL, NO_RUNS, SUPERVISED, TARGET_DGM_GAIN, TARGET_RATIO,
                    TARGET_WORST_RATIO, pct, present_rows, selection, values)

CELLS = [(age, s) for age in AGE_GROUPS for s in DICE_STRUCTURES]


def draw_means(rows: list[dict], row: tuple, fraction: float, age: str, structure: str,
               model: str = "unet") -> dict[int, float]:
    """Each draw's mean Dice of one cell."""
    draws = sorted({r["draw"] for r in rows if r["model"] == model and r["kind"] == row[1] and r["loss"] == row[2]
                    and math.isclose(r["fraction"], fraction)})
    means = {d: values(rows, model, row, fraction, age, structure, draw=d) for d in draws}
    return {d: float(v.mean()) for d, v in means.items() if len(v)}


def reference(rows: list[dict], age: str, structure: str) -> float:
    """The 100 % model's mean Dice of one cell (NaN before it has finished)."""
    v = values(rows, "unet", SUPERVISED, 1.0, age, structure)
    return float(v.mean()) if len(v) else math.nan


def worst(means: dict[int, float]) -> tuple[int, float] | None:
    """The draw with the lowest value, and the value."""
    return min(means.items(), key=lambda kv: kv[1]) if means else None


def per_draw_table(rows: list[dict], fraction: float, candidates: list[tuple]) -> str:
    """Per recipe one row per draw and, with several draws, the worst draw per cell; the 100 % model last."""
    header = "| recipe | draw | " + " | ".join(f"{age} {LABEL[s]}" for age, s in CELLS) + " |"
    lines = [header, "|---" * (2 + len(CELLS)) + "|"]
    for row in present_rows(rows, "unet", fraction, candidates):
        cells = {c: draw_means(rows, row, fraction, *c) for c in CELLS}
        draws = sorted(set().union(*(m.keys() for m in cells.values())))
        for i, d in enumerate(draws):
            label = f"{row[0]}{selection(rows, row)}" if i == 0 else ""
            lines.append(f"| {label} | {d} | " + " | ".join(_number(cells[c].get(d)) for c in CELLS) + " |")
        if len(draws) > 1:
            lowest = [worst(cells[c]) for c in CELLS]
            lines.append("| | **worst** | " + " | ".join(f"{w[1]:.3f} (d{w[0]})" if w else "–" for w in lowest) + " |")
    if len(lines) == 2:
        return NO_RUNS
    if not math.isnan(reference(rows, *CELLS[0])):
        lines.append("| *100 % model (reference)* | 0 | " + " | ".join(_number(reference(rows, *c)) for c in CELLS)
                     + " |")
    return "\n".join(lines)


def target_row(rows: list[dict], row: tuple, fraction: float, planned: int | None = None) -> dict:
    """One recipe's shares of the 100 % model per cell (mean of the draws, worst draw), its smallest
    DGM gain over the supervised model of the same draw per age group, and whether the target is met
    (None while something is missing, fewer than the ``planned`` draws among it)."""
    mean, low, gains, draws = [], [], [], set()
    for age, s in CELLS:
        means, full = draw_means(rows, row, fraction, age, s), reference(rows, age, s)
        draws |= set(means)
        mean.append(_share(float(np.mean(list(means.values()))), full) if means else math.nan)
        low.append(_share(worst(means)[1], full) if means else math.nan)
    for age in AGE_GROUPS:
        ours, sup = (draw_means(rows, r, fraction, age, "dgm") for r in (row, SUPERVISED))
        gains.append(min(ours[d] - sup[d] for d in ours) if ours and set(ours) <= set(sup) else math.nan)
    unknown = any(math.isnan(v) for v in mean + low + gains) or len(draws) < (planned or 0)
    names = [f"{age} {LABEL[s]}" for age, s in CELLS]
    misses = ([f"{n} {v:.3f}" for n, v in zip(names, mean) if v < TARGET_RATIO]
              + [f"{n} worst {v:.3f}" for n, v in zip(names, low) if v < TARGET_WORST_RATIO]
              + [f"{age} DGM gain {g:+.3f}" for age, g in zip(AGE_GROUPS, gains) if g < TARGET_DGM_GAIN])
    return {"draws": len(draws), "mean": mean, "worst": low, "gains": gains,
            "met": None if unknown else not misses, "misses": [] if unknown else misses}


def target_table(rows: list[dict], fractions: list[float], candidates: list[tuple], planned: int | None = None) -> str:
    """Per fraction and recipe: each cell's share of the 100 % model as "mean of the draws / worst
    draw", the smallest DGM gain over the supervised model of the same draw, and the verdict ("–"
    with fewer than the ``planned`` draws: a worst draw of fewer is no worst draw)."""
    header = ("| fraction | recipe | draws | " + " | ".join(f"{age} {LABEL[s]}" for age, s in CELLS)
              + " | DGM gain over supervised, worst draw (preterm, term) | target met |")
    lines = [header, "|---" * (5 + len(CELLS)) + "|"]
    for fraction in fractions:
        for row in present_rows(rows, "unet", fraction, candidates):
            t = target_row(rows, row, fraction, planned)
            ratios = [f"{_number(m, 2)} / {_number(w, 2)}" for m, w in zip(t["mean"], t["worst"])]
            verdict = "–" if t["met"] is None else ("**yes**" if t["met"] else _misses(t["misses"]))
            lines.append(f"| {pct(fraction)} | {row[0]}{selection(rows, row)} | {t['draws']} | " + " | ".join(ratios)
                         + " | " + ", ".join(_number(g, 2, sign=True) for g in t["gains"]) + f" | {verdict} |")
    return "\n".join(lines) if len(lines) > 2 else NO_RUNS


def _misses(misses: list[str], shown: int = 2) -> str:
    """A failed verdict with what fails, to three decimals (a 0.948 shows as 0.95 in its cell)."""
    more = f", {len(misses) - shown} more" if len(misses) > shown else ""
    return f"no: {', '.join(misses[:shown])}{more}"


def _share(value: float, full: float) -> float:
    """``value`` as a share of the 100 % model's ``full`` (NaN where that is missing or 0)."""
    return value / full if full > 0 else math.nan


def _number(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None or math.isnan(v):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
