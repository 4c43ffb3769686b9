"""What a session of the cohort is drawn from: growth with age, the subject's own anatomy and the
session's head pose."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..synth_fields import WaveField
from .cortex import NAMED_SULCI

ANATOMIES = ("v1", "v2")  # v1: the first generator, frozen byte for byte; v2: the default


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
