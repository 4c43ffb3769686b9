"""Preprocessed slice stacks on disk, memory-mapped, so 200 subjects of 256^3 never sit in RAM
as float32. Each session is loaded once, put in canonical (RAS+) orientation, resampled to the
training spacing, min-max scaled, cut into slices along ``axis`` and cropped/padded in-plane to
``size`` around the head; the image is stored as float16 and the labels as uint8, or uint16 where
a value exceeds 255 (every value in 0..65535 unchanged), as .npy files that
``np.load(mmap_mode='r')`` maps.

Resampling. The image is interpolated linearly, with the very function the runtime uses on a
scan before the network sees it, so training and inference see the same picture. A label map
cannot be interpolated; nearest neighbour would keep, of a 1 mm cortex on a 2 mm grid, only what
happens to sit at the sample points (a broken ribbon). Each label's indicator is instead averaged
over the new voxel's footprint (a box filter as wide as the voxel-size ratio, then the same linear
interpolation) and every voxel takes the label with the largest share: a thin structure keeps the
voxels it fills most of, in one piece, as in nnU-Net's per-label resampling.

Nothing is cropped silently: a session whose labelled brain does not fit the slice window at the
training spacing is refused, naming the file, its extent in mm and the fix."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import write_once
from neoseg.core.labels import MAX_LABEL_VALUE, as_label_map, present_values
from neoseg.core.partial import code_session, partial_values
from neoseg.core.preprocess import head_center, minmax_scale, plane_windows, to_slices
from neoseg.core.scans import check_same_grid, read_labels, read_scan, voxel_size
from neoseg.data.dhcp import Session
from neoseg.runtime.geometry import needs_resampling, resampled_shape, resize_linear

SLICE_MARGIN = 2  # empty slices kept on each side of the labelled ones
CACHE_VERSION = 4  # bump when preprocessing changes, so that older stacks are rebuilt


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
    check_same_grid(session.labels, limg, img, session.t2)
    return image, labels, img


def load_coded(session: Session, hierarchy: Hierarchy):
    """A session's T2 (float32, canonical) and its annotation as codes (:mod:`neoseg.core.partial`):
    the label map's values, or for a session annotated by masks, codes with extra target rows."""
    if session.labels is not None:
        image, labels, img = load_session(session)
        return image, code_session(hierarchy, labels, [], [str(session.labels)]), img
    image, img = load_canonical(session.t2, np.float32)
    masks = []
    for name, path in session.masks:
        data, mimg = load_canonical(path, labels=True)
        check_same_grid(path, mimg, img, session.t2)
        masks.append((name, data))
    return image, code_session(hierarchy, None, masks, [str(p) for _, p in session.masks]), img


def partial_sessions(sessions: list[Session], hierarchy: Hierarchy) -> dict[str, bool]:
    """Per session key: is its annotation partial in its files (masks only, or a label map holding
    a value whose target leaves a child unknown, such as TCV's own)? Reads each label map once."""
    unknown = partial_values(hierarchy)
    found = {}
    for session in sessions:
        if session.labels is None:
            found[session.key] = True
        else:
            values = present_values(as_label_map(read_labels(session.labels, max_value=MAX_LABEL_VALUE).data,
                                                 session.labels))
            found[session.key] = bool(unknown.intersection(values))
    return found


def resample_labels(labels: np.ndarray, shape, spacing, target) -> np.ndarray:
    """A label map onto ``shape`` (the same field of view at voxel size ``target``): per label, its
    indicator box-filtered over the new voxel's footprint and interpolated; the largest share wins
    (the first label on ties)."""
    from scipy.ndimage import uniform_filter

    footprint = [max(1, int(round(t / s))) for s, t in zip(spacing, target)]
    best = np.full(tuple(shape), -1.0, np.float32)
    out = np.zeros(tuple(shape), labels.dtype)
    for value in present_values(labels):
        share = (labels == value).astype(np.float32)
        if max(footprint) > 1:
            share = uniform_filter(share, size=footprint, mode="nearest")
        share = resize_linear(share, shape)
        higher = share > best
        best[higher], out[higher] = share[higher], value
    return out


def _working_bytes(shape, zooms) -> int:
    return 16 * math.prod(shape)  # float32 copies: canonical, scaled, slices


@dataclass(frozen=True)
class SliceStack:
    session: Session
    image: np.ndarray  # (S, size, size) float16 in [0, 1], memory-mapped
    labels: np.ndarray  # (S, size, size) uint8 or uint16 (values > 255), memory-mapped
    spacing: tuple[float, float, float]  # canonical voxel size in mm (the training spacing)
    values: tuple[int, ...] = ()  # the label values of the whole file, slices kept or not
    extra_rows: tuple[tuple[int, ...], ...] = ()  # target rows of codes first_extra, first_extra + 1, ...
    # (sessions annotated by masks, see neoseg.core.partial)
    first_extra: int = 0
    native_spacing: tuple[float, float, float] | None = None  # of the file, before resampling

    partial: bool = False  # some voxel's target holds an unknown entry (a parent's own value, or a mask)


