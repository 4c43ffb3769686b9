"""Neonatal T2 contrast for the synthetic cohort: tissue intensities, partial volume, bias, noise.

Relative intensities (CSF = 1) follow neonatal T2: CSF brightest, unmyelinated white matter
brighter than cortex, deep grey matter darker; grey/white contrast grows with age and myelinated
tracts (internal capsule, brainstem, cerebellar white matter) darken towards term. Anatomy v2
adds the globus pallidus and the thalamus darkening with early myelination, and a cerebellar white
matter core darker than the cerebellar cortex at every age.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import tissues
from .anatomy.subject import Growth
from .synth_fields import F32, smooth_1d


def tissue_intensities(age: float, rng: np.random.Generator, anatomy: str = "v2",
                       jitter: float = 0.03) -> np.ndarray:
    """Mean T2 of each tissue class (index = ``anatomy.tissues`` tissue id) at ``age``, jittered per
    session by a log-normal factor of spread ``jitter`` (v1: always 0.03)."""
    if anatomy == "v1":
        return _intensities_v1(age, rng)
    g = Growth(age)
    m, my = float(np.clip(g.maturity, 0, 1.3)), g.myelination
    values = np.zeros(tissues.N_TISSUES)
    values[tissues.T_CSF], values[tissues.T_VENT] = 1.0, 0.97
    values[tissues.T_WM] = 0.75 - 0.10 * m
    values[tissues.T_CGM] = 0.52 - 0.13 * m
    values[tissues.T_THAL] = 0.48 - 0.12 * m - 0.05 * my  # ventrolateral thalamus myelinates near term
    values[tissues.T_BASAL_GANGLIA] = 0.52 - 0.11 * m  # caudate and putamen: close to cortex
    values[tissues.T_PALLIDUM] = values[tissues.T_BASAL_GANGLIA] - 0.04 - 0.08 * my
    values[tissues.T_HIPPO] = 0.56 - 0.12 * m
    values[tissues.T_CB] = 0.56 - 0.10 * m  # cerebellar cortex
    values[tissues.T_CB_CORE] = values[tissues.T_CB] - 0.05 - 0.14 * my  # cerebellar white matter
    values[tissues.T_BS] = 0.50 - 0.06 * m - 0.12 * my
    values[tissues.T_PLIC] = values[tissues.T_WM] - 0.08 - 0.25 * my
    values[tissues.T_BG], values[tissues.T_SKULL], values[tissues.T_SCALP] = 0.30, 0.06, 0.50
    factor = np.exp(rng.normal(0.0, jitter, tissues.N_TISSUES)) if jitter > 0 else np.ones(tissues.N_TISSUES)
    factor[tissues.T_CSF] = factor[tissues.T_VENT] = 1.0
    return (values * factor).astype(F32)


def _intensities_v1(age: float, rng: np.random.Generator) -> np.ndarray:
    """The first generator's intensities (frozen: the v1 cohort must not change)."""
    g = Growth(age)
    m, my = float(np.clip(g.maturity, 0, 1.3)), g.myelination
    values = np.zeros(tissues.N_TISSUES)
    values[tissues.T_CSF], values[tissues.T_VENT] = 1.0, 0.97
    values[tissues.T_WM] = 0.75 - 0.10 * m
    values[tissues.T_CGM] = 0.52 - 0.13 * m  # grey/white contrast 0.23 (28 weeks) -> 0.26 (40 weeks)
    values[tissues.T_THAL] = 0.47 - 0.13 * m
    values[tissues.T_BASAL_GANGLIA] = 0.50 - 0.10 * m
    values[tissues.T_HIPPO] = 0.56 - 0.12 * m
    values[tissues.T_CB] = 0.55 - 0.10 * m
    values[tissues.T_CB_CORE] = values[tissues.T_CB] - 0.12 * my
    values[tissues.T_BS] = 0.50 - 0.06 * m - 0.12 * my
    values[tissues.T_PLIC] = values[tissues.T_WM] - 0.30 * my
    values[tissues.T_BG], values[tissues.T_SKULL], values[tissues.T_SCALP] = 0.30, 0.06, 0.50
    jitter = np.ones(tissues.N_TISSUES)
    jitter[:tissues.N_TISSUES_V1] = np.exp(rng.normal(0.0, 0.03, tissues.N_TISSUES_V1))
    jitter[tissues.T_CSF] = jitter[tissues.T_VENT] = 1.0
    return (values * jitter).astype(F32)


def bias_field(rng: np.random.Generator, grid: int, strength: float) -> np.ndarray:
    """Smooth multiplicative bias ``exp(f)``, ``f`` a sum of separable low-frequency terms."""
    axis = np.linspace(-1, 1, grid, dtype=F32)
    log_bias = np.zeros((grid, grid, grid), F32)
    for _ in range(3):
        fx, fy, fz = (smooth_1d(rng, axis, 1.2) for _ in range(3))
        log_bias += fx[:, None, None] * fy[None, :, None] * fz[None, None, :]
    log_bias *= F32(strength / np.sqrt(3))
    return np.exp(log_bias, out=log_bias)


def render_t2(tissue: np.ndarray, texture: np.ndarray, age: float, rng: np.random.Generator,
              anatomy: str = "v2", jitter: float = 0.03) -> np.ndarray:
    """T2 image (float32, CSF ~ 1000) from tissue classes: intensities + texture, partial-volume
    blur (0.4-0.7 voxel), bias field (about +-15 %) and Rician noise (sigma 2.5-4.5 % of CSF)."""
    image = tissue_intensities(age, rng, anatomy, jitter)[tissue]
    image += texture
    image = ndimage.gaussian_filter(image, float(rng.uniform(0.4, 0.7)), output=F32)
    image *= bias_field(rng, tissue.shape[0], float(rng.uniform(0.08, 0.18)))
    sigma = F32(rng.uniform(0.025, 0.045))
    real = rng.standard_normal(tissue.shape, dtype=F32)
    real *= sigma
    real += image
    np.square(real, out=real)
    imag = rng.standard_normal(tissue.shape, dtype=F32)
    imag *= sigma
    np.square(imag, out=imag)
    real += imag
    del imag, image
    np.sqrt(real, out=real)
    real *= F32(1000.0 * rng.uniform(0.9, 1.1))
    return real
