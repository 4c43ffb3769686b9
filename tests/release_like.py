"""A small dataset shaped like a lab's own dHCP-layout release: scans at 0.5, 0.8 and 1 mm and one
anisotropic (0.8 x 0.8 x 3 mm) one, some sessions with full drawem9 maps and the others annotated
only partially (a drawem9 map holding TCV where cortex, white matter and deep grey matter are not
told apart; or only a TCV or brain outline). The anatomy is the phantom of conftest, drawn in
millimetres so that every voxel size shows the same head."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import T2_OF_LABEL

FOV_MM = 48.0  # the phantom's field of view
TCV_CHILDREN = (2, 3, 7)  # drawem9 cgm, wm, dgm
TCV = 10


def phantom_mm(spacing, shift_mm: float, scale: float) -> np.ndarray:
    """conftest's nested shells and blobs, sampled at voxel centres of ``spacing`` (mm)."""
    shape = tuple(int(round(FOV_MM / s)) for s in spacing)
    axes = [(np.arange(n) + 0.5) * s - FOV_MM / 2 for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    x = x - shift_mm
    r = np.sqrt(x**2 + y**2 + z**2) / scale
    labels = np.zeros(shape, np.uint8)
    for radius, value in ((0.46, 4), (0.42, 1), (0.38, 2), (0.32, 3)):
        labels[r < radius * FOV_MM] = value
    def blob(cx, cy, cz, rad):  # noqa: E306 - centres and radius as fractions of the field of view
        return np.sqrt((x - cx * FOV_MM) ** 2 + (y - cy * FOV_MM) ** 2 + (z - cz * FOV_MM) ** 2) < rad * FOV_MM
    labels[blob(0, 0, 0, 0.1)] = 7
    labels[blob(0.15, 0, 0.1, 0.05)] = 5
    labels[blob(-0.15, 0, -0.1, 0.05)] = 9
    labels[blob(0, -0.25, -0.2, 0.07)] = 6
    labels[blob(0, 0, -0.3, 0.04)] = 8
    return labels


# (spacing, annotation) per subject: "full", "partial" (drawem9 with TCV), "tcv" or "brain" (masks only)
SUBJECTS = [((1.0, 1.0, 1.0), "full"), ((0.8, 0.8, 0.8), "full"), ((0.5, 0.5, 0.5), "full"),
            ((1.0, 1.0, 1.0), "full"), ((0.8, 0.8, 3.0), "partial"), ((1.0, 1.0, 1.0), "partial"),
            ((0.8, 0.8, 0.8), "tcv"), ((1.0, 1.0, 1.0), "brain"), ((1.0, 1.0, 1.0), "partial"),
            ((0.8, 0.8, 0.8), "partial"), ((1.0, 1.0, 1.0), "full"), ((1.0, 1.0, 1.0), "tcv")]


def write_release_like(root: Path, subjects=SUBJECTS) -> Path:
    rng = np.random.default_rng(1)
    for i, (spacing, kind) in enumerate(subjects):
        sub, stem = f"R{i:02d}", f"sub-R{i:02d}_ses-1"
        labels = phantom_mm(spacing, shift_mm=(i % 3 - 1) * 2.0, scale=0.9 + 0.02 * i)
        t2 = T2_OF_LABEL[labels] + rng.normal(0, 8, labels.shape).astype(np.float32)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = [-FOV_MM / 2 + s / 2 for s in spacing]
        anat = root / f"sub-{sub}" / "ses-1" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(t2, affine), anat / f"{stem}_desc-restore_T2w.nii.gz")
        if kind == "full":
            nib.save(nib.Nifti1Image(labels, affine), anat / f"{stem}_desc-drawem9_dseg.nii.gz")
        elif kind == "partial":
            coarse = np.where(np.isin(labels, TCV_CHILDREN), TCV, labels).astype(np.uint8)
            nib.save(nib.Nifti1Image(coarse, affine), anat / f"{stem}_desc-drawem9_dseg.nii.gz")
        elif kind == "tcv":
            mask = np.isin(labels, TCV_CHILDREN).astype(np.uint8)
            nib.save(nib.Nifti1Image(mask, affine), anat / f"{stem}_desc-tcv_mask.nii.gz")
        else:
            nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8), affine), anat / f"{stem}_desc-brain_mask.nii.gz")
        (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(f"session_id\tscan_age\n1\t{30 + i}.0\n")
    return root
