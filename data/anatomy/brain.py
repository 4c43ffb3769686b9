"""One session of one subject on a voxel grid: template millimetres mapped to the scanner by growth,
the subject's deformation and asymmetry and the session's pose; the smooth fields on a coarse grid;
and :meth:`Brain.chunk`, which draws a slab of tissue classes from the structures' modules."""

from __future__ import annotations

import numpy as np

from ..synth_fields import F32, linear_taps, upsample
from .cerebellum import cerebellar_fissures, cerebellum_sdf, cerebellum_v2
from .cortex import NAMED_SULCI, SULCUS_SPHERE_MM, cerebral_fields, hull_radii
from .deep import deep, deep_v2
from .subject import Anatomy, Growth, Pose
from .tissues import T_BG, T_BS, T_CB, T_CB_CORE, T_CGM, T_CSF, T_SCALP, T_SKULL, T_WM, partial_volume

ORIGIN_Z_MM = 6.0  # the template origin sits this far above the volume centre (times scale)


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
        rx, ry, rz = hull_radii(x, y, z)
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

    def fine(self, name: str, sl: slice) -> np.ndarray:
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
        x, y, z = self._warp(t0, [self.fine(f"d{i}", sl) for i in range(3)])
        hull_sdf, depth, outside, cistern, brainstem, below_fissure = cerebral_fields(self, x, y, z, sl)

        # envelope of the whole brain -> mask, background layer, skull and scalp
        cerebellum, cb_centre, cb_radii = cerebellum_sdf(self, x, y, z)
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
            texture = cerebellum_v2(self, tissue, y, z, cerebellum, cerebrum, cb_centre, cb_radii, brainstem)
            texture += partial_volume(tissue, outside, T_CGM, self.voxel_mm)
            texture += np.where(tissue == T_WM, F32(0.025) * self.fine("wm", sl), F32(0))
            deep_v2(self, tissue, x, y, z, np.minimum.reduce([outside, cistern, below_fissure]), cortex_mm)
            return tissue, texture
        tissue[(cerebellum < 0) & ~cerebrum & (cerebellar_fissures(self, y, z, cerebellum, cb_centre, cb_radii) > 0)] = T_CB
        tissue[cerebellum < -F32(0.45) * min(cb_radii) * sc] = T_CB_CORE
        tissue[brainstem < 0] = T_BS
        texture = np.where(tissue == T_WM, F32(0.025) * self.fine("wm", sl), F32(0))
        folia = F32(0.05 * np.clip(1.5 - self.voxel_mm, 0, 1)) * np.sin(cerebellum * F32(2 * np.pi / 2.5))
        texture += np.where(tissue == T_CB, folia, F32(0))
        deep(self, tissue, x, y, z, np.minimum.reduce([outside, cistern, below_fissure]), cortex_mm)
        return tissue, texture
