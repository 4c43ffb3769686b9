"""Figure 4 of the paper, from the tidy results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .stats import AGE_GROUPS, DICE_STRUCTURES, IUC, LABEL, SEMI, SUPERVISED, marks, pct, values

FIGURE = "figure4.png"


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
                means, stds, signs = [], [], []
                for s in DICE_STRUCTURES:
                    v = values(rows, "unet", row, fraction, age, s)
                    means.append(v.mean() if len(v) else np.nan)
                    stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
                    signs.append(marks(rows, "unet", row, fraction, age, s))
                x = np.arange(len(DICE_STRUCTURES)) + (k - 1) * width
                ax.bar(x, means, width, yerr=stds, color=color, capsize=2, label=row[0] if i == j == 0 else None)
                for xi, m, sd, mark in zip(x, means, stds, signs):
                    if mark and not np.isnan(m):
                        ax.text(xi, min(m + sd, 1.0) + 0.01, mark, ha="center", va="bottom", fontsize=9)
            ref = [values(rows, "unet", SUPERVISED, 1.0, age, s) for s in DICE_STRUCTURES]
            for xi, v in enumerate(ref):
                if len(v):
                    ax.hlines(v.mean(), xi - 1.5 * width, xi + 1.5 * width, colors="k", linestyles="dashed",
                              linewidth=1, label="Supervised, 100 %" if i == j == 0 and xi == 0 else None)
            ax.set_xticks(np.arange(len(DICE_STRUCTURES)), [LABEL[s] for s in DICE_STRUCTURES])
            ax.set_title(f"{age}, {pct(fraction)} fully labelled", fontsize=10)
            ax.set_ylim(0, 1.08)
            if j == 0:
                ax.set_ylabel("Dice")
    fig.legend(loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
