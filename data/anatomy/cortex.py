"""The cerebrum's shape and the cortex's outside: the hull, the interhemispheric and Sylvian
fissures, the basal cisterns and the sulci (v1: random folds; v2: named primary sulci below random
secondary and tertiary folds). The cortex is a ribbon of constant thickness around all of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..synth_fields import F32, cleft_sdf, ellipsoid_sdf, mirror_box, tube_sdf

if TYPE_CHECKING:
    from .brain import Brain

# ---- template geometry (40-week brain, mm) ----------------------------------------------------
HULL = (38.0, 48.0, 36.0, 27.0)  # cerebrum half-axes: x, y, z superior, z inferior
SULCUS_SPHERE_MM = 45.0  # radius on which sulcal patterns are drawn
TENTORIUM = (-2.0, 0.3, -14.0, 0.3)  # z = a + b (y - c) - d |x| behind y = c: the cerebrum sits above
BRAINSTEM_PATH = (((0.0, -9.0, -2.0), (0.0, -9.0, -12.0), (0.0, -5.0, -24.0), (0.0, -9.0, -36.0),
                   (0.0, -13.0, -50.0), (0.0, -15.0, -130.0)),
                  ((6.0, 6.0), (7.0, 7.0), (10.0, 10.0), (7.0, 7.0), (5.5, 5.5), (5.0, 5.0)))
CISTERN_MM = 2.5  # basal cisterns: CSF this far around the brainstem below the diencephalon
CORE = (1.0, 27.0, 15.0)  # midline oval (y centre, y and z half-axes) where the hemispheres join (corpus callosum, diencephalon)

# ---- anatomy v2: named primary sulci ----------------------------------------------------------
# name, sheet s(x, y, z) = 0 in template mm (x = |x|), where it runs, onset (weeks), depth at 40 weeks
# (mm), medial (depth from the interhemispheric fissure) or lateral (from the hull)
_ramp = lambda v, lo, width: np.clip((v - F32(lo)) / F32(width), 0, 1)
NAMED_SULCI = (
    ("central", lambda x, y, z: y + F32(0.5) * z - F32(8.0), lambda x, y, z: _ramp(z, 10, 6), 26.0, 9.0, False),
    ("superior frontal", lambda x, y, z: x - F32(16.0),
     lambda x, y, z: _ramp(y, 10, 6) * _ramp(z, 8, 6) * _ramp(-y, -40, 6), 30.0, 7.0, False),
    ("intraparietal", lambda x, y, z: x - F32(20.0) + F32(0.15) * (y + F32(20.0)),
     lambda x, y, z: _ramp(-y, 10, 6) * _ramp(y, -42, 6) * _ramp(z, 10, 6), 31.0, 7.0, False),
    ("superior temporal", lambda x, y, z: z + F32(16.0) + F32(0.3) * y,
     lambda x, y, z: _ramp(x, 22, 5) * _ramp(-np.abs(y + F32(8.0)), -30, 6), 29.0, 8.0, False),
    ("calcarine", lambda x, y, z: z - F32(2.0) - F32(0.25) * (y + F32(30.0)), lambda x, y, z: _ramp(-y, 26, 5),
     25.0, 8.0, True),
    ("parieto-occipital", lambda x, y, z: y + F32(28.0) + F32(0.6) * (z - F32(2.0)),
     lambda x, y, z: _ramp(z, 2, 5), 25.0, 8.0, True),
    ("cingulate", lambda x, y, z: np.sqrt(((y - F32(CORE[0])) / F32(CORE[1])) ** 2 + (z / F32(CORE[2])) ** 2) - F32(1.45),
     lambda x, y, z: _ramp(z, 4, 5) * _ramp(y, -22, 6), 28.0, 6.0, True),
)
RANDOM_SULCI_V2 = (("s1", 27.0, 13.0, 7.0), ("s2", 31.0, 9.0, 6.0), ("s3", 35.0, 5.0, 4.0))  # onset, weeks to full depth, depth (mm)


def hull_radii(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple:
    """Cerebrum half-axes at each point: wider posteriorly, flatter inferiorly except where the
    temporal lobes hang down (lateral, middle third)."""
    rx = F32(HULL[0]) * (1 - F32(0.08 / HULL[1]) * y)
    lateral = np.clip((np.abs(x) - F32(8.0)) / F32(16.0), 0, 1)
    temporal = F32(7.0) * lateral * np.exp(-(((y - F32(2.0)) / F32(24.0)) ** 2))
    rz = np.where(z > 0, F32(HULL[2]), F32(HULL[3] - 5.0) + temporal)
    return rx, F32(HULL[1]), rz


def cerebral_fields(brain: Brain, x, y, z, sl: slice) -> tuple[np.ndarray, ...]:
    """Signed distances (scanner mm) that shape the cerebrum: the hull, the depth below it, the
    distance to the nearest "outside" (hull, fissures, cisterns, sulci) that the cortex lines,
    the cisterns and brainstem, and a continuous distance to the interhemispheric fissure."""
    g, a, sc = brain.growth, brain.anat, F32(brain.scale)
    shape, ax = x.shape, np.abs(x)
    rx, ry, rz = hull_radii(x, y, z)
    hull_sdf = ellipsoid_sdf(x, y, z, (0, 0, 0), (rx, ry, rz)) * sc
    tent = F32(TENTORIUM[0]) + F32(TENTORIUM[1]) * (y - F32(TENTORIUM[2])) - F32(TENTORIUM[3]) * ax
    tent = tent - np.maximum(y - F32(TENTORIUM[2]), 0) * F32(3.0 + TENTORIUM[1])  # falls away in front
    tentorium = (z - tent) * sc
    depth = np.minimum(-hull_sdf, tentorium)  # > 0 inside the cerebrum
    core_r = np.sqrt(((y - F32(CORE[0])) / F32(CORE[1])) ** 2 + (z / F32(CORE[2])) ** 2)
    core = core_r < 1
    fissure_half = F32(1.0 + 0.6 * np.clip(1 - g.maturity, 0, 1))
    slab = np.abs(x - brain.fine("mid", sl)) * sc - fissure_half
    fissure = np.where(core, np.inf, slab).astype(F32)  # no cortex where the hemispheres join
    below_fissure = np.maximum(slab, (1 - core_r) * F32(CORE[2]) * sc)  # continuous: keeps ventricles off
    brainstem = np.full(shape, np.inf, F32)
    cistern = np.full(shape, np.inf, F32)
    idx = mirror_box(ax, y, z, (0, -45, -200), (25, 15, 12))
    if idx.size:
        nodes, radii = BRAINSTEM_PATH
        pts = [c.ravel()[idx] for c in (x, y, z)]
        brainstem.ravel()[idx] = tube_sdf(*pts, nodes, np.asarray(radii) * a.brainstem) * sc
        cistern.ravel()[idx] = tube_sdf(*pts, nodes[1:], np.asarray(radii[1:]) * a.brainstem + CISTERN_MM) * sc
    x_insula = F32(28.0)
    opening = F32(0.8) + F32(g.sylvian_opening) * np.clip((ax - x_insula) / F32(HULL[0] - 28.0), 0, None)
    sylvian = np.maximum.reduce([np.abs(z + 4 + F32(0.3) * y) - opening, x_insula - ax, np.abs(y - 8) - 32]) * sc
    outside = np.minimum.reduce([depth, fissure, np.where(core, np.inf, cistern), sylvian])
    if brain.v2:
        sulci_v2(brain, outside, below_fissure, depth, fissure, sl)
        return hull_sdf, depth, outside, cistern, brainstem, below_fissure
    cleft, folding = g.cleft_mm, F32(a.folding)
    for s, gs, m, max_depth in (("s1", "g1", "m1", g.primary_depth_mm), ("s2", "g2", "m2", g.secondary_depth_mm)):
        if max_depth <= 0:
            continue
        dist = np.abs(brain.fine(s, sl)) / np.maximum(brain.fine(gs, sl), F32(1e-3))
        sulcus_depth = F32(max_depth) * folding * np.clip(0.75 + 0.35 * brain.fine(m, sl), 0, 1)
        np.minimum(outside, cleft_sdf(dist, depth, sulcus_depth, cleft), out=outside)
    if g.primary_depth_mm > 0:  # medial sulci: sheets across the fissure walls, none in the core
        dist = np.abs(brain.fine("sm", sl)) / np.maximum(brain.fine("gm", sl), F32(1e-3))
        medial_depth = F32(0.5 * g.primary_depth_mm) * folding
        np.minimum(outside, cleft_sdf(dist, fissure, medial_depth, cleft), out=outside)
        np.minimum(below_fissure, cleft_sdf(dist, below_fissure, medial_depth, cleft), out=below_fissure)
    return hull_sdf, depth, outside, cistern, brainstem, below_fissure


def sulci_v2(brain: Brain, outside, below_fissure, depth, fissure, sl: slice) -> None:
    """Carve the v2 sulci into ``outside`` (and the medial ones into ``below_fissure``), in place:
    named primary sulci, then random primary, secondary and tertiary folds, each deepening
    linearly from its onset age."""
    g, a = brain.growth, brain.anat
    cleft = 0.5 + 0.5 * float(np.clip(1 - g.maturity, 0, 1))
    folding = F32(a.folding * brain.folding)
    if folding <= 0:
        return
    for i, ((_, _, _, onset, depth_40, medial), (_, factor)) in enumerate(zip(NAMED_SULCI, a.named)):
        grown = float(np.clip((brain.fold_age - onset) / (40.0 - onset), 0, 1.15))
        if grown <= 0:
            continue
        dist = np.abs(brain.fine(f"n{i}", sl))
        sulcus_depth = F32(depth_40 * grown * factor) * folding * brain.fine(f"w{i}", sl)
        if medial:
            np.minimum(outside, cleft_sdf(dist, fissure, sulcus_depth, cleft), out=outside)
            np.minimum(below_fissure, cleft_sdf(dist, below_fissure, sulcus_depth, cleft), out=below_fissure)
        else:
            np.minimum(outside, cleft_sdf(dist, depth, sulcus_depth, cleft), out=outside)
    for (s, onset, weeks, max_depth), m in zip(RANDOM_SULCI_V2, ("m1", "m2", "m3")):
        grown = float(np.clip((brain.fold_age - onset) / weeks, 0, 1.15))
        if grown <= 0:
            continue
        dist = np.abs(brain.fine(s, sl)) / np.maximum(brain.fine("g" + s[1:], sl), F32(1e-3))
        sulcus_depth = F32(max_depth * grown) * folding * np.clip(0.7 + 0.4 * brain.fine(m, sl), 0, 1.2)
        np.minimum(outside, cleft_sdf(dist, depth, sulcus_depth, cleft), out=outside)
    grown = float(np.clip((brain.fold_age - 28.0) / 12.0, 0, 1.15))
    if grown > 0:  # random medial folds: sheets across the fissure walls, none in the core
        dist = np.abs(brain.fine("sm", sl)) / np.maximum(brain.fine("gm", sl), F32(1e-3))
        medial_depth = F32(4.0 * grown) * folding
        np.minimum(outside, cleft_sdf(dist, fissure, medial_depth, cleft), out=outside)
        np.minimum(below_fissure, cleft_sdf(dist, below_fissure, medial_depth, cleft), out=below_fissure)
