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
        axis = first_axis + k
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (x - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        lo = np.take(out, i0, axis=axis)
        out = lo + (np.take(out, i1, axis=axis) - lo) * w
    return out


