"""The cerebellum: its envelope (v1: one ellipsoid; v2: two hemispheres and the vermis) and the
fissures between its folia (v2: lobules of varying depth around a white-matter core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..synth_fields import F32, cleft_sdf, ellipsoid_sdf
from .tissues import T_BS, T_CB, T_CB_CORE, partial_volume

if TYPE_CHECKING:
    from .brain import Brain

CEREBELLUM_RADII = (25.0, 16.0, 13.5)  # at 40 weeks; it grows faster than the cerebrum


def cerebellum_sdf(brain: Brain, x, y, z) -> tuple[np.ndarray, tuple, list]:
    """Signed distance (scanner mm) to the cerebellum, its centre and half-axes (template mm)."""
    g, a, sc = brain.growth, brain.anat, F32(brain.scale)
    cb_radii = [F32(r * g.cerebellum * a.cerebellum) for r in CEREBELLUM_RADII]
    cb_centre = (0.0, -16.5 - cb_radii[1], -8.0 - cb_radii[2])  # tucked under the tentorium
    if brain.v2:  # two hemispheres and the vermis between them
        rx, ry, rz = cb_radii
        hemispheres = ellipsoid_sdf(np.abs(x), y, z, (0.42 * rx, cb_centre[1], cb_centre[2]), (0.6 * rx, ry, rz))
        vermis = ellipsoid_sdf(x, y, z, (0.0, cb_centre[1] + 0.1 * ry, cb_centre[2] + 0.05 * rz),
                               (0.32 * rx, 0.88 * ry, 0.95 * rz))
        cerebellum = np.minimum(hemispheres, vermis) * sc
    else:
        cerebellum = ellipsoid_sdf(x, y, z, cb_centre, cb_radii) * sc
    return cerebellum, cb_centre, cb_radii

def cerebellar_fissures(brain: Brain, y, z, cerebellum: np.ndarray, centre, radii) -> np.ndarray:
    """Signed distance (mm) to the cerebellar fissures: transverse CSF sheets fanning out in the
    sagittal plane from the fastigium, more and deeper with age."""
    out = np.full(cerebellum.shape, np.inf, F32)
    idx = np.flatnonzero(cerebellum < 0)
    if not idx.size:
        return out
    g = brain.growth
    py = y.ravel()[idx] - F32(centre[1] + 0.5 * radii[1])
    pz = z.ravel()[idx] - F32(centre[2] + 0.2 * radii[2])
    step = np.deg2rad(34.0 - 14.0 * float(np.clip(g.maturity, 0, 1.2)))
    theta = np.arctan2(pz, -py) + F32(brain.anat.folia_phase * step)
    if brain.v2:  # fissures every half step: lobules of varying depth, subdivided towards term
        half = F32(step / 2)
        k = np.round(theta / half).astype(np.int64)
        wrapped = theta - half * k
        dist = np.sqrt(py * py + pz * pz) * np.abs(np.sin(wrapped)) * F32(brain.scale)
        full = (1.0 + 5.0 * float(np.clip(g.maturity, 0, 1.2))) * brain.anat.cerebellum
        sub = full * 0.45 * float(np.clip((g.age - 32.0) / 8.0, 0, 1.2))
        lobules = np.asarray(brain.anat.lobules, F32)
        depth = np.where(k % 2 == 0, F32(full) * lobules[(k // 2) % len(lobules)], F32(sub))
        half_width = 0.5 + 0.3 * float(np.clip(1 - g.maturity, 0, 1))
        out.ravel()[idx] = cleft_sdf(dist, -cerebellum.ravel()[idx], depth, half_width)
        return out
    wrapped = theta - F32(step) * np.round(theta / F32(step))
    dist = np.sqrt(py * py + pz * pz) * np.abs(np.sin(wrapped)) * F32(brain.scale)
    depth = F32((1.0 + 4.0 * float(np.clip(g.maturity, 0, 1.2))) * brain.anat.cerebellum)
    out.ravel()[idx] = cleft_sdf(dist, -cerebellum.ravel()[idx], depth, 0.4 + 0.3 * float(np.clip(1 - g.maturity, 0, 1)))
    return out


def cerebellum_v2(brain: Brain, tissue, y, z, cerebellum, cerebrum, centre, radii, brainstem) -> np.ndarray:
    """Cerebellar cortex around a white-matter core, cut by the fissures (in place); returns the
    partial-volume texture of the fissures."""
    g = brain.growth
    inside = (cerebellum < 0) & ~cerebrum
    fissures = cerebellar_fissures(brain, y, z, cerebellum, centre, radii)
    to_csf = np.minimum(-cerebellum, fissures)
    cortex = F32(1.2 + 0.5 * float(np.clip(g.maturity, 0, 1.2)))
    tissue[inside & (fissures > 0)] = T_CB
    tissue[inside & (to_csf > cortex)] = T_CB_CORE  # the white matter: the arbor vitae
    tissue[brainstem < 0] = T_BS
    return partial_volume(tissue, to_csf, T_CB, brain.voxel_mm)
