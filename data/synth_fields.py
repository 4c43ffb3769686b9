"""Smooth random fields and shape primitives for the synthetic cohort (numpy only, float32).

Fields are parametric (sums of random plane waves), so a brain is defined in millimetres and looks
the same at any voxel grid. Shapes return approximate signed distances in millimetres (negative
inside), exact near the surface, which is all the label geometry needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class WaveField:
    """A smooth random field: the normalised sum of plane waves ``cos(k . q + phase)``."""

    k: np.ndarray  # (W, D) wave vectors in radians per mm
    phase: np.ndarray  # (W,)

    @classmethod
    def random(cls, rng: np.random.Generator, n_waves: int, wavelength_mm: float, dims: int = 3,
               spread: float = 0.25) -> WaveField:
        """Isotropic directions, wavelengths ``wavelength_mm * (1 ± spread)``."""
        direction = rng.standard_normal((n_waves, dims))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = wavelength_mm * rng.uniform(1 - spread, 1 + spread, n_waves)
        k = direction * (2 * np.pi / wavelength)[:, None]
        return cls(k=k, phase=rng.uniform(0, 2 * np.pi, n_waves))

    def __call__(self, *q: np.ndarray) -> np.ndarray:
        """Evaluate at coordinates ``q`` (one array per dimension, broadcastable); unit variance."""
        out = np.zeros(np.broadcast_shapes(*(a.shape for a in q)), F32)
        for k, phase in zip(self.k, self.phase):
            arg = sum(F32(kd) * a for kd, a in zip(k, q)) + F32(phase)
            out += np.cos(arg, dtype=F32)
        out *= F32(np.sqrt(2.0 / len(self.phase)))
        return out


def smooth_1d(rng: np.random.Generator, x: np.ndarray, cycles: float, n_terms: int = 3) -> np.ndarray:
    """A random smooth 1D function of ``x`` in [-1, 1] with about ``cycles`` oscillations, unit scale."""
    out = np.zeros_like(x, dtype=F32)
    for _ in range(n_terms):
        freq = rng.uniform(0.3, 1.0) * cycles * np.pi
        out += F32(rng.standard_normal()) * np.cos(F32(freq) * x + F32(rng.uniform(0, 2 * np.pi)))
    return out / F32(np.sqrt(n_terms / 2))


def ellipsoid_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid; radii may be arrays."""
    u = [(a - F32(c)) / r for a, c, r in zip((x, y, z), centre, radii)]
    k = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    g = np.sqrt((u[0] / radii[0]) ** 2 + (u[1] / radii[1]) ** 2 + (u[2] / radii[2]) ** 2)
    return (k - 1) * k / np.maximum(g, F32(1e-6))


def tube_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray, nodes, radii) -> np.ndarray:
    """Approximate signed distance (mm) to a tube along the polyline ``nodes`` (P, 3) whose
    cross-section at each node is an ellipse of (horizontal, vertical) radii ``radii`` (P, 2)."""
    nodes = np.asarray(nodes, F32)
    radii = np.asarray(radii, F32)
    best = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf, F32)
    for a, b, ra, rb in zip(nodes[:-1], nodes[1:], radii[:-1], radii[1:]):
        ab = b - a
        s = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / F32(ab @ ab)
        np.clip(s, 0, 1, out=s)
        rh = ra[0] + s * (rb[0] - ra[0])
        rv = ra[1] + s * (rb[1] - ra[1])
        dx = (x - a[0] - s * ab[0]) / rh
        dy = (y - a[1] - s * ab[1]) / rh
        dz = (z - a[2] - s * ab[2]) / rv
        d = (np.sqrt(dx * dx + dy * dy + dz * dz) - 1) * np.minimum(rh, rv)
        np.minimum(best, d, out=best)
    return best


def linear_taps(fine: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index and weight of the right neighbour for linear interpolation from the
    sorted positions ``coarse`` to ``fine`` (ends clamped)."""
    pos = np.interp(fine, coarse, np.arange(len(coarse), dtype=float))
    lo = np.clip(np.floor(pos).astype(np.intp), 0, len(coarse) - 2)
    return lo, (pos - lo).astype(F32)


def _lerp(field: np.ndarray, taps: tuple[np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    lo, frac = taps
    shape = [1, 1, 1]
    shape[axis] = len(lo)
    frac = frac.reshape(shape)
    left = np.take(field, lo, axis=axis)
    return left + (np.take(field, lo + 1, axis=axis) - left) * frac


def upsample(field: np.ndarray, taps0, taps1, taps2) -> np.ndarray:
    """Separable linear interpolation of a coarse 3D field (taps from :func:`linear_taps`, one per
    axis). Elementwise only, no BLAS: the result is bit-identical on every machine."""
    return _lerp(_lerp(_lerp(field, taps0, 0), taps1, 1), taps2, 2)


def cleft_sdf(dist: np.ndarray, depth_from_surface: np.ndarray, depth: np.ndarray, half_width: float) -> np.ndarray:
    """Signed distance (mm) to a sulcal cleft: a sheet of half-width ``half_width`` at lateral
    distance ``dist`` that runs from the surface down to ``depth``."""
    lateral = dist - F32(half_width)
    below = depth_from_surface - depth
    deep = np.sqrt(np.maximum(lateral, 0) ** 2 + np.maximum(below, 0) ** 2)
    return np.where(below <= 0, lateral, deep)


def mirror_box(ax: np.ndarray, y: np.ndarray, z: np.ndarray, lo, hi) -> np.ndarray:
    """Flat indices of the points whose (|x|, y, z) lie in the template box [lo, hi]."""
    inside = (ax >= lo[0]) & (ax <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
    return np.flatnonzero(inside)
