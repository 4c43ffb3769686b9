"""Statistics, tables and the figure of the experiment report (paper Tables 1-3, Figure 4, Appendix A).

Every statistic is over test volumes pooled across the draws of a fraction: mean ± sample std per
age group (preterm < 37 weeks PMA, term >= 37) and structure, as the paper reports. Significance is
the paper's: one-way ANOVA (``scipy.stats.f_oneway``), p < 0.05, of our model against the
supervised model (marked ``*``) and against the semi-supervised model (marked ``^``), shown only
where ours has the higher mean Dice; the full three-group ANOVA and both pairwise p-values (with
their direction) are tabulated too, so a baseline that beats ours is never hidden. Caveat, kept from
the paper: the same test volumes appear in every draw, so the pooled values are not independent.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

AGE_GROUPS = ("preterm", "term")
DICE_STRUCTURES = ("dgm", "wm", "cgm")  # the paper's Tables 1-3 column order
HD_STRUCTURES = ("cgm", "wm", "dgm")  # the paper's Appendix A column order
LABEL = {"dgm": "DGM", "wm": "WM", "cgm": "CGM"}
FIGURE = "figure4.png"

# (row label, kind, loss, reduction, budget) in the paper's order
SUPERVISED = ("Supervised", "supervised", "bce", "mean", 1)
SEMI = ("Semi-supervised", "semi", "bce", "mean", 1)
IUC = ("Ours: IUC", "partial", "iuc", "mean", 1)
OURS = [IUC, ("Ours: WEIGHT", "partial", "weight", "mean", 1), ("Ours: WNORM", "partial", "wnorm", "mean", 1),
        ("Ours: HUC", "partial", "huc", "mean", 1),
        ("Ours: IUC, reduction=observed", "partial", "iuc", "observed", 1)]


# beyond the paper (label-set loss, self-training): the recipes the headline grid adds
LABELSET = ("Label-set loss (marginal CE + leaf Dice)", "partial", "labelset", "mean", 1)
LABELSET_ST = ("Label-set loss + self-training", "partial", "labelset+st", "mean", 1)
LABELSET_ST_EARLY = ("Label-set loss + self-training from epoch 6", "partial", "labelset+st5", "mean", 1)
BEYOND = [LABELSET, LABELSET_ST, LABELSET_ST_EARLY, ("IUC + self-training", "partial", "iuc+st", "mean", 1)]
TARGET_RATIO, TARGET_DGM_GAIN = 0.95, 0.10  # of the 100 % model's Dice; over the supervised model's DGM


def budget_row(budget: int) -> tuple:
    return (f"Ours: IUC, {budget}x the training steps", "partial", "iuc", "mean", budget)


def load_results(path: str | Path) -> list[dict]:
    """``results.csv`` rows with numbers and flags parsed."""
    with Path(path).open(newline="") as f:
        return [_parse(r) for r in csv.DictReader(f)]


def _parse(row: dict) -> dict:
    out = dict(row)
    for k in ("fraction", "dice", "hd95", "hd100", "vol_diff_ml", "vol_true_ml", "scan_age"):
        if k in out and not isinstance(out[k], float):
            out[k] = float(out[k]) if out[k] not in ("", None) else math.nan
    out["draw"] = int(out["draw"])
    out["budget"] = int(out.get("budget") or 1)
    out["select"] = out.get("select") or "val-loss"  # results written before model selection was an option
    for k in ("missed", "truth_empty"):
        if isinstance(out.get(k), str):
            out[k] = out[k] == "True"
    return out


def values(rows: list[dict], model: str, row: tuple, fraction: float, age: str, structure: str,
           metric: str = "dice") -> np.ndarray:
    """The metric of every test volume (all draws) of one table cell; truth-empty volumes left out."""
    _, kind, loss, reduction, budget = row
    return np.array([r[metric] for r in rows if r["model"] == model and r["kind"] == kind and r["loss"] == loss
                     and r["reduction"] == reduction and r.get("budget", 1) == budget
                     and math.isclose(r["fraction"], fraction)
                     and r["age_group"] == age and r["structure"] == structure and not r["truth_empty"]], float)


def anova(*groups: np.ndarray) -> float:
    """One-way ANOVA p-value; NaN when a group is empty or every value is equal."""
    from scipy.stats import f_oneway

    groups = [g for g in groups]
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = f_oneway(*groups).pvalue
    return float(p)


def _cell(v: np.ndarray, digits: int) -> str:
    if len(v) == 0:
        return "–"
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def _marks(rows, model, row, fraction, age, structure) -> str:
    if row[1] != "partial":
        return ""
    ours = values(rows, model, row, fraction, age, structure)
    out = ""
    for baseline, mark in ((SUPERVISED, "*"), (SEMI, "^")):
        other = values(rows, model, baseline, fraction, age, structure)
        if len(ours) and len(other) and ours.mean() > other.mean() and anova(ours, other) < 0.05:
            out += mark
    return out


def present_rows(rows: list[dict], model: str, fraction: float, candidates: list[tuple]) -> list[tuple]:
    return [c for c in candidates if len(values(rows, model, c, fraction, AGE_GROUPS[0], "dgm"))
            or len(values(rows, model, c, fraction, AGE_GROUPS[1], "dgm"))]


def dice_table(rows: list[dict], model: str, fraction: float, candidates: list[tuple],
               reference: bool = True) -> str:
    """Paper layout: rows = model kind / loss, columns preterm DGM WM CGM, term DGM WM CGM."""
    header = "| model | " + " | ".join(f"{age} {LABEL[s]}" for age in AGE_GROUPS for s in DICE_STRUCTURES) + " |"
    lines = [header, "|---" * (1 + len(AGE_GROUPS) * len(DICE_STRUCTURES)) + "|"]
    for row in present_rows(rows, model, fraction, candidates):
        cells = [_cell(values(rows, model, row, fraction, age, s), 3) + _marks(rows, model, row, fraction, age, s)
                 for age in AGE_GROUPS for s in DICE_STRUCTURES]
        lines.append(f"| {row[0]}{_selection(rows, row)} | " + " | ".join(cells) + " |")
    if reference and present_rows(rows, "unet", 1.0, [SUPERVISED]):
        cells = [_cell(values(rows, "unet", SUPERVISED, 1.0, age, s), 3) for age in AGE_GROUPS for s in DICE_STRUCTURES]
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
            cells = [_cell(values(rows, "unet", row, fraction, age, s, metric), 2) for age in AGE_GROUPS
                     for s in HD_STRUCTURES]
            lines.append(f"| {_pct(fraction)} | {row[0]} | " + " | ".join(cells) + " |")
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
                        cells.append(_p(p))
                    else:
                        other = values(rows, model, baseline, fraction, age, s)
                        diff = ours.mean() - other.mean() if len(ours) and len(other) else math.nan
                        cells.append(f"{_p(anova(ours, other))} ({diff:+.3f})" if not math.isnan(diff) else "–")
            lines.append(f"| {_pct(fraction)} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"**{p:.2g}**" if p < 0.05 else f"{p:.2g}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def figure(rows: list[dict], fractions: list[float], path: Path) -> Path:
    """Figure 4 of the paper: mean Dice (± std) of supervised, semi-supervised and ours (IUC) per
    structure, one panel per age group and fraction; * and ^ as in the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [(SUPERVISED, "#9e9e9e"), (SEMI, "#5b8fd1"), (IUC, "#3aa35b")]
    fig, axes = plt.subplots(len(AGE_GROUPS), len(fractions), figsize=(4.2 * len(fractions), 6.6),
                             sharey=True, squeeze=False)
    width = 0.26
    for i, age in enumerate(AGE_GROUPS):
        for j, fraction in enumerate(fractions):
            ax = axes[i][j]
            for k, (row, color) in enumerate(kinds):
                means, stds, marks = [], [], []
                for s in DICE_STRUCTURES:
                    v = values(rows, "unet", row, fraction, age, s)
                    means.append(v.mean() if len(v) else np.nan)
                    stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
                    marks.append(_marks(rows, "unet", row, fraction, age, s))
                x = np.arange(len(DICE_STRUCTURES)) + (k - 1) * width
                ax.bar(x, means, width, yerr=stds, color=color, capsize=2, label=row[0] if i == j == 0 else None)
                for xi, m, sd, mark in zip(x, means, stds, marks):
                    if mark and not np.isnan(m):
                        ax.text(xi, min(m + sd, 1.0) + 0.01, mark, ha="center", va="bottom", fontsize=9)
            ref = [values(rows, "unet", SUPERVISED, 1.0, age, s) for s in DICE_STRUCTURES]
            for xi, v in enumerate(ref):
                if len(v):
                    ax.hlines(v.mean(), xi - 1.5 * width, xi + 1.5 * width, colors="k", linestyles="dashed",
                              linewidth=1, label="Supervised, 100 %" if i == j == 0 and xi == 0 else None)
            ax.set_xticks(np.arange(len(DICE_STRUCTURES)), [LABEL[s] for s in DICE_STRUCTURES])
            ax.set_title(f"{age}, {_pct(fraction)} fully labelled", fontsize=10)
            ax.set_ylim(0, 1.08)
            if j == 0:
                ax.set_ylabel("Dice")
    fig.legend(loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _selection(rows: list[dict], row: tuple) -> str:
    """How the row's runs chose their best epoch, where it is not the paper's validation loss."""
    chosen = {r["select"] for r in rows if (r["kind"], r["loss"]) == row[1:3]} - {"val-loss"}
    return f" [selected by {', '.join(sorted(chosen))}]" if chosen else ""


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
            lines.append(f"| {_pct(fraction)} | {row[0]}{_selection(rows, row)} | "
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
        parts.append(f"{age} DGM Dice at {_pct(fraction)}: {text} (IUC vs supervised p = {p_sup:.2g}, "
                     f"vs semi-supervised p = {p_semi:.2g}).")
    return " ".join(parts)


def write_report(out: Path, rows: list[dict], meta: dict, planned: list[str]) -> Path:
    """``OUT/REPORT.md`` and ``OUT/figure4.png`` from the tidy rows and the experiment metadata."""
    out = Path(out)
    rows = [_parse(r) for r in rows]
    settings = meta.get("profile_settings", {})
    ran = {r["fraction"] for r in rows}
    fractions = [f for f in settings.get("fractions", (0.02, 0.05, 0.10)) if f in ran]
    low = [f for f in fractions if f <= 0.05]
    segformer = any(r["model"] == "segformer" for r in rows)
    finished = sorted({r["run"] for r in rows})
    invocations = meta.get("invocations", [])
    failed = {k: v for inv in invocations[-1:] for k, v in inv.get("failed", {}).items()}
    wall = sum(inv["seconds"] for inv in invocations)
    last = invocations[-1] if invocations else {}
    m = last.get("machine", {})
    test = sorted({(r["subject"], r["session"], r["age_group"]) for r in rows})
    n_age = {age: sum(1 for t in test if t[2] == age) for age in AGE_GROUPS}

    grid = meta.get("grid", "full")
    lines = [f"# neoseg experiment report: profile `{meta.get('profile')}`, {grid} grid", ""]
    lines += ["Generated by `python -m neoseg.benchmarks.experiments --profile "
              f"{meta.get('profile')} --grid {grid}` from `results.csv` (one row per run, test volume and structure).",
              ""]
    if settings.get("protocol"):
        lines += [f"Protocol: {settings['protocol']}.", ""]
    lines += ["## Machine, scale and time", "",
              f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
              + f"; torch {m.get('torch', '?')}, Python {m.get('python', '?')}, {m.get('system', '')}.",
              f"- Training processes at once: {last.get('workers', '?')}, each with {last.get('threads') or 'default'} "
              f"thread(s); device {last.get('device', '?')}.",
              f"- Wall time: **{wall / 60:.1f} min** in {len(invocations)} invocation(s) of the command "
              f"(cohort generation, slice caches, every run with its test evaluation, and this report); "
              f"an interrupted invocation is not counted. The finished runs took "
              f"{sum(r['seconds'] for r in _records(out)) / 60:.0f} min of training and evaluation between them.",
              f"- Runs finished: {len(finished)} of {len(planned)} planned" + (f"; failed: {len(failed)}" if failed else "") + ".",
              f"- Data: {meta.get('data')} ({meta.get('sessions', '?')} sessions); split 80/10/10 by subject (seed 0); "
              f"test volumes: {n_age['preterm']} preterm, {n_age['term']} term, the same in every run.",
              f"- Draws of the fully labelled subjects per fraction: {settings.get('draws', '?')}; fractions "
              f"{', '.join(_pct(f) for f in fractions)} plus a 100 % reference.",
              f"- How the runs ended: {_endings(out)}.",
              ""]
    if settings.get("notes"):
        lines += ["Scale, reduced from the paper where stated:", ""] + [f"- {n}" for n in settings["notes"]] + [""]
    if failed:
        lines += ["Failed runs (left out of every table):", ""] + [f"- `{k}`: {v}" for k, v in failed.items()] + [""]
    missing = [p for p in planned if p not in finished and p not in failed]
    if missing:
        lines += [f"Not (yet) run: {len(missing)} run(s), e.g. `{missing[0]}`; rerun the command to continue.", ""]
    lines += ["Cells: mean ± std of the per-volume Dice over the test volumes of all draws. `*` / `^`: ours "
              "significantly better than the supervised / semi-supervised model (one-way ANOVA, p < 0.05), "
              "as in the paper. The p-value table below shows every comparison, in both directions.", ""]
    if 0.02 in fractions or fractions:
        lines += ["## Headline", "", headline(rows, fractions[0]) or "(not enough finished runs)", ""]
    titles = {0: "Table 1", 1: "Table 2"}
    for i, fraction in enumerate(fractions):
        title = titles.get(i, "Figure 4, third panel")
        candidates = [SUPERVISED, SEMI] + OURS + sorted({budget_row(r["budget"]) for r in rows if r["budget"] != 1}) \
            + BEYOND
        lines += [f"## {title}: U-Net, {_pct(fraction)} fully labelled (Dice)", "",
                  dice_table(rows, "unet", fraction, candidates), ""]
    if segformer:
        lines += ["## Table 3: SegFormer-B0 (Dice)", ""]
        for fraction in low:
            lines += [f"### {_pct(fraction)} fully labelled", "",
                      dice_table(rows, "segformer", fraction, [SUPERVISED, SEMI, IUC], reference=False), ""]
    if present_rows(rows, "unet", fractions[0], BEYOND) if fractions else False:
        lines += ["## Beyond the paper: how close do partial labels get to 100 %?", "",
                  f"Each cell: the recipe's mean Dice over draws and test volumes divided by the 100 % model's. "
                  f"Target: at least {TARGET_RATIO:.2f} in every cell and a DGM gain of at least "
                  f"{TARGET_DGM_GAIN:.2f} over the supervised model of the same fraction, in both age groups. "
                  f"Every row selects its best epoch by the validation loss unless marked.", "",
                  target_table(rows, fractions), ""]
    lines += ["## Figure 4", "", f"![Mean Dice per structure, age group and fraction]({FIGURE})", ""]
    figure(rows, fractions, out / FIGURE)
    lines += ["## Appendix A: Hausdorff distance (U-Net), HD100 in mm", "",
              "The maximum surface distance (as the authors' prototype reports), in mm; a structure missed "
              "entirely counts with the penalty of the volume's diagonal.", "", hd_table(rows, fractions, "hd100"), "",
              "### HD95 in mm", "", hd_table(rows, fractions, "hd95"), ""]
    lines += ["## Significance (U-Net)", "",
              "p-values of one-way ANOVA (bold: p < 0.05); in brackets IUC's mean Dice minus the baseline's "
              "(negative: the baseline is better).", "", p_value_table(rows, "unet", fractions), ""]
    if low and segformer:
        lines += ["### SegFormer-B0", "", p_value_table(rows, "segformer", low), ""]
    lines += ["## Runs", "", run_table(out, settings), ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _records(out: Path) -> list[dict]:
    import json

    return [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*/done.json"))]


def _endings(out: Path) -> str:
    counts: dict[str, int] = {}
    for record in _records(out):
        counts[record.get("stopped_by", "?")] = counts.get(record.get("stopped_by", "?"), 0) + 1
    return ", ".join(f"{n} by {how}" for how, n in sorted(counts.items())) or "no finished run"


def run_table(out: Path, settings: dict) -> str:
    """Per model kind: runs finished, median wall seconds (training, pseudo labels, evaluation), epochs
    trained, the best epoch and what ended the runs, so runs cut by the epoch cap are visible."""
    groups: dict[tuple, list[dict]] = {}
    for record in _records(out):
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