class VolumeCache:
    """Builds (once) and maps the slice stacks of sessions, keyed by file identity and geometry:
    slices along ``axis`` of ``size``^2 at voxel size ``spacing`` (None: each file's own)."""

    def __init__(self, folder: str | Path, axis: int, size: int, hierarchy: Hierarchy,
                 spacing: tuple[float, float, float] | None = None):
        self.folder, self.axis, self.size, self.hierarchy = Path(folder), axis, size, hierarchy
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def _key(self, session: Session) -> str:
        ident = [CACHE_VERSION, self.axis, self.size, self.spacing, self.hierarchy.to_json()]
        for p in [session.t2, *session.sources]:
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
                          tuple(meta["values"]), tuple(tuple(r) for r in meta["extra_rows"]), meta["first_extra"],
                          tuple(meta["native_spacing"]), meta["partial"])

    def _build(self, session: Session, base: Path) -> None:
        image, coded, img = load_coded(session, self.hierarchy)
        labels = coded.codes
        native = voxel_size(img)
        spacing = native if self.spacing is None else self.spacing
        if needs_resampling(native, spacing):
            shape = resampled_shape(image.shape, native, spacing)
            image, labels = resize_linear(image, shape), resample_labels(labels, shape, native, spacing)
        windows = plane_windows(image.shape, self.axis, self.size, head_center(image))
        self._check_fits(session, self._inside_brain(labels, coded), windows, spacing)
        image = to_slices(minmax_scale(image), self.axis, windows)
        codes = present_values(coded.codes)
        values = [v for v in codes if v < coded.first_extra or not coded.extra_rows]  # unnamed ones too: refused later
        partial = bool(coded.extra_rows) or bool(partial_values(self.hierarchy).intersection(values))
        labels = to_slices(labels, self.axis, windows)
        present = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
        keep = slice(max(0, present[0] - SLICE_MARGIN), present[-1] + SLICE_MARGIN + 1) if present.size else slice(0, 0)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Runs sharing the cache may build one entry at once: each file is written once, never
        # replaced (a run reading it would find it missing for a moment), the .json last.
        for suffix, array in ((".image.npy", image[keep].astype(np.float16)), (".labels.npy", labels[keep])):
            write_once(f"{base}{suffix}", lambda tmp, array=array: np.save(tmp, array))
        meta = {"spacing": list(spacing), "native_spacing": list(native), "t2": str(session.t2), "values": values,
                "extra_rows": [list(r) for r in coded.extra_rows], "first_extra": coded.first_extra, "partial": partial}
        write_once(base.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta)))  # marks completion

    def _inside_brain(self, codes: np.ndarray, coded) -> np.ndarray:
        """The voxels annotated as something other than outside the brain (label value 0)."""
        table = coded.table(self.hierarchy)
        outside = self.hierarchy.outside_channel
        if outside is None:
            return codes != 0
        brain = np.zeros(max(len(table), int(codes.max(initial=0)) + 1), bool)  # unnamed values: refused later
        brain[:len(table)] = table[:, outside] == 0
        return brain[codes]

    def _check_fits(self, session: Session, brain: np.ndarray, windows, spacing) -> None:
        """Refuse a session whose labelled brain the in-plane window would cut."""
        kept = to_slices(brain, self.axis, windows).sum()
        total = int(brain.sum())
        if kept == total:
            return
        axes = sorted(windows)
        extent = []
        for a in axes:
            present = np.flatnonzero(brain.any(axis=tuple(b for b in range(3) if b != a)))
            extent.append((present[-1] - present[0] + 1) * spacing[a])
        span = max(extent)
        size = -(-int(np.ceil(span / min(spacing[a] for a in axes)) + 8) // 16) * 16
        coarser = np.ceil(10 * (span + 8 * max(spacing)) / self.size) / 10
        raise ValueError(f"{session.sources[0]}: the labelled brain spans {extent[0]:.0f} x {extent[1]:.0f} mm "
                         f"in-plane, but {self.size}^2 slices at {'x'.join(f'{z:g}' for z in spacing)} mm cover "
                         f"{self.size * spacing[axes[0]]:.0f} x {self.size * spacing[axes[1]]:.0f} mm, so "
                         f"{total - kept} labelled voxels would be cut off; pass --slice-size {size} or a coarser "
                         f"--spacing (e.g. {coarser:g})")
