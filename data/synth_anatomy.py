"""Procedural neonatal brain anatomy: drawem9 labels and fine tissue classes on a voxel grid.

A brain is drawn in *template* millimetres (a 40-week brain, origin at the cerebrum centre, x
left->right, y posterior->anterior, z inferior->superior; bilateral structures are given for the
right side and mirrored) and mapped to the scanner grid by age-dependent growth, the subject's
smooth random deformation and asymmetry, and the session's small head pose. Label geometry comes
from approximate signed distances in millimetres, so a subject looks the same at any grid.

The cortex is a ribbon of constant thickness around everything that is "outside" the cerebral
tissue: the hull, the interhemispheric and Sylvian fissures, the basal cisterns and the sulci.
Sulci are the zero lines of smooth random fields on the hull (``|S| / |grad S|`` is the distance
to them); their depth grows with age, so preterm brains are smooth and term brains folded.

Two anatomies: ``v1``, the first generator, frozen byte for byte (the cohort of the committed
experiment report), and ``v2`` (the default), which adds anatomy that real scans have and the
first one lacked: deep grey nuclei split by the internal capsule (caudate head and body along the lateral
ventricle, the lentiform nucleus with its pallidum lateral to the capsule, the thalamus medial and
posterior to it); named primary sulci (central, superior frontal, intraparietal, superior temporal,
calcarine, parieto-occipital, cingulate) that appear at their usual ages, below random secondary
and tertiary folds, with an individual timing of gyrification and CSF in the sulci (partial
volume where a cleft is thinner than a voxel); and a cerebellum of two hemispheres and a vermis
whose lobules, of varying depth and subdivided towards term, have a cortex around a white-matter
core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .synth_fields import F32, WaveField, ellipsoid_sdf, linear_taps, tube_sdf, upsample

# ---- drawem9 labels and the finer tissue classes that carry contrast --------------------------
CSF, CGM, WM, BACKGROUND, VENTRICLES, CEREBELLUM, DGM, BRAINSTEM, HIPPOCAMPI = range(1, 10)
ANATOMIES = ("v1", "v2")
N_TISSUES_V1, N_TISSUES = 15, 16
AIR, T_CSF, T_CGM, T_WM, T_BG, T_VENT, T_CB, T_THAL, T_BS, T_HIPPO = range(10)
T_BASAL_GANGLIA, T_PLIC, T_CB_CORE, T_SKULL, T_SCALP = range(10, 15)
T_PALLIDUM = 15  # v2 only
LABEL_OF_TISSUE = np.array([0, CSF, CGM, WM, BACKGROUND, VENTRICLES, CEREBELLUM, DGM, BRAINSTEM,
                            HIPPOCAMPI, DGM, WM, CEREBELLUM, 0, 0, DGM], np.uint8)

# ---- template geometry (40-week brain, mm) ----------------------------------------------------
HULL = (38.0, 48.0, 36.0, 27.0)  # cerebrum half-axes: x, y, z superior, z inferior
ORIGIN_Z_MM = 6.0  # the template origin sits this far above the volume centre (times scale)
SULCUS_SPHERE_MM = 45.0  # radius on which sulcal patterns are drawn
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
TENTORIUM = (-2.0, 0.3, -14.0, 0.3)  # z = a + b (y - c) - d |x| behind y = c: the cerebrum sits above
BRAINSTEM_PATH = (((0.0, -9.0, -2.0), (0.0, -9.0, -12.0), (0.0, -5.0, -24.0), (0.0, -9.0, -36.0),
                   (0.0, -13.0, -50.0), (0.0, -15.0, -130.0)),
                  ((6.0, 6.0), (7.0, 7.0), (10.0, 10.0), (7.0, 7.0), (5.5, 5.5), (5.0, 5.0)))
CEREBELLUM_RADII = (25.0, 16.0, 13.5)  # at 40 weeks; it grows faster than the cerebrum
CISTERN_MM = 2.5  # basal cisterns: CSF this far around the brainstem below the diencephalon
CORE = (1.0, 27.0, 15.0)  # midline oval (y centre, y and z half-axes) where the hemispheres join (corpus callosum, diencephalon)

# ---- anatomy v2: deep grey nuclei (right side, template mm) ---------------------------------------
CAUDATE_HEAD_V2 = ((9.5, 13.0, 7.0), (4.0, 6.5, 6.0))  # bulges into the frontal horn
CAUDATE_BODY_V2 = (((9.8, 9.0, 11.5), (11.5, -4.0, 14.0), (13.5, -16.0, 13.0), (15.0, -24.0, 10.0)),
                   ((2.6, 2.2), (2.0, 1.8), (1.4, 1.3), (0.9, 0.9)))  # along the ventricle's roof, tapering
LENTIFORM_V2 = ((19.5, 1.0, 0.0), (4.2, 10.0, 7.0))  # putamen + pallidum, lateral to the capsule
PALLIDUM_V2 = ((16.8, 0.0, -1.0), (2.2, 5.5, 4.5))  # the medial part of the lentiform nucleus
THALAMUS_V2 = ((7.5, -9.0, 3.0), (5.5, 9.5, 6.5))  # medial and posterior, beside the third ventricle
ALIC_V2 = (((16.5, 18.0, 3.0), (12.8, 4.0, 2.0)), ((1.8, 9.0), (1.8, 9.0)))  # anterior limb (unmyelinated)
PLIC_V2 = (((12.8, 4.0, 2.0), (16.2, -8.0, 1.0), (19.5, -17.0, -1.0)), ((1.8, 9.0),) * 3)  # genu + posterior limb
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


@dataclass(frozen=True)
class Growth:
    """Everything that depends on age only (weeks post-menstrual age)."""

    age: float

    @property
    def maturity(self) -> float:  # 0 at 28 weeks, 1 at 40
        return (self.age - 28.0) / 12.0

    @property
    def scale(self) -> float:  # linear size vs 40 weeks; brain volume grows ~4.5 %/week
        return float((1.0 + 0.045 * (self.age - 40.0)) ** (1 / 3))

    @property
    def cerebellum(self) -> float:  # cerebellum size relative to the cerebrum scale
        return 0.8 + 0.2 * float(np.clip(self.maturity, 0, 1.3))

    @property
    def primary_depth_mm(self) -> float:
        return 9.0 * float(np.clip((self.age - 27.0) / 13.0, 0, 1.1))

    @property
    def secondary_depth_mm(self) -> float:
        return 7.0 * float(np.clip((self.age - 31.0) / 9.0, 0, 1.15))

    @property
    def cleft_mm(self) -> float:  # half-width of the CSF in a sulcus
        return 0.5 + 0.5 * float(np.clip(1 - self.maturity, 0, 1))

    @property
    def sylvian_opening(self) -> float:  # extra half-width (template mm) of the Sylvian fissure at the surface
        return 1.0 + 7.0 * float(np.clip(1 - self.maturity, 0, 1))

    @property
    def ventricles(self) -> float:
        return 1.0 + 0.4 * float(np.clip(1 - self.maturity, 0, 1))

    @property
    def csf_mm(self) -> float:  # extra-cerebral CSF thickness
        return 2.5 + 1.5 * float(np.clip(1 - self.maturity, 0, 1))

    @property
    def cortex_mm(self) -> float:
        return 2.7 + 0.5 * float(np.clip(self.maturity, 0, 1.2))

    @property
    def myelination(self) -> float:  # 0 before 34 weeks, 1 at 42
        return float(np.clip((self.age - 34.0) / 8.0, 0, 1.2))


@dataclass(frozen=True)
class Anatomy:
    """What makes one brain itself, shared by all its sessions (drawn once per subject)."""

    size: float
    asymmetry: float  # relative width difference of the hemispheres
    petalia_mm: float  # forward shift of the right hemisphere
    deformation: tuple[WaveField, WaveField, WaveField]
    deformation_mm: float
    fissure: WaveField  # midline wiggle, 2D in (y, z)
    primary: WaveField
    secondary: WaveField
    medial: WaveField  # 2D in (y, z)
    primary_depth: WaveField
    secondary_depth: WaveField
    wm_texture: WaveField
    folding: float  # individual gyrification factor
    folia_phase: float  # offset of the cerebellar fissures, in fissure spacings
    ventricles: float
    deep_grey: float
    hippocampi: float
    cerebellum: float
    brainstem: float
    cortex_mm: float  # offset to the age's cortical thickness
    csf: float
    # anatomy v2 only (drawn after the v1 fields, so v1 subjects stay what they were)
    version: str = "v1"
    tertiary: WaveField | None = None
    named_wiggle: WaveField | None = None  # bends the named sulci
    named: tuple = ()  # per named sulcus: (shift mm, depth factor)
    gyrification_weeks: float = 0.0  # individual timing of the folding, added to the age
    nuclei: tuple = (1.0, 1.0, 1.0)  # size of caudate, lentiform, thalamus
    lobules: tuple = ()  # depth factors of the cerebellar fissures

    @classmethod
    def random(cls, rng: np.random.Generator, version: str = "v1") -> Anatomy:
        lognormal = lambda s: float(np.exp(rng.normal(0.0, s)))
        base = cls._random_v1(rng, lognormal)
        if version == "v1":
            return base
        return dataclasses.replace(
            base, version=version, tertiary=WaveField.random(rng, 32, 16.0),
            named_wiggle=WaveField.random(rng, 8, 40.0),
            named=tuple((float(rng.normal(0, 2.0)), float(np.clip(lognormal(0.15), 0.6, 1.5))) for _ in NAMED_SULCI),
            gyrification_weeks=float(np.clip(rng.normal(0, 1.0), -2, 2)),
            nuclei=tuple(float(np.clip(lognormal(0.07), 0.85, 1.15)) for _ in range(3)),
            lobules=tuple(float(rng.uniform(0.55, 1.35)) for _ in range(24)))

    @classmethod
    def _random_v1(cls, rng: np.random.Generator, lognormal) -> Anatomy:
        return cls(
            size=lognormal(0.05), asymmetry=float(rng.normal(0, 0.02)), petalia_mm=float(rng.normal(1.5, 1.0)),
            deformation=tuple(WaveField.random(rng, 6, 80.0) for _ in range(3)), deformation_mm=float(rng.uniform(0.8, 1.8)),
            fissure=WaveField.random(rng, 4, 60.0, dims=2),
            primary=WaveField.random(rng, 16, 38.0), secondary=WaveField.random(rng, 24, 24.0),
            medial=WaveField.random(rng, 12, 26.0, dims=2),
            primary_depth=WaveField.random(rng, 6, 60.0), secondary_depth=WaveField.random(rng, 6, 45.0),
            wm_texture=WaveField.random(rng, 8, 30.0),
            folding=float(np.clip(lognormal(0.12), 0.75, 1.3)), folia_phase=float(rng.uniform(0, 1)), ventricles=lognormal(0.2), deep_grey=lognormal(0.06),
            hippocampi=lognormal(0.08), cerebellum=lognormal(0.06), brainstem=lognormal(0.06),
            cortex_mm=float(rng.normal(0, 0.15)), csf=lognormal(0.25),
        )


@dataclass(frozen=True)
class Pose:
    """The session's head position: a small rotation (template -> scanner) and shift (mm)."""

    rotation: np.ndarray  # (3, 3)
    shift_mm: np.ndarray  # (3,)

    @classmethod
    def random(cls, rng: np.random.Generator, max_degrees: float = 4.0) -> Pose:
        a, b, c = np.deg2rad(np.clip(rng.normal(0, max_degrees / 2, 3), -max_degrees, max_degrees))
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        return cls(rotation=rz @ ry @ rx, shift_mm=rng.normal(0, 1.5, 3))


