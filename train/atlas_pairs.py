"""Atlas-to-scan synthesis (numpy only): a fully labelled atlas's image and labels, warped together
into a partially labelled scan's space, become a new fully labelled training pair. Its labels are the
warped soft label maps' most likely value (so image and labels agree voxel for voxel, whatever the
registration got wrong), its intensities the scan's: per region, a quantile mapping from the warped
atlas's intensities to the scan's own, the regions being what the scan's annotation knows (for a
TCV-only map: TCV, CSF, the ventricles, ...; the atlas's children fall in the TCV region, so one
monotone mapping keeps their contrast). Voxels beyond the warped atlas's field of view are labelled
outside the brain, never a tissue.
"""

from __future__ import annotations

import numpy as np

QUANTILES = np.linspace(0.0, 1.0, 101)
MIN_REGION_VOXELS = 50  # smaller regions (in either image) take the whole-image mapping


def hard_labels(soft: np.ndarray, values: list[int], dtype, outside: int) -> np.ndarray:
    """The most likely of ``values`` per voxel, from (L, ...) soft maps; ``outside`` (the label tree's
    outside value) where less than half of the voxel lies in the warped atlas's field of view (the
    maps, each atlas voxel's one-hot leaf resampled linearly, sum to 1 inside it and 0 beyond)."""
    labels = np.asarray(values, dtype)[np.argmax(soft, axis=0)]
    labels[soft.sum(axis=0) < 0.5] = outside
    return labels


def quantile_map(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``values`` mapped so that the distribution of ``source`` becomes that of ``target``
    (piecewise linear between their percentiles)."""
    src = np.maximum.accumulate(np.quantile(source, QUANTILES))
    src = src + np.arange(len(src)) * 1e-9 * max(1.0, float(abs(src).max()))  # strictly increasing
    return np.interp(values, src, np.quantile(target, QUANTILES)).astype(np.float32)


def match_intensities(image: np.ndarray, regions: np.ndarray, target: np.ndarray,
                      target_regions: np.ndarray) -> np.ndarray:
    """``image`` (the warped atlas) with the intensities of ``target`` (the scan), region by region:
    voxels of region r in ``regions`` are quantile-mapped from the image's r to the scan's r
    (``target_regions``); regions too small in either, from the whole image to the whole scan."""
    out = quantile_map(image, image, target)
    for r in np.unique(regions):
        here, there = regions == r, target_regions == r
        if here.sum() >= MIN_REGION_VOXELS and there.sum() >= MIN_REGION_VOXELS:
            out[here] = quantile_map(image[here], image[here], target[there])
    return out
