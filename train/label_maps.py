"""Label maps without images as training data for synthesis (``neoseg-train --synth-labels DIR``).

The folder holds label maps (``*.nii`` or ``*.nii.gz``, any names, one subject each: an atlas,
another cohort's segmentations) whose values the run's hierarchy names, at any voxel size. Each is
resampled to the training voxel size as the training label maps are (per label, the largest share
wins) and cut into slices as the training scans are (canonical orientation, slices along the run's
axis, cropped/padded around the head, here the labelled voxels); its image is NaN,
which :class:`~neoseg.train.synthesis.Synthesis` always replaces by a synthesised one. They are
fully labelled training stacks, never validation or test data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.labels import present_values
from neoseg.core.preprocess import head_center, plane_windows, to_slices
from neoseg.core.scans import voxel_size
from neoseg.data.dhcp import Session

from neoseg.runtime.geometry import needs_resampling, resampled_shape

from .volumes import SliceStack, load_labels, resample_labels


def label_map_files(folder: str | Path) -> list[Path]:
    """The folder's label maps, sorted by name; an error when it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--synth-labels {folder}: no such folder; pass a folder of label maps (*.nii.gz)")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise ValueError(f"--synth-labels {folder} holds no label maps (*.nii or *.nii.gz)")
    return files


def label_stack(path: Path, hierarchy: Hierarchy, axis: int, size: int, spacing: tuple[float, ...]) -> SliceStack:
    """One label map as a slice stack at voxel size ``spacing`` with a NaN image; refuses values the
    hierarchy does not name."""
    labels, img = load_labels(path)
    native = voxel_size(img)
    if needs_resampling(native, spacing):
        labels = resample_labels(labels, resampled_shape(labels.shape, native, spacing), native, spacing)
    values = present_values(labels)
    unnamed = hierarchy.unnamed(values)
    if unnamed:
        raise ValueError(f"{path}: label values {unnamed} are not in hierarchy '{hierarchy.name}' "
                         f"(known: {hierarchy.label_values}); relabel the map or pass the matching --hierarchy")
    windows = plane_windows(labels.shape, axis, size, head_center((labels > 0).astype(np.float32)))
    slices = to_slices(labels, axis, windows)
    present = np.flatnonzero(slices.reshape(len(slices), -1).any(axis=1))
    if not present.size:
        raise ValueError(f"{path}: the label map is empty (every voxel 0); it cannot train anything")
    slices = np.ascontiguousarray(slices[present[0]:present[-1] + 1])
    image = np.full(slices.shape, np.nan, np.float16)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    session = Session(subject=stem, session="labels", t2=path, labels=path, scan_age=float("nan"))
    return SliceStack(session, image, slices, tuple(float(z) for z in spacing), tuple(values), native_spacing=native)


def label_stacks(folder: str | Path, hierarchy: Hierarchy, axis: int, size: int,
                 spacing: tuple[float, ...]) -> list[SliceStack]:
    """Every label map of ``folder`` as a stack at the training voxel size ``spacing``."""
    return [label_stack(p, hierarchy, axis, size, spacing) for p in label_map_files(folder)]
