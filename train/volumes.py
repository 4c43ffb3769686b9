"""Preprocessed slice stacks on disk, memory-mapped, so 200 subjects of 256^3 never sit in RAM
as float32. Each session is loaded once, put in canonical (RAS+) orientation, min-max scaled,
cut into slices along ``axis`` and cropped/padded in-plane to ``size`` around the head; the image
is stored as float16 and the labels as uint8, or uint16 where a value exceeds 255 (every value in
0..65535 unchanged), as .npy files that ``np.load(mmap_mode='r')`` maps."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neoseg.core.io import atomic_path
from neoseg.core.labels import MAX_LABEL_VALUE, as_label_map, present_values
from neoseg.core.preprocess import head_center, minmax_scale, plane_windows, to_slices
from neoseg.core.scans import plain_shape, read_labels, read_scan
from neoseg.data.dhcp import Session

SLICE_MARGIN = 2  # empty slices kept on each side of the labelled ones
CACHE_VERSION = 3  # bump when preprocessing changes, so that older stacks are rebuilt


def load_canonical(path: Path, dtype=None, labels: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A scan (or, with ``labels``, a label map) checked by :mod:`neoseg.core.scans` and put in
    canonical (RAS+) orientation. Training data must be clean: non-finite voxels are refused."""
    if labels:
        checked = read_labels(path, max_value=MAX_LABEL_VALUE, working_bytes=_working_bytes)
    else:
        checked = read_scan(path, working_bytes=_working_bytes, nonfinite="refuse")
    img = nib.as_closest_canonical(checked.image)
    data = np.asanyarray(img.dataobj)
    return (data if dtype is None else data.astype(dtype, copy=False)), img


def load_labels(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A label map in canonical orientation as uint8/uint16 (values unchanged); refuses negative,
    fractional or > 65535 values, naming the file."""
    data, img = load_canonical(path, labels=True)
    return as_label_map(data, path), img


def load_session(session: Session) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    """A session's T2 (float32) and label map, canonical, checked to lie on the same grid."""
    image, img = load_canonical(session.t2, np.float32)
    labels, limg = load_labels(session.labels)
    if labels.shape != image.shape or not np.allclose(limg.affine, img.affine, atol=1e-3):
        raise ValueError(f"{session.labels}: the label map lies on another voxel grid than {session.t2.name} "
                         f"(shape {plain_shape(labels.shape)} vs {plain_shape(image.shape)}, or the affines "
                         f"differ); resample it onto the T2's grid (nearest neighbour)")
    return image, labels, img


def _working_bytes(shape, zooms) -> int:
    return 16 * math.prod(shape)  # float32 copies: canonical, scaled, slices


@dataclass(frozen=True)
class SliceStack:
    session: Session
    image: np.ndarray  # (S, size, size) float16 in [0, 1], memory-mapped
    labels: np.ndarray  # (S, size, size) uint8 or uint16 (values > 255), memory-mapped
    spacing: tuple[float, float, float]  # canonical voxel size in mm
    values: tuple[int, ...] = ()  # the label values of the whole file, slices kept or not


class VolumeCache:
    """Builds (once) and maps the slice stacks of sessions, keyed by file identity and geometry."""

    def __init__(self, folder: str | Path, axis: int, size: int):
        self.folder, self.axis, self.size = Path(folder), axis, size

    def _key(self, session: Session) -> str:
        ident = [CACHE_VERSION, self.axis, self.size]
        for p in (session.t2, session.labels):
            st = p.stat()
            ident += [str(p.resolve()), st.st_size, st.st_mtime_ns]
        return f"{session.key}-{hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:12]}"

    def get(self, session: Session) -> SliceStack:
        base = self.folder / self._key(session)
        meta_path = base.with_suffix(".json")
        if not meta_path.is_file():
            self._build(session, base)
        meta = json.loads(meta_path.read_text())
        return SliceStack(session, np.load(f"{base}.image.npy", mmap_mode="r"),
                          np.load(f"{base}.labels.npy", mmap_mode="r"), tuple(meta["spacing"]),
                          tuple(meta["values"]))

    def _build(self, session: Session, base: Path) -> None:
        image, labels, img = load_session(session)
        windows = plane_windows(image.shape, self.axis, self.size, head_center(image))
        image = to_slices(minmax_scale(image), self.axis, windows)
        values = present_values(labels)
        labels = to_slices(labels, self.axis, windows)
        present = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
        keep = slice(max(0, present[0] - SLICE_MARGIN), present[-1] + SLICE_MARGIN + 1) if present.size else slice(0, 0)
        self.folder.mkdir(parents=True, exist_ok=True)
        for suffix, array in ((".image.npy", image[keep].astype(np.float16)), (".labels.npy", labels[keep])):
            with atomic_path(f"{base}{suffix}", overwrite=True) as tmp:
                np.save(tmp, array)
        spacing = [float(z) for z in img.header.get_zooms()[:3]]
        with atomic_path(base.with_suffix(".json"), overwrite=True) as tmp:  # written last: marks completion
            tmp.write_text(json.dumps({"spacing": spacing, "t2": str(session.t2), "values": values}))
