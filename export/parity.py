"""Per-structure agreement of two sets of binary masks (numpy only)."""

from __future__ import annotations

import numpy as np


def agreement(a: np.ndarray, b: np.ndarray, names: list[str], axis: int = 0) -> dict[str, float]:
    """Dice between ``a`` and ``b`` for each channel on ``axis``; two empty masks agree (1.0)."""
    a, b = np.moveaxis(a, axis, 0).astype(bool), np.moveaxis(b, axis, 0).astype(bool)
    if a.shape != b.shape or len(a) != len(names):
        raise ValueError(f"masks of shape {a.shape} and {b.shape} for {len(names)} structures")
    out = {}
    for name, x, y in zip(names, a, b):
        total = np.count_nonzero(x) + np.count_nonzero(y)
        out[name] = 1.0 if total == 0 else 2.0 * np.count_nonzero(x & y) / total
    return out
