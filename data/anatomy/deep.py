"""The deep structures, drawn on the right and mirrored: deep grey nuclei (v1: basal ganglia and
thalamus; v2: caudate, lentiform nucleus with its pallidum and thalamus, split by the internal
capsule), hippocampi and amygdalae, and the ventricles."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..synth_fields import F32, ellipsoid_sdf, mirror_box, tube_sdf
from .tissues import (AIR, T_BASAL_GANGLIA, T_BG, T_CSF, T_HIPPO, T_PALLIDUM, T_PLIC, T_THAL, T_VENT,
                      T_WM)

if TYPE_CHECKING:
    from .brain import Brain

# ---- template geometry (40-week brain, right side, mm) ---------------------------------------
THALAMUS = ((7.0, -7.0, 2.0), (6.5, 11.0, 7.5))
LENTIFORM = ((18.5, 3.0, -1.0), (4.5, 11.0, 8.0))
CAUDATE_HEAD = ((10.5, 14.0, 7.0), (4.5, 7.0, 6.5))
CAUDATE_BODY = (((11.0, 12.0, 10.0), (12.0, -4.0, 12.5), (14.0, -16.0, 11.5)), ((2.5, 2.5), (2.0, 2.0), (1.3, 1.3)))
PLIC = (((14.0, 1.0, 3.0), (15.0, -10.0, -5.0)), ((1.6, 1.6), (1.6, 1.6)))
VENTRICLE = (((6.0, 24.0, 6.0), (5.5, 12.0, 10.0), (7.5, -6.0, 11.5), (13.0, -20.0, 8.0), (14.0, -32.0, 4.0)),
             ((2.6, 4.0), (3.2, 3.6), (3.8, 3.0), (5.0, 4.5), (2.4, 2.4)))
TEMPORAL_HORN = (((13.0, -20.0, 8.0), (20.0, -16.0, -4.0), (21.0, -4.0, -11.0)),
                 ((4.0, 4.0), (2.4, 2.4), (1.8, 1.8)))
THIRD_VENTRICLE = ((0.0, -3.0, 0.0), (1.2, 9.0, 6.0))
HIPPOCAMPUS = (((17.0, 4.0, -16.0), (19.0, -8.0, -12.0), (18.0, -19.0, -6.0), (14.0, -25.0, 2.0)),
               ((4.0, 3.5), (3.5, 3.0), (2.5, 2.5), (1.8, 1.8)))
AMYGDALA = ((18.0, 10.0, -16.0), (5.5, 5.5, 5.0))
# ---- anatomy v2: deep grey nuclei (right side, template mm) ---------------------------------------
CAUDATE_HEAD_V2 = ((9.5, 13.0, 7.0), (4.0, 6.5, 6.0))  # bulges into the frontal horn
CAUDATE_BODY_V2 = (((9.8, 9.0, 11.5), (11.5, -4.0, 14.0), (13.5, -16.0, 13.0), (15.0, -24.0, 10.0)),
                   ((2.6, 2.2), (2.0, 1.8), (1.4, 1.3), (0.9, 0.9)))  # along the ventricle's roof, tapering
LENTIFORM_V2 = ((19.5, 1.0, 0.0), (4.2, 10.0, 7.0))  # putamen + pallidum, lateral to the capsule
PALLIDUM_V2 = ((16.8, 0.0, -1.0), (2.2, 5.5, 4.5))  # the medial part of the lentiform nucleus
THALAMUS_V2 = ((7.5, -9.0, 3.0), (5.5, 9.5, 6.5))  # medial and posterior, beside the third ventricle
ALIC_V2 = (((16.5, 18.0, 3.0), (12.8, 4.0, 2.0)), ((1.8, 9.0), (1.8, 9.0)))  # anterior limb (unmyelinated)
PLIC_V2 = (((12.8, 4.0, 2.0), (16.2, -8.0, 1.0), (19.5, -17.0, -1.0)), ((1.8, 9.0),) * 3)  # genu + posterior limb


def deep(brain: Brain, tissue: np.ndarray, x, y, z, outside: np.ndarray, cortex_mm: float) -> None:
    """Deep grey matter, hippocampi/amygdalae and ventricles (in place), bilateral by mirroring.
    ``outside``: distance (mm) to the nearest CSF outside the brain tissue."""
    a, g = brain.anat, brain.growth
    idx = mirror_box(np.abs(x), y, z, (0, -40, -26), (30, 32, 22))
    if not idx.size:
        return
    ax, py, pz = np.abs(x.ravel()[idx]), y.ravel()[idx], z.ravel()[idx]
    flat = tissue.reshape(-1)
    dgm = a.deep_grey
    scaled = lambda spec, f: (spec[0], tuple(r * f for r in spec[1]))
    tube = lambda spec, f: tube_sdf(ax, py, pz, spec[0], np.asarray(spec[1]) * f)
    hippo = np.minimum(tube(HIPPOCAMPUS, a.hippocampi), ellipsoid_sdf(ax, py, pz, *scaled(AMYGDALA, a.hippocampi)))
    flat[idx[hippo < 0]] = T_HIPPO
    basal = np.minimum.reduce([ellipsoid_sdf(ax, py, pz, *scaled(LENTIFORM, dgm)),
                               ellipsoid_sdf(ax, py, pz, *scaled(CAUDATE_HEAD, dgm)), tube(CAUDATE_BODY, dgm)])
    flat[idx[basal < 0]] = T_BASAL_GANGLIA
    flat[idx[ellipsoid_sdf(ax, py, pz, *scaled(THALAMUS, dgm)) < 0]] = T_THAL
    plic = (tube(PLIC, 1.0) < 0) & (flat[idx] == T_WM)
    flat[idx[plic]] = T_PLIC
    # ventricles stay at least a voxel deep inside white and deep grey matter
    v = a.ventricles * g.ventricles
    vent = np.minimum.reduce([tube(VENTRICLE, v), tube(TEMPORAL_HORN, v),
                              ellipsoid_sdf(ax, py, pz, *THIRD_VENTRICLE)])
    deep_enough = outside.ravel()[idx] > cortex_mm + F32(brain.voxel_mm)
    flat[idx[(vent < 0) & deep_enough]] = T_VENT


def deep_v2(brain: Brain, tissue: np.ndarray, x, y, z, outside: np.ndarray, cortex_mm: float) -> None:
    """v2 deep structures (in place): hippocampi/amygdalae, caudate, lentiform nucleus with its
    pallidum and thalamus, split by the internal capsule, then the ventricles."""
    a, g = brain.anat, brain.growth
    idx = mirror_box(np.abs(x), y, z, (0, -40, -26), (30, 32, 22))
    if not idx.size:
        return
    ax, py, pz = np.abs(x.ravel()[idx]), y.ravel()[idx], z.ravel()[idx]
    flat = tissue.reshape(-1)
    scaled = lambda spec, f: (spec[0], tuple(r * f for r in spec[1]))
    tube = lambda spec, f: tube_sdf(ax, py, pz, spec[0], np.asarray(spec[1]) * f)
    ellipsoid = lambda spec, f: ellipsoid_sdf(ax, py, pz, *scaled(spec, f))
    hippo = np.minimum(tube(HIPPOCAMPUS, a.hippocampi), ellipsoid(AMYGDALA, a.hippocampi))
    flat[idx[hippo < 0]] = T_HIPPO
    caudate, lentiform, thalamus = (a.deep_grey * f for f in a.nuclei)
    clear = outside.ravel()[idx] > F32(brain.voxel_mm)  # the nuclei stay a voxel away from the cisterns
    flat[idx[clear & (np.minimum(ellipsoid(CAUDATE_HEAD_V2, caudate), tube(CAUDATE_BODY_V2, caudate)) < 0)]] = T_BASAL_GANGLIA
    inside_lentiform = clear & (ellipsoid(LENTIFORM_V2, lentiform) < 0)
    flat[idx[inside_lentiform]] = T_BASAL_GANGLIA
    flat[idx[inside_lentiform & (ellipsoid(PALLIDUM_V2, lentiform) < 0)]] = T_PALLIDUM
    flat[idx[clear & (ellipsoid(THALAMUS_V2, thalamus) < 0)]] = T_THAL
    here = flat[idx]
    cuttable = np.isin(here, (T_WM, T_BASAL_GANGLIA, T_PALLIDUM, T_THAL))
    flat[idx[cuttable & (tube(ALIC_V2, 1.0) < 0)]] = T_WM
    flat[idx[cuttable & (tube(PLIC_V2, 1.0) < 0)]] = T_PLIC
    v = a.ventricles * g.ventricles
    vent = np.minimum.reduce([tube(VENTRICLE, v), tube(TEMPORAL_HORN, v),
                              ellipsoid_sdf(ax, py, pz, *THIRD_VENTRICLE)])
    deep_enough = outside.ravel()[idx] > cortex_mm + F32(brain.voxel_mm)
    walls = np.isin(flat[idx], (T_BASAL_GANGLIA, T_PALLIDUM, T_THAL))  # the nuclei shape the ventricles
    flat[idx[(vent < 0) & deep_enough & ~walls]] = T_VENT


def seal_nuclei(tissue: np.ndarray) -> None:
    """v2, on the whole volume (in place): deep grey voxels with a face neighbour of CSF or outside
    the brain become white matter, so the nuclei always lie inside the cerebrum (the signed
    distances of the sulci are approximate far from their sheets)."""
    from scipy import ndimage

    near_csf = ndimage.binary_dilation(np.isin(tissue, (AIR, T_CSF, T_BG)))
    tissue[near_csf & np.isin(tissue, (T_BASAL_GANGLIA, T_PALLIDUM, T_THAL))] = T_WM
