"""Per-structure agreement of two sets of binary masks (numpy only)."""

from __future__ import annotations

import numpy as np


def overlap(a: np.ndarray, b: np.ndarray, n: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(|a & b|, |a| + |b|) per channel on ``axis`` of ``n`` channels: Dice's terms, to be summed
    over volumes."""
    a, b = np.moveaxis(a, axis, 0).astype(bool), np.moveaxis(b, axis, 0).astype(bool)
    if a.shape != b.shape or len(a) != n:
        raise ValueError(f"masks of shape {a.shape} and {b.shape} for {n} structures")
    a, b = a.reshape(n, -1), b.reshape(n, -1)
    return np.count_nonzero(a & b, axis=1), np.count_nonzero(a, axis=1) + np.count_nonzero(b, axis=1)


def dice(both: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Dice from :func:`overlap`'s terms; two empty masks agree (1.0)."""
    return np.where(total == 0, 1.0, 2.0 * both / np.maximum(total, 1))


def agreement(a: np.ndarray, b: np.ndarray, names: list[str], axis: int = 0) -> dict[str, float]:
    """Dice between ``a`` and ``b`` for each channel on ``axis``; two empty masks agree (1.0)."""
    return dict(zip(names, dice(*overlap(a, b, len(names), axis)).tolist()))
