"""The Markdown tables and the headline sentence of the experiment report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .stats import (AGE_GROUPS, BEYOND, DICE_STRUCTURES, HD_STRUCTURES, IUC, LABEL, SEMI, SUPERVISED, TARGET_DGM_GAIN,
                    TARGET_RATIO, anova, cell, marks, p_text, pct, present_rows, selection, values)


def dice_table(rows: list[dict], model: str, fraction: float, candidates: list[tuple],
               reference: bool = True) -> str:
    """Paper layout: rows = model kind / loss, columns preterm DGM WM CGM, term DGM WM CGM."""
    header = "| model | " + " | ".join(f"{age} {LABEL[s]}" for age in AGE_GROUPS for s in DICE_STRUCTURES) + " |"
    lines = [header, "|---" * (1 + len(AGE_GROUPS) * len(DICE_STRUCTURES)) + "|"]
    for row in present_rows(rows, model, fraction, candidates):
        cells = [cell(values(rows, model, row, fraction, age, s), 3) + marks(rows, model, row, fraction, age, s)
                 for age in AGE_GROUPS for s in DICE_STRUCTURES]
        lines.append(f"| {row[0]}{selection(rows, row)} | " + " | ".join(cells) + " |")
    if reference and present_rows(rows, "unet", 1.0, [SUPERVISED]):
        cells = [cell(values(rows, "unet", SUPERVISED, 1.0, age, s), 3) for age in AGE_GROUPS for s in DICE_STRUCTURES]
        lines.append("| *Supervised U-Net, 100 % fully labelled (reference)* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hd_table(rows: list[dict], fractions: list[float], metric: str = "hd100") -> str:
    """Appendix A layout (U-Net): per fraction, supervised / semi-supervised / ours (IUC); columns
    preterm CGM WM DGM, term CGM WM DGM, in mm."""
    header = "| fraction | model | " + " | ".join(f"{age} {LABEL[s]}" for age in AGE_GROUPS for s in HD_STRUCTURES) + " |"
    lines = [header, "|---" * (2 + len(AGE_GROUPS) * len(HD_STRUCTURES)) + "|"]
    for fraction in fractions + [1.0]:
        candidates = [SUPERVISED] if fraction == 1.0 else [SUPERVISED, SEMI, IUC]
        for row in present_rows(rows, "unet", fraction, candidates):
            cells = [cell(values(rows, "unet", row, fraction, age, s, metric), 2) for age in AGE_GROUPS
                     for s in HD_STRUCTURES]
            lines.append(f"| {pct(fraction)} | {row[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def p_value_table(rows: list[dict], model: str, fractions: list[float]) -> str:
    """Per fraction and cell: the three-group ANOVA p (supervised, semi-supervised, IUC) and the
    pairwise p of IUC against each baseline, with the sign of IUC's mean difference."""
    header = "| fraction | test | " + " | ".join(f"{age} {LABEL[s]}" for age in AGE_GROUPS for s in DICE_STRUCTURES) + " |"
    lines = [header, "|---" * (2 + len(AGE_GROUPS) * len(DICE_STRUCTURES)) + "|"]
    for fraction in fractions:
        if not present_rows(rows, model, fraction, [IUC]):
            continue
        tests = [("ANOVA sup / semi / IUC", None), ("IUC vs supervised", SUPERVISED), ("IUC vs semi-supervised", SEMI)]
        for name, baseline in tests:
            cells = []
            for age in AGE_GROUPS:
                for s in DICE_STRUCTURES:
                    ours = values(rows, model, IUC, fraction, age, s)
                    if baseline is None:
                        p = anova(values(rows, model, SUPERVISED, fraction, age, s),
                                  values(rows, model, SEMI, fraction, age, s), ours)
                        cells.append(p_text(p))
                    else:
                        other = values(rows, model, baseline, fraction, age, s)
                        diff = ours.mean() - other.mean() if len(ours) and len(other) else math.nan
                        cells.append(f"{p_text(anova(ours, other))} ({diff:+.3f})" if not math.isnan(diff) else "–")
            lines.append(f"| {pct(fraction)} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_table(rows: list[dict], fractions: list[float]) -> str:
    """Per recipe beyond the paper and fraction: each cell's mean Dice as a share of the 100 % model's,
    and the DGM gain over the supervised model of the same fraction; whether the target is met."""
    header = ("| fraction | recipe | " + " | ".join(f"{age} {LABEL[s]} / 100 %" for age in AGE_GROUPS
                                                    for s in DICE_STRUCTURES)
              + " | DGM gain over supervised (preterm, term) | target met |")
    lines = [header, "|---" * (4 + len(AGE_GROUPS) * len(DICE_STRUCTURES)) + "|"]
    for fraction in fractions:
        for row in present_rows(rows, "unet", fraction, [IUC] + BEYOND):
            ratios, gains = [], []
            for age in AGE_GROUPS:
                for s in DICE_STRUCTURES:
                    ours, full = values(rows, "unet", row, fraction, age, s), values(rows, "unet", SUPERVISED, 1.0, age, s)
                    ratios.append(ours.mean() / full.mean() if len(ours) and len(full) else math.nan)
                ours, sup = (values(rows, "unet", r, fraction, age, "dgm") for r in (row, SUPERVISED))
                gains.append(ours.mean() - sup.mean() if len(ours) and len(sup) else math.nan)
            met = all(r >= TARGET_RATIO for r in ratios) and all(g >= TARGET_DGM_GAIN for g in gains)
            unknown = any(math.isnan(v) for v in ratios + gains)
            lines.append(f"| {pct(fraction)} | {row[0]}{selection(rows, row)} | "
                         + " | ".join("–" if math.isnan(r) else f"{r:.2f}" for r in ratios)
                         + " | " + ", ".join("–" if math.isnan(g) else f"{g:+.2f}" for g in gains)
                         + f" | {'–' if unknown else ('**yes**' if met else 'no')} |")
    return "\n".join(lines)


def headline(rows: list[dict], fraction: float) -> str:
    """One sentence per age group comparing the three U-Net model kinds on DGM."""
    parts = []
    for age in AGE_GROUPS:
        v = {row[0]: values(rows, "unet", row, fraction, age, "dgm") for row in (SUPERVISED, SEMI, IUC)}
        if not all(len(x) for x in v.values()):
            continue
        text = ", ".join(f"{k} {x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0:.3f}" for k, x in v.items())
        p_sup = anova(v[IUC[0]], v[SUPERVISED[0]])
        p_semi = anova(v[IUC[0]], v[SEMI[0]])
        parts.append(f"{age} DGM Dice at {pct(fraction)}: {text} (IUC vs supervised p = {p_sup:.2g}, "
                     f"vs semi-supervised p = {p_semi:.2g}).")
    return " ".join(parts)


def finished_records(out: Path) -> list[dict]:
    """What ``done.json`` records for every finished run."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*/done.json"))]


def endings(out: Path) -> str:
    counts: dict[str, int] = {}
    for record in finished_records(out):
        counts[record.get("stopped_by", "?")] = counts.get(record.get("stopped_by", "?"), 0) + 1
    return ", ".join(f"{n} by {how}" for how, n in sorted(counts.items())) or "no finished run"


def run_table(out: Path, settings: dict) -> str:
    """Per model kind: runs finished, median wall seconds (training, pseudo labels, evaluation), epochs
    trained, the best epoch and what ended the runs, so runs cut by the epoch cap are visible."""
    groups: dict[tuple, list[dict]] = {}
    for record in finished_records(out):
        key = (record["model"], record["kind"], record.get("recipe", record["loss"]), record.get("reduction", "mean"),
               record.get("budget", 1),
               record["fraction"] if record["fraction"] == 1.0 else None)
        groups.setdefault(key, []).append(record)
    planned = settings.get("epochs", {})
    lines = ["| model | kind | loss | reduction | steps x | runs | median s | epochs trained (cap) | best epoch (median) "
             "| ended by |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, kind, loss, reduction, budget, full), records in groups.items():
        epochs = sorted(r.get("epochs", 0) for r in records)
        plan = planned.get(model, "?") if isinstance(planned, dict) else planned
        plan = plan * budget if isinstance(plan, int) else plan
        ended: dict[str, int] = {}
        for r in records:
            ended[r.get("stopped_by", "?")] = ended.get(r.get("stopped_by", "?"), 0) + 1
        label = f"{kind}, 100 %" if full else kind
        began = sorted(r["self_train_began"] for r in records if r.get("self_train_began"))
        if any(r.get("self_training") for r in records):
            never = sum(1 for r in records if not r.get("self_train_began"))
            loss += f" (self-training began at epoch {', '.join(map(str, began)) or '–'}" + \
                (f"; never in {never} run(s), the plain loss still improving at the cap)" if never else ")")
        lines.append(f"| {model} | {label} | {loss} | {reduction} | {budget} | {len(records)} | "
                     f"{np.median([r['seconds'] for r in records]):.0f} | {epochs[0]}–{epochs[-1]} ({plan}) | "
                     f"{np.median([r['best_epoch'] for r in records]):.0f} | "
                     f"{', '.join(f'{n} {k}' for k, n in sorted(ended.items()))} |")
    return "\n".join(lines)