def _hull_radii(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple:
    """Cerebrum half-axes at each point: wider posteriorly, flatter inferiorly except where the
    temporal lobes hang down (lateral, middle third)."""
    rx = F32(HULL[0]) * (1 - F32(0.08 / HULL[1]) * y)
    lateral = np.clip((np.abs(x) - F32(8.0)) / F32(16.0), 0, 1)
    temporal = F32(7.0) * lateral * np.exp(-(((y - F32(2.0)) / F32(24.0)) ** 2))
    rz = np.where(z > 0, F32(HULL[2]), F32(HULL[3] - 5.0) + temporal)
    return rx, F32(HULL[1]), rz


def _cleft(dist: np.ndarray, depth_from_surface: np.ndarray, depth: np.ndarray, half_width: float) -> np.ndarray:
    """Signed distance (mm) to a sulcal cleft: a sheet of half-width ``half_width`` at lateral
    distance ``dist`` that runs from the surface down to ``depth``."""
    lateral = dist - F32(half_width)
    below = depth_from_surface - depth
    deep = np.sqrt(np.maximum(lateral, 0) ** 2 + np.maximum(below, 0) ** 2)
    return np.where(below <= 0, lateral, deep)


def _mirror_box(ax: np.ndarray, y: np.ndarray, z: np.ndarray, lo, hi) -> np.ndarray:
    """Flat indices of the points whose (|x|, y, z) lie in the template box [lo, hi]."""
    inside = (ax >= lo[0]) & (ax <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
    return np.flatnonzero(inside)


class Brain:
    """One session of one subject on a voxel grid; :meth:`chunk` draws a slab of it."""

    def __init__(self, anatomy: Anatomy, age: float, pose: Pose, grid: int, fov_mm: float, folding: float = 1.0):
        self.anat, self.growth, self.pose = anatomy, Growth(age), pose
        self.v2 = anatomy.version == "v2"
        self.folding = folding  # v2: the cohort's sulcal depth factor
        self.fold_age = age + anatomy.gyrification_weeks  # v2: the age that sets the sulcal depths
        self.grid, self.fov = grid, fov_mm
        self.voxel_mm = fov_mm / grid
        self.scale = self.growth.scale * anatomy.size
        self.axis = ((np.arange(grid) - (grid - 1) / 2) * self.voxel_mm).astype(F32)
        n_coarse = max(16, round(fov_mm / 2.0))  # smooth fields live on a ~2 mm grid
        coarse_axis = ((np.arange(n_coarse) - (n_coarse - 1) / 2) * (fov_mm / n_coarse)).astype(F32)
        self.taps = None if n_coarse == grid else linear_taps(self.axis, coarse_axis)
        self.coarse = self._coarse_fields(coarse_axis)

    # ---- coordinates ------------------------------------------------------------------------
    def _affine_template(self, p0: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> list[np.ndarray]:
        """Scanner mm -> undeformed template mm (inverse pose, inverse growth)."""
        origin = np.array([0.0, 0.0, ORIGIN_Z_MM * self.scale]) + self.pose.shift_mm
        q = (p0 - F32(origin[0]), p1 - F32(origin[1]), p2 - F32(origin[2]))
        r = self.pose.rotation
        return [sum(F32(r[j, i] / self.scale) * q[j] for j in range(3)) for i in range(3)]

    def _warp(self, t: list[np.ndarray], displacement: list[np.ndarray]) -> list[np.ndarray]:
        """Add the subject's deformation, then hemisphere asymmetry and petalia."""
        x, y, z = (a + d for a, d in zip(t, displacement))
        side = np.tanh(x / F32(8.0))
        x = x * (1 + F32(self.anat.asymmetry) * side)
        y = y - F32(self.anat.petalia_mm) * side
        return [x, y, z]

    def _coarse_fields(self, axis: np.ndarray) -> dict[str, np.ndarray]:
        """Smooth fields on the coarse grid: deformation, sulcal patterns and their gradients."""
        a = self.anat
        t0 = self._affine_template(axis[:, None, None], axis[None, :, None], axis[None, None, :])
        t0 = [np.broadcast_to(c, (len(axis),) * 3) for c in t0]
        fields = {f"d{i}": F32(a.deformation_mm) * w(*t0) for i, w in enumerate(a.deformation)}
        x, y, z = self._warp(t0, [fields["d0"], fields["d1"], fields["d2"]])
        rx, ry, rz = _hull_radii(x, y, z)
        u = [x / rx, y / ry, z / rz]
        norm = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + F32(1e-6)
        q = [F32(SULCUS_SPHERE_MM) * c / norm for c in u]
        spacing = float(axis[1] - axis[0])
        if self.v2:
            fields.update(self._coarse_v2(x, y, z, q, norm, spacing))
            return fields
        for name, pattern, coords in (("s1", a.primary, q), ("s2", a.secondary, q), ("sm", a.medial, (y, z))):
            s = pattern(*coords)
            grad = np.gradient(s, spacing)
            fields[name] = s
            fields["g" + name[1:]] = np.sqrt(sum(g * g for g in grad)).astype(F32)
        fields["m1"] = a.primary_depth(*q)
        fields["m2"] = a.secondary_depth(*q)
        fields["wm"] = a.wm_texture(x, y, z)
        fields["mid"] = F32(1.5) * a.fissure(y, z)
        return fields

    def _coarse_v2(self, x, y, z, q, norm, spacing: float) -> dict[str, np.ndarray]:
        """The v2 coarse fields. The sulcal patterns matter only inside the cerebral hull, so they
        are evaluated there alone (a fifth of the grid): outside it they are constant."""
        a = self.anat
        band = np.flatnonzero(norm.ravel() < 1.15)

        def on_band(field, coords, fill: float) -> np.ndarray:
            out = np.full(norm.shape, F32(fill), F32)
            out.ravel()[band] = field(*(c.ravel()[band] for c in coords))
            return out

        fields = {}
        for name, pattern, coords in (("s1", a.primary, q), ("s2", a.secondary, q), ("s3", a.tertiary, q),
                                      ("sm", a.medial, (y, z))):
            s = on_band(pattern, coords, 1.0)
            fields[name] = s
            fields["g" + name[1:]] = np.sqrt(sum(g * g for g in np.gradient(s, spacing))).astype(F32)
        fields["m1"] = on_band(a.primary_depth, q, 0.0)
        fields["m2"] = on_band(a.secondary_depth, q, 0.0)
        fields["m3"] = -fields["m1"]  # tertiary folds are deepest where the primary ones are shallow
        fields["wm"] = on_band(a.wm_texture, (x, y, z), 0.0)
        fields["mid"] = F32(1.5) * a.fissure(y, z)
        wiggle = F32(2.0) * on_band(a.named_wiggle, (x, y, z), 0.0)
        ax = np.abs(x)
        for i, ((_, sheet, where, *_), (shift, _)) in enumerate(zip(NAMED_SULCI, a.named)):
            s = sheet(ax, y, z) + wiggle + F32(shift)
            grad = np.sqrt(sum(g * g for g in np.gradient(s, spacing)))
            fields[f"n{i}"] = (s / np.maximum(grad, F32(1e-3))).astype(F32)  # signed distance (mm)
            fields[f"w{i}"] = where(ax, y, z).astype(F32)
        return fields

    def _fine(self, name: str, sl: slice) -> np.ndarray:
        field = self.coarse[name]
        if self.taps is None:
            return field[sl]
        lo, frac = self.taps
        return upsample(field, (lo[sl], frac[sl]), self.taps, self.taps)

    # ---- drawing ----------------------------------------------------------------------------
    def chunk(self, sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Tissue classes (uint8, see ``LABEL_OF_TISSUE``) and an additive texture (float32) for
        the slab ``sl`` of axis 0."""
        g, a, sc = self.growth, self.anat, F32(self.scale)
        t0 = self._affine_template(self.axis[sl, None, None], self.axis[None, :, None], self.axis[None, None, :])
        shape = (len(self.axis[sl]), self.grid, self.grid)
        t0 = [np.broadcast_to(c, shape) for c in t0]
        x, y, z = self._warp(t0, [self._fine(f"d{i}", sl) for i in range(3)])
        hull_sdf, depth, outside, cistern, brainstem, below_fissure = self._cerebral_fields(x, y, z, sl)

        # envelope of the whole brain -> mask, background layer, skull and scalp
        cb_radii = [F32(r * g.cerebellum * a.cerebellum) for r in CEREBELLUM_RADII]
        cb_centre = (0.0, -16.5 - cb_radii[1], -8.0 - cb_radii[2])  # tucked under the tentorium
        if self.v2:  # two hemispheres and the vermis between them
            rx, ry, rz = cb_radii
            hemispheres = ellipsoid_sdf(np.abs(x), y, z, (0.42 * rx, cb_centre[1], cb_centre[2]), (0.6 * rx, ry, rz))
            vermis = ellipsoid_sdf(x, y, z, (0.0, cb_centre[1] + 0.1 * ry, cb_centre[2] + 0.05 * rz),
                                   (0.32 * rx, 0.88 * ry, 0.95 * rz))
            cerebellum = np.minimum(hemispheres, vermis) * sc
        else:
            cerebellum = ellipsoid_sdf(x, y, z, cb_centre, cb_radii) * sc
        envelope = np.minimum.reduce([hull_sdf, cerebellum, brainstem])
        csf_mm = F32(g.csf_mm * a.csf)
        mask_mm = csf_mm + F32(max(2.0, 0.75 * self.voxel_mm))
        head = -F32(8.0) * np.log(np.exp(-hull_sdf / 8) + np.exp(-cerebellum / 8) + np.exp(-np.minimum(brainstem, 60) / 8))

        tissue = np.zeros(shape, np.uint8)
        tissue[head < mask_mm + 9] = T_SCALP
        tissue[head < mask_mm + 3] = T_SKULL
        tissue[envelope < mask_mm] = T_BG
        tissue[envelope < csf_mm] = T_CSF
        cerebrum = (depth > 0) & (outside > 0) & (cistern > 0)
        cortex_mm = F32(g.cortex_mm + a.cortex_mm)
        tissue[cerebrum] = np.where(outside[cerebrum] < cortex_mm, T_CGM, T_WM)
        if self.v2:
            texture = self._cerebellum_v2(tissue, y, z, cerebellum, cerebrum, cb_centre, cb_radii, brainstem)
            texture += self._partial_volume(tissue, outside, T_CGM)
            texture += np.where(tissue == T_WM, F32(0.025) * self._fine("wm", sl), F32(0))
            self._deep_v2(tissue, x, y, z, np.minimum.reduce([outside, cistern, below_fissure]), cortex_mm)
            return tissue, texture
        tissue[(cerebellum < 0) & ~cerebrum & (self._cerebellar_fissures(y, z, cerebellum, cb_centre, cb_radii) > 0)] = T_CB
        tissue[cerebellum < -F32(0.45) * min(cb_radii) * sc] = T_CB_CORE
        tissue[brainstem < 0] = T_BS
        texture = np.where(tissue == T_WM, F32(0.025) * self._fine("wm", sl), F32(0))
        folia = F32(0.05 * np.clip(1.5 - self.voxel_mm, 0, 1)) * np.sin(cerebellum * F32(2 * np.pi / 2.5))
        texture += np.where(tissue == T_CB, folia, F32(0))
        self._deep(tissue, x, y, z, np.minimum.reduce([outside, cistern, below_fissure]), cortex_mm)
        return tissue, texture

    def _cerebral_fields(self, x, y, z, sl: slice) -> tuple[np.ndarray, ...]:
        """Signed distances (scanner mm) that shape the cerebrum: the hull, the depth below it, the
        distance to the nearest "outside" (hull, fissures, cisterns, sulci) that the cortex lines,
        the cisterns and brainstem, and a continuous distance to the interhemispheric fissure."""
        g, a, sc = self.growth, self.anat, F32(self.scale)
        shape, ax = x.shape, np.abs(x)
        rx, ry, rz = _hull_radii(x, y, z)
        hull_sdf = ellipsoid_sdf(x, y, z, (0, 0, 0), (rx, ry, rz)) * sc
        tent = F32(TENTORIUM[0]) + F32(TENTORIUM[1]) * (y - F32(TENTORIUM[2])) - F32(TENTORIUM[3]) * ax
        tent = tent - np.maximum(y - F32(TENTORIUM[2]), 0) * F32(3.0 + TENTORIUM[1])  # falls away in front
        tentorium = (z - tent) * sc
        depth = np.minimum(-hull_sdf, tentorium)  # > 0 inside the cerebrum
        core_r = np.sqrt(((y - F32(CORE[0])) / F32(CORE[1])) ** 2 + (z / F32(CORE[2])) ** 2)
        core = core_r < 1
        fissure_half = F32(1.0 + 0.6 * np.clip(1 - g.maturity, 0, 1))
        slab = np.abs(x - self._fine("mid", sl)) * sc - fissure_half
        fissure = np.where(core, np.inf, slab).astype(F32)  # no cortex where the hemispheres join
        below_fissure = np.maximum(slab, (1 - core_r) * F32(CORE[2]) * sc)  # continuous: keeps ventricles off
        brainstem = np.full(shape, np.inf, F32)
        cistern = np.full(shape, np.inf, F32)
        idx = _mirror_box(ax, y, z, (0, -45, -200), (25, 15, 12))
        if idx.size:
            nodes, radii = BRAINSTEM_PATH
            pts = [c.ravel()[idx] for c in (x, y, z)]
            brainstem.ravel()[idx] = tube_sdf(*pts, nodes, np.asarray(radii) * a.brainstem) * sc
            cistern.ravel()[idx] = tube_sdf(*pts, nodes[1:], np.asarray(radii[1:]) * a.brainstem + CISTERN_MM) * sc
        x_insula = F32(28.0)
        opening = F32(0.8) + F32(g.sylvian_opening) * np.clip((ax - x_insula) / F32(HULL[0] - 28.0), 0, None)
        sylvian = np.maximum.reduce([np.abs(z + 4 + F32(0.3) * y) - opening, x_insula - ax, np.abs(y - 8) - 32]) * sc
        outside = np.minimum.reduce([depth, fissure, np.where(core, np.inf, cistern), sylvian])
        if self.v2:
            self._sulci_v2(outside, below_fissure, depth, fissure, sl)
            return hull_sdf, depth, outside, cistern, brainstem, below_fissure
        cleft, folding = g.cleft_mm, F32(a.folding)
        for s, gs, m, max_depth in (("s1", "g1", "m1", g.primary_depth_mm), ("s2", "g2", "m2", g.secondary_depth_mm)):
            if max_depth <= 0:
                continue
            dist = np.abs(self._fine(s, sl)) / np.maximum(self._fine(gs, sl), F32(1e-3))
            sulcus_depth = F32(max_depth) * folding * np.clip(0.75 + 0.35 * self._fine(m, sl), 0, 1)
            np.minimum(outside, _cleft(dist, depth, sulcus_depth, cleft), out=outside)
        if g.primary_depth_mm > 0:  # medial sulci: sheets across the fissure walls, none in the core
            dist = np.abs(self._fine("sm", sl)) / np.maximum(self._fine("gm", sl), F32(1e-3))
            medial_depth = F32(0.5 * g.primary_depth_mm) * folding
            np.minimum(outside, _cleft(dist, fissure, medial_depth, cleft), out=outside)
            np.minimum(below_fissure, _cleft(dist, below_fissure, medial_depth, cleft), out=below_fissure)
        return hull_sdf, depth, outside, cistern, brainstem, below_fissure

    def _sulci_v2(self, outside, below_fissure, depth, fissure, sl: slice) -> None:
        """Carve the v2 sulci into ``outside`` (and the medial ones into ``below_fissure``), in place:
        named primary sulci, then random primary, secondary and tertiary folds, each deepening
        linearly from its onset age."""
        g, a = self.growth, self.anat
        cleft = 0.5 + 0.5 * float(np.clip(1 - g.maturity, 0, 1))
        folding = F32(a.folding * self.folding)
        if folding <= 0:
            return
        for i, ((_, _, _, onset, depth_40, medial), (_, factor)) in enumerate(zip(NAMED_SULCI, a.named)):
            grown = float(np.clip((self.fold_age - onset) / (40.0 - onset), 0, 1.15))
            if grown <= 0:
                continue
            dist = np.abs(self._fine(f"n{i}", sl))
            sulcus_depth = F32(depth_40 * grown * factor) * folding * self._fine(f"w{i}", sl)
            if medial:
                np.minimum(outside, _cleft(dist, fissure, sulcus_depth, cleft), out=outside)
                np.minimum(below_fissure, _cleft(dist, below_fissure, sulcus_depth, cleft), out=below_fissure)
            else:
                np.minimum(outside, _cleft(dist, depth, sulcus_depth, cleft), out=outside)
        for (s, onset, weeks, max_depth), m in zip(RANDOM_SULCI_V2, ("m1", "m2", "m3")):
            grown = float(np.clip((self.fold_age - onset) / weeks, 0, 1.15))
            if grown <= 0:
                continue
            dist = np.abs(self._fine(s, sl)) / np.maximum(self._fine("g" + s[1:], sl), F32(1e-3))
            sulcus_depth = F32(max_depth * grown) * folding * np.clip(0.7 + 0.4 * self._fine(m, sl), 0, 1.2)
            np.minimum(outside, _cleft(dist, depth, sulcus_depth, cleft), out=outside)
        grown = float(np.clip((self.fold_age - 28.0) / 12.0, 0, 1.15))
        if grown > 0:  # random medial folds: sheets across the fissure walls, none in the core
            dist = np.abs(self._fine("sm", sl)) / np.maximum(self._fine("gm", sl), F32(1e-3))
            medial_depth = F32(4.0 * grown) * folding
            np.minimum(outside, _cleft(dist, fissure, medial_depth, cleft), out=outside)
            np.minimum(below_fissure, _cleft(dist, below_fissure, medial_depth, cleft), out=below_fissure)

    def _cerebellar_fissures(self, y, z, cerebellum: np.ndarray, centre, radii) -> np.ndarray:
        """Signed distance (mm) to the cerebellar fissures: transverse CSF sheets fanning out in the
        sagittal plane from the fastigium, more and deeper with age."""
        out = np.full(cerebellum.shape, np.inf, F32)
        idx = np.flatnonzero(cerebellum < 0)
        if not idx.size:
            return out
        g = self.growth
        py = y.ravel()[idx] - F32(centre[1] + 0.5 * radii[1])
        pz = z.ravel()[idx] - F32(centre[2] + 0.2 * radii[2])
        step = np.deg2rad(34.0 - 14.0 * float(np.clip(g.maturity, 0, 1.2)))
        theta = np.arctan2(pz, -py) + F32(self.anat.folia_phase * step)
        if self.v2:  # fissures every half step: lobules of varying depth, subdivided towards term
            half = F32(step / 2)
            k = np.round(theta / half).astype(np.int64)
            wrapped = theta - half * k
            dist = np.sqrt(py * py + pz * pz) * np.abs(np.sin(wrapped)) * F32(self.scale)
            full = (1.0 + 5.0 * float(np.clip(g.maturity, 0, 1.2))) * self.anat.cerebellum
            sub = full * 0.45 * float(np.clip((g.age - 32.0) / 8.0, 0, 1.2))
            lobules = np.asarray(self.anat.lobules, F32)
            depth = np.where(k % 2 == 0, F32(full) * lobules[(k // 2) % len(lobules)], F32(sub))
            half_width = 0.5 + 0.3 * float(np.clip(1 - g.maturity, 0, 1))
            out.ravel()[idx] = _cleft(dist, -cerebellum.ravel()[idx], depth, half_width)
            return out
        wrapped = theta - F32(step) * np.round(theta / F32(step))
        dist = np.sqrt(py * py + pz * pz) * np.abs(np.sin(wrapped)) * F32(self.scale)
        depth = F32((1.0 + 4.0 * float(np.clip(g.maturity, 0, 1.2))) * self.anat.cerebellum)
        out.ravel()[idx] = _cleft(dist, -cerebellum.ravel()[idx], depth, 0.4 + 0.3 * float(np.clip(1 - g.maturity, 0, 1)))
        return out

    def _partial_volume(self, tissue: np.ndarray, csf_mm: np.ndarray, inner: int) -> np.ndarray:
        """Additive T2 (CSF = 1 scale) of the CSF share of ``inner`` voxels whose centre lies within
        half a voxel of CSF (``csf_mm``: distance to it), so that sulci and fissures thinner than a
        voxel still show as bright lines."""
        share = np.clip(F32(0.5) - csf_mm / F32(self.voxel_mm), 0, 0.5)
        return np.where(tissue == inner, F32(0.5) * share, F32(0)).astype(F32)

    def _cerebellum_v2(self, tissue, y, z, cerebellum, cerebrum, centre, radii, brainstem) -> np.ndarray:
        """Cerebellar cortex around a white-matter core, cut by the fissures (in place); returns the
        partial-volume texture of the fissures."""
        g, sc = self.growth, F32(self.scale)
        inside = (cerebellum < 0) & ~cerebrum
        fissures = self._cerebellar_fissures(y, z, cerebellum, centre, radii)
        to_csf = np.minimum(-cerebellum, fissures)
        cortex = F32(1.2 + 0.5 * float(np.clip(g.maturity, 0, 1.2)))
        tissue[inside & (fissures > 0)] = T_CB
        tissue[inside & (to_csf > cortex)] = T_CB_CORE  # the white matter: the arbor vitae
        tissue[brainstem < 0] = T_BS
        return self._partial_volume(tissue, to_csf, T_CB)

    def _deep(self, tissue: np.ndarray, x, y, z, outside: np.ndarray, cortex_mm: float) -> None:
        """Deep grey matter, hippocampi/amygdalae and ventricles (in place), bilateral by mirroring.
        ``outside``: distance (mm) to the nearest CSF outside the brain tissue."""
        a, g = self.anat, self.growth
        idx = _mirror_box(np.abs(x), y, z, (0, -40, -26), (30, 32, 22))
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
        deep_enough = outside.ravel()[idx] > cortex_mm + F32(self.voxel_mm)
        flat[idx[(vent < 0) & deep_enough]] = T_VENT

    def _deep_v2(self, tissue: np.ndarray, x, y, z, outside: np.ndarray, cortex_mm: float) -> None:
        """v2 deep structures (in place): hippocampi/amygdalae, caudate, lentiform nucleus with its
        pallidum and thalamus, split by the internal capsule, then the ventricles."""
        a, g = self.anat, self.growth
        idx = _mirror_box(np.abs(x), y, z, (0, -40, -26), (30, 32, 22))
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
        clear = outside.ravel()[idx] > F32(self.voxel_mm)  # the nuclei stay a voxel away from the cisterns
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
        deep_enough = outside.ravel()[idx] > cortex_mm + F32(self.voxel_mm)
        walls = np.isin(flat[idx], (T_BASAL_GANGLIA, T_PALLIDUM, T_THAL))  # the nuclei shape the ventricles
        flat[idx[(vent < 0) & deep_enough & ~walls]] = T_VENT


def seal_nuclei(tissue: np.ndarray) -> None:
    """v2, on the whole volume (in place): deep grey voxels with a face neighbour of CSF or outside
    the brain become white matter, so the nuclei always lie inside the cerebrum (the signed
    distances of the sulci are approximate far from their sheets)."""
    from scipy import ndimage

    near_csf = ndimage.binary_dilation(np.isin(tissue, (AIR, T_CSF, T_BG)))
    tissue[near_csf & np.isin(tissue, (T_BASAL_GANGLIA, T_PALLIDUM, T_THAL))] = T_WM
