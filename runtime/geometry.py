"""Voxel-grid bookkeeping of the runtime: canonical orientation and back, resampling to the
model's spacing and back, and the head's bounding box (numpy and nibabel only)."""

from __future__ import annotations

import numpy as np
from nibabel import orientations as orient

RAS = orient.axcodes2ornt("RAS")


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """Orientation transform from the stored axes to the closest canonical (RAS+) axes."""
    return orient.ornt_transform(orient.io_orientation(affine), RAS)


def to_canonical(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip/transpose the first three axes as ``nib.as_closest_canonical`` does (a view)."""
    return orient.apply_orientation(data, ornt)


def from_canonical(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical`; trailing axes (channels) ride along."""
    return orient.apply_orientation(data, _inverse(ornt))


def _inverse(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt`` (axis i -> (dst, flip) becomes dst -> (i, flip))."""
    inv = np.empty_like(ornt)
    for src, (dst, flip) in enumerate(ornt):
        inv[int(dst)] = (src, flip)
    return inv


def canonical_spacing(zooms, ornt: np.ndarray) -> tuple[float, float, float]:
    spacing = [0.0] * 3
    for src, (dst, _) in enumerate(ornt):
        spacing[int(dst)] = float(zooms[src])
    return tuple(spacing)


def needs_resampling(spacing, target, rtol: float = 0.01) -> bool:
    return any(abs(s - t) > rtol * t for s, t in zip(spacing, target))


def resampled_shape(shape, spacing, target) -> tuple[int, int, int]:
    """Same field of view on the target voxel size."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resize_linear(volume: np.ndarray, shape, first_axis: int = 0) -> np.ndarray:
    """Separable linear interpolation of three axes (from ``first_axis``) onto ``shape``; voxel
    edges stay aligned (same field of view), values beyond the edge repeat the border."""
    out = volume
    for k, n_out in enumerate(shape):
        out = resize_axis(out, first_axis + k, n_out)
    return out


def resize_axis(volume: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """:func:`resize_linear` along one axis (``volume`` itself where the size is already right)."""
    n_in = volume.shape[axis]
    if n_in == n_out:
        return volume
    i0, i1, w = linear_weights(n_in, n_out)
    w = w.reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    lo = np.take(volume, i0, axis=axis)
    return lo + (np.take(volume, i1, axis=axis) - lo) * w


def linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n_out`` points on an axis of ``n_in``: the two neighbours (i0, i1) and the
    float32 weight w of i1 (value = v[i0] + (v[i1] - v[i0]) * w)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)


