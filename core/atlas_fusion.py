"""Atlas propagation inside the known parent (numpy only): the warped atlases' soft leaf maps fused
per voxel, and a partial label map made of them that never says more than the scan's own annotation
allows.

A scan's partial map holds, at each voxel, a label value whose target row (``Hierarchy.target_table``)
may leave some channels unknown (a parent's own value: which child, unknown). The *candidates* of a
voxel are the leaves that row allows (TCV's: CGM, WM, DGM; a leaf's: itself). Where a voxel has
several, the fused atlas probability of each candidate is divided by their sum (the share of the
parent), and the most likely candidate is written if its share reaches ``confidence``; elsewhere the
voxel keeps its own value, so its children stay unknown. A child therefore never lands outside its
known parent, and no known voxel changes.
"""

from __future__ import annotations

import numpy as np

from neoseg.core.hierarchy import UNKNOWN, Hierarchy

SIMILARITY_SIGMA = 2.0  # voxels: the Gaussian window of the local correlation that weights atlases
SIMILARITY_SHARPNESS = 5.0  # weight = exp(sharpness * local correlation)


def leaf_values(hierarchy: Hierarchy) -> list[int]:
    """The label values of the hierarchy's leaves (what a full map holds)."""
    return [v for i in hierarchy.leaves for v in hierarchy.channels[i].values]


def candidates(hierarchy: Hierarchy, leaves: list[int]) -> np.ndarray:
    """(values, leaves) bool: which of ``leaves`` the target row of each label value allows."""
    table = hierarchy.target_table()
    rows = table[:, None, :]  # (V, 1, C)
    leaf_rows = table[leaves][None]  # (1, L, C)
    valid = (table[:, 0] != 255)[:, None]
    return valid & ((rows == UNKNOWN) | (rows == leaf_rows)).all(axis=-1)


def open_voxels(partial: np.ndarray, leaves: list[int], hierarchy: Hierarchy) -> np.ndarray:
    """The voxels of a partial map whose annotation leaves several leaves possible (inside a parent)."""
    return candidates(hierarchy, leaves)[partial].sum(axis=-1) > 1


def local_correlation(a: np.ndarray, b: np.ndarray, sigma: float = SIMILARITY_SIGMA) -> np.ndarray:
    """Gaussian-windowed normalised cross-correlation of two images, per voxel, in [-1, 1]."""
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    blur = lambda x: gaussian_filter(x, sigma, mode="nearest")  # noqa: E731
    ma, mb = blur(a), blur(b)
    cov = blur(a * b) - ma * mb
    va, vb = np.maximum(blur(a * a) - ma * ma, 0), np.maximum(blur(b * b) - mb * mb, 0)
    return cov / np.sqrt(va * vb + 1e-8)


def fuse(target_image: np.ndarray, warped_images: list[np.ndarray], soft: list[np.ndarray]) -> np.ndarray:
    """(L, ...) fused leaf probabilities: the mean of the atlases' ``soft`` (L, ...) maps, each weighted
    per voxel by how well its warped image matches the scan locally (one atlas: its own maps)."""
    if len(soft) == 1:
        return np.asarray(soft[0], np.float32)
    weights = np.stack([np.exp(SIMILARITY_SHARPNESS * local_correlation(target_image, w)) for w in warped_images])
    weights /= weights.sum(axis=0)
    return np.einsum("a...,al...->l...", weights, np.stack(soft).astype(np.float32))


def propagate(partial: np.ndarray, fused: np.ndarray, leaves: list[int], hierarchy: Hierarchy,
              confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(label map, undecided mask): ``partial`` (a label map, possibly holding parents' own values)
    with each voxel that has several candidate leaves set to its most likely candidate where that
    candidate's share of the candidates' fused probability (``fused``: (L, ...) over ``leaves``)
    reaches ``confidence``; ``undecided`` marks the multi-candidate voxels left as they were."""
    allowed = candidates(hierarchy, leaves)[partial]  # (..., L)
    open_ = allowed.sum(axis=-1) > 1
    probs = np.moveaxis(fused, 0, -1)[open_] * allowed[open_]  # (N, L)
    total = probs.sum(axis=-1)
    best = probs.argmax(axis=-1)
    share = probs[np.arange(len(best)), best] / np.maximum(total, 1e-12)
    sure = (total > 0) & (share >= confidence)
    out = partial.copy()
    picked = out[open_]
    picked[sure] = np.asarray(leaves, out.dtype)[best[sure]]
    out[open_] = picked
    undecided = np.zeros(partial.shape, bool)
    undecided[open_] = ~sure
    return out, undecided


def most_likely(partial: np.ndarray, fused: np.ndarray, leaves: list[int], hierarchy: Hierarchy) -> np.ndarray:
    """``partial`` with every multi-candidate voxel set to its most likely candidate (the warped
    children, hard, inside the known parent): :func:`propagate` at no confidence."""
    return propagate(partial, fused, leaves, hierarchy, 0.0)[0]


def dice_by_value(predicted: np.ndarray, truth: np.ndarray, values: list[int], where: np.ndarray) -> dict[int, float]:
    """Dice of each label value between two maps, counted over the voxels of ``where`` (NaN where
    neither map holds the value there)."""
    p, t = predicted[where], truth[where]
    out = {}
    for v in values:
        a, b = p == v, t == v
        n = int(a.sum() + b.sum())
        out[v] = 2 * float(np.sum(a & b)) / n if n else float("nan")
    return out
