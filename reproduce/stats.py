"""The statistics of the experiment report (paper Tables 1-3, Figure 4, Appendix A) and its rows.

Every statistic is over test volumes pooled across the draws of a fraction: mean ± sample std per
age group (preterm < 37 weeks PMA, term >= 37) and structure, as the paper reports. Significance is
the paper's: one-way ANOVA (``scipy.stats.f_oneway``), p < 0.05, of our model against the
supervised model (marked ``*``) and against the semi-supervised model (marked ``^``), shown only
where ours has the higher mean Dice; the full three-group ANOVA and both pairwise p-values (with
their direction) are tabulated too, so a baseline that beats ours is never hidden. Caveat, kept from
the paper: the same test volumes appear in every draw, so the pooled values are not independent.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

AGE_GROUPS = ("preterm", "term")
DICE_STRUCTURES = ("dgm", "wm", "cgm")  # the paper's Tables 1-3 column order
HD_STRUCTURES = ("cgm", "wm", "dgm")  # the paper's Appendix A column order
LABEL = {"dgm": "DGM", "wm": "WM", "cgm": "CGM"}
NO_RUNS = "_No finished runs yet._"  # a table's text before any of its runs has finished

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
# the atlas grid's levers (issue 19; reproduce/grid.py plan_atlas)
ATLAS_RECIPES = [
    ("Label-set loss + self-training, from the IUC model", "partial", "labelset+st+from-iuc", "mean", 1),
    ("IUC, 25 % fully labelled slices per batch, augmented", "partial", "iuc+share25+aug", "mean", 1),
    ("Atlas propagation + IUC", "partial", "iuc+atlas-propagate", "mean", 1),
    ("Atlas propagation + IUC + self-training", "partial", "iuc+st+atlas-propagate", "mean", 1),
    ("Atlas propagation + IUC, selected by child Dice", "partial", "iuc+child+atlas-propagate", "mean", 1),
    ("Atlas propagation at confidence 0.8 + IUC", "partial", "iuc+atlas-propagate+conf80", "mean", 1),
    ("Atlas propagation at confidence 0.9 + IUC", "partial", "iuc+atlas-propagate+conf90", "mean", 1),
    ("Atlas propagation, regular and flexible warps fused, + IUC", "partial",
     "iuc+atlas-propagate+warps-regular-flexible", "mean", 1),
    ("Atlas propagation + IUC, weights averaged (EMA)", "partial", "iuc+atlas-propagate+wema", "mean", 1),
    ("Atlas propagation, both warps, + IUC, weights averaged", "partial",
     "iuc+atlas-propagate+warps-regular-flexible+wema", "mean", 1),
    ("Atlas-to-scan pairs + IUC", "partial", "iuc+atlas-pairs", "mean", 1),
    ("Atlas propagation and pairs + IUC", "partial", "iuc+atlas-both", "mean", 1),
    ("Atlas propagation and pairs + IUC, 25 % share, augmented", "partial", "iuc+atlas-both+share25+aug", "mean", 1),
    ("Atlas propagation + IUC, atlas fusion at inference", "partial", "iuc+atlas-propagate+fusion", "mean", 1),
    ("Atlas-to-scan pairs + IUC, atlas fusion at inference", "partial", "iuc+atlas-pairs+fusion", "mean", 1),
    ("Atlas-to-scan pairs + IUC, 3 seeds averaged", "partial", "iuc+atlas-pairs+ens3", "mean", 1),
    ("Atlas-to-scan pairs + IUC, 3 seeds averaged, atlas fusion at inference", "partial",
     "iuc+atlas-pairs+ens3+fusion", "mean", 1)]
BEYOND = [LABELSET, LABELSET_ST, LABELSET_ST_EARLY, ("IUC + self-training", "partial", "iuc+st", "mean", 1),
          *ATLAS_RECIPES]
# the target (issue 19), as shares of the 100 % model's Dice: in the mean of the draws, in the worst
# draw; and the DGM gain over the supervised model of the same fraction and draw, in every draw
TARGET_RATIO, TARGET_WORST_RATIO, TARGET_DGM_GAIN = 0.95, 0.85, 0.10


def budget_row(budget: int) -> tuple:
    return (f"Ours: IUC, {budget}x the training steps", "partial", "iuc", "mean", budget)

def values(rows: list[dict], model: str, row: tuple, fraction: float, age: str, structure: str,
           metric: str = "dice", draw: int | None = None) -> np.ndarray:
    """The metric of every test volume (all draws, or one) of one table cell; truth-empty volumes left out."""
    _, kind, loss, reduction, budget = row
    return np.array([r[metric] for r in rows if r["model"] == model and r["kind"] == kind and r["loss"] == loss
                     and r["reduction"] == reduction and r.get("budget", 1) == budget
                     and math.isclose(r["fraction"], fraction) and (draw is None or r["draw"] == draw)
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


def cell(v: np.ndarray, digits: int) -> str:
    if len(v) == 0:
        return "–"
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def marks(rows, model, row, fraction, age, structure) -> str:
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

def p_text(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"**{p:.2g}**" if p < 0.05 else f"{p:.2g}"


def pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"

def selection(rows: list[dict], row: tuple) -> str:
    """How the row's runs chose their best epoch, where it is not the paper's validation loss."""
    chosen = {r["select"] for r in rows if (r["kind"], r["loss"]) == row[1:3]} - {"val-loss"}
    return f" [selected by {', '.join(sorted(chosen))}]" if chosen else ""
