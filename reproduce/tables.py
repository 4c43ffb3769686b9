"""The Markdown tables and the headline sentence of the experiment report."""

from __future__ import annotations

import math

import numpy as np

from .stats import (AGE_GROUPS, DICE_STRUCTURES, HD_STRUCTURES, IUC, LABEL, NO_RUNS, SEMI, SUPERVISED, anova, cell,
                    marks, p_text, pct, present_rows, selection, values)


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
    return "\n".join(lines) if len(lines) > 2 else NO_RUNS


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
    return "\n".join(lines) if len(lines) > 2 else NO_RUNS


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
    return "\n".join(lines) if len(lines) > 2 else NO_RUNS


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


def endings(records: list[dict]) -> str:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.get("stopped_by", "?")] = counts.get(record.get("stopped_by", "?"), 0) + 1
    return ", ".join(f"{n} by {how}" for how, n in sorted(counts.items())) or "no finished run"


def recipe_key(record: dict) -> tuple:
    """The report's row of a finished run: (model, kind, recipe, reduction, steps x, fraction)."""
    return (record["model"], record["kind"], record.get("recipe", record["loss"]), record.get("reduction", "mean"),
            record.get("budget", 1), record["fraction"])


def run_table(records: list[dict], settings: dict) -> str:
    """Per model kind: runs finished, median wall seconds (training, pseudo labels, evaluation), epochs
    trained, the best epoch, what ended the runs, and how many a cap cut while still improving."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        model, kind, loss, reduction, budget, fraction = recipe_key(record)
        groups.setdefault((model, kind, loss, reduction, budget, fraction == 1.0), []).append(record)
    planned = settings.get("epochs", {})
    lines = ["| model | kind | loss | reduction | steps x | runs | median s | epochs trained (cap) | best epoch (median) "
             "| ended by | cut by a cap, still improving |", "|---" * 11 + "|"]
    for (model, kind, loss, reduction, budget, full), group in groups.items():
        epochs = sorted(r.get("epochs", 0) for r in group)
        plan = planned.get(model, "?") if isinstance(planned, dict) else planned
        plan = plan * budget if isinstance(plan, int) else plan
        caps = sorted({r["epoch_cap"] for r in group if "epoch_cap" in r}) or [plan]
        ended: dict[str, int] = {}
        for r in group:
            ended[r.get("stopped_by", "?")] = ended.get(r.get("stopped_by", "?"), 0) + 1
        label = f"{kind}, 100 %" if full else kind
        began = sorted(r["self_train_began"] for r in group if r.get("self_train_began"))
        if any(r.get("self_training") for r in group):
            never = sum(1 for r in group if not r.get("self_train_began"))
            loss += f" (self-training began at epoch {', '.join(map(str, began)) or '–'}" + \
                (f"; never in {never} run(s), the plain loss still improving at the cap)" if never else ")")
        cut = sum(bool(r.get("still_improving")) for r in group)
        lines.append(f"| {model} | {label} | {loss} | {reduction} | {budget} | {len(group)} | "
                     f"{np.median([r['seconds'] for r in group]):.0f} | {epochs[0]}–{epochs[-1]} "
                     f"({', '.join(map(str, caps))}) | {np.median([r['best_epoch'] for r in group]):.0f} | "
                     f"{', '.join(f'{n} {k}' for k, n in sorted(ended.items()))} | {f'**{cut}**' if cut else 0} |")
    return "\n".join(lines) if groups else NO_RUNS


def time_table(records: list[dict]) -> str:
    """Per recipe and fraction: the time of its runs summed over the draws, each run with the run it
    starts from (a semi-supervised run's supervised run, a run from IUC's IUC run) and the registrations
    its atlas.json records."""
    by_name = {r["run"]: r for r in records}
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(recipe_key(record), []).append(record)
    lines = ["| fraction | model | kind | recipe | draws | registration (min) | total (min) | per draw (min) |",
             "|---" * 8 + "|"]
    for (model, kind, recipe, reduction, budget, fraction), group in sorted(groups.items(), key=lambda kv: kv[0][5]):
        chain = [r for run in group for r in _chain(run, by_name)]
        total = sum(r["seconds"] + r["registration_seconds"] for r in chain) / 60
        name = recipe + (f", {reduction}" if reduction != "mean" else "") + (f", {budget}x steps" if budget != 1 else "")
        lines.append(f"| {pct(fraction)} | {model} | {kind} | {name} | {len(group)} | "
                     f"{sum(r['registration_seconds'] for r in chain) / 60:.1f} | {total:.1f} | "
                     f"{total / len(group):.1f} |")
    return "\n".join(lines) if groups else NO_RUNS


def _chain(record: dict, by_name: dict[str, dict]) -> list[dict]:
    """The run and the runs it starts from (an ensemble's members), as far as they have finished."""
    starts = [by_name[n] for n in record.get("needs", []) if n in by_name]
    return [record] + [r for start in starts for r in _chain(start, by_name)]
