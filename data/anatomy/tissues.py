"""The drawem9 labels and the finer tissue classes that carry contrast (each maps to one label)."""

from __future__ import annotations

import numpy as np

from ..synth_fields import F32

CSF, CGM, WM, BACKGROUND, VENTRICLES, CEREBELLUM, DGM, BRAINSTEM, HIPPOCAMPI = range(1, 10)
N_TISSUES_V1, N_TISSUES = 15, 16  # anatomy v1 has no pallidum
AIR, T_CSF, T_CGM, T_WM, T_BG, T_VENT, T_CB, T_THAL, T_BS, T_HIPPO = range(10)
T_BASAL_GANGLIA, T_PLIC, T_CB_CORE, T_SKULL, T_SCALP = range(10, 15)
T_PALLIDUM = 15  # v2 only
LABEL_OF_TISSUE = np.array([0, CSF, CGM, WM, BACKGROUND, VENTRICLES, CEREBELLUM, DGM, BRAINSTEM,
                            HIPPOCAMPI, DGM, WM, CEREBELLUM, 0, 0, DGM], np.uint8)


def partial_volume(tissue: np.ndarray, csf_mm: np.ndarray, inner: int, voxel_mm: float) -> np.ndarray:
    """Additive T2 (CSF = 1 scale) of the CSF share of ``inner`` voxels whose centre lies within
    half a voxel of CSF (``csf_mm``: distance to it), so that sulci and fissures thinner than a
    voxel still show as bright lines."""
    share = np.clip(F32(0.5) - csf_mm / F32(voxel_mm), 0, 0.5)
    return np.where(tissue == inner, F32(0.5) * share, F32(0)).astype(F32)
