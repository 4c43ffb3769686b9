"""DICOM folders: find the series in a series or study folder (headers only) and describe them: SOP
class, frames, plane, obliquity and voxel size, from which :mod:`.choice` picks the T2w series."""

from __future__ import annotations

import filecmp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detect import dicom_files
from .headers import read_header

DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"  # a SEG (neoseg's own output among them): pixels, but no image
PLANES = ("sagittal", "coronal", "axial")  # by the largest component of the slice normal (x, y, z)


@dataclass
class Series:
    """One series of a folder, as its headers describe it (no pixel data read)."""

    uid: str
    headers: list  # pydicom datasets without pixel data, one per instance
    files: list[Path]
    number: int | None
    description: str
    protocol: str
    modality: str
    sop_class: str
    frames: int
    plane: str  # axial, sagittal, coronal, mixed or unknown
    tilt: float | None  # degrees between the slice normal and the nearest axis
    voxel: tuple[float, float, float] | None  # row spacing, column spacing, slice spacing (mm)
    verdict: str = ""  # why it was chosen or passed over
    notes: list[str] = field(default_factory=list)  # what the user should know (duplicates, a tie rule)

    @property
    def name(self) -> str:
        """How messages name a series: number and description, never patient data."""
        number = "?" if self.number is None else str(self.number)
        return f"series {number} ({self.description or 'no description'})"

    @property
    def is_image(self) -> bool:
        """Images, not a SEG, report, key object or presentation state stored beside them."""
        return self.sop_class != SEGMENTATION and "Rows" in self.headers[0]


def find_series(folder: str | Path) -> list[Series]:
    """Every series under ``folder``, sorted by series number; unreadable or damaged files are refused,
    and an instance stored twice (the same SOPInstanceUID) is read once, with a note."""
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no DICOM files (Part 10 files with the DICM marker); pass the folder "
                         f"of a DICOM series or study")
    by_uid: dict[str, dict[str, tuple[Path, object]]] = {}
    notes: dict[str, list[str]] = {}
    for path in files:
        ds = read_header(path)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR:
            continue  # the index of an exported study, not an image
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            raise ValueError(f"{path} has no SeriesInstanceUID: it is damaged or no DICOM image; copy or export "
                             f"it again, or remove it")
        instances = by_uid.setdefault(uid, {})
        sop = str(ds.get("SOPInstanceUID", "")) or str(path)
        if sop in instances:
            notes.setdefault(uid, []).append(_duplicate(path, instances[sop][0]))
            continue
        instances[sop] = (path, ds)
    found = [_describe(uid, list(items.values()), notes.get(uid, [])) for uid, items in by_uid.items()]
    return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _duplicate(path: Path, first: Path) -> str:
    if filecmp.cmp(path, first, shallow=False):
        return f"{first} and {path} are the same file (the same SOPInstanceUID and bytes): read once"
    return f"{first} and {path} hold the same instance (the same SOPInstanceUID) with other bytes: {first} is read"


def _describe(uid: str, items: list, notes: list[str]) -> Series:
    first = items[0][1]
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)
    number = first.get("SeriesNumber")
    geometry = [g for _, ds in items for g in frame_geometry(ds)]
    plane, tilt, voxel = _plane(geometry)
    return Series(uid, [ds for _, ds in items], [p for p, _ in items], None if number in (None, "") else int(number),
                  _text(first.get("SeriesDescription")), _text(first.get("ProtocolName")),
                  str(first.get("Modality", "")), str(first.get("SOPClassUID", "")), frames, plane, tilt, voxel,
                  notes=notes)


def _text(value) -> str:
    return " ".join(str(value or "").split())


# ---- geometry of each frame -------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient: row direction, then column direction
    spacing: tuple[float, float] | None  # PixelSpacing: between rows, between columns (mm)
    size: tuple[int, int]  # rows, columns


def frame_geometry(ds) -> list[Frame]:
    """Position, orientation and pixel spacing of every frame of an instance: the plain attributes of
    a single-frame image, or the shared and per-frame functional groups of an enhanced one."""
    size = (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [Frame(_vector(ds.get("ImagePositionPatient")), _vector(ds.get("ImageOrientationPatient")),
                      _pair(ds.get("PixelSpacing")), size)]
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        position = _group(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _group(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _group(item, shared, "PixelMeasuresSequence", "PixelSpacing")
        out.append(Frame(_vector(position), _vector(orientation), _pair(spacing), size))
    return out


def _group(item, shared, sequence: str, keyword: str):
    for source in (item, shared):
        if source is not None and sequence in source and len(source[sequence].value):
            value = source[sequence].value[0].get(keyword)
            if value is not None:
                return value
    return None


def _vector(value) -> np.ndarray | None:
    try:
        v = np.asarray([float(x) for x in value], np.float64)
    except (TypeError, ValueError):
        return None
    return v if np.all(np.isfinite(v)) else None


def _pair(value) -> tuple[float, float] | None:
    v = _vector(value)
    return None if v is None or len(v) != 2 else (float(v[0]), float(v[1]))


def normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def _plane(frames: list[Frame]) -> tuple[str, float | None, tuple[float, float, float] | None]:
    if not frames or any(f.orientation is None or len(f.orientation) != 6 for f in frames):
        return "unknown", None, None
    first = frames[0].orientation
    if any(not np.allclose(f.orientation, first, atol=1e-4) for f in frames):
        return "mixed", None, None
    n = normal(first)
    axis = int(np.argmax(np.abs(n)))
    tilt = float(np.degrees(np.arccos(min(1.0, abs(n[axis])))))
    voxel = None
    positions = [f.position for f in frames if f.position is not None]
    if frames[0].spacing is not None:
        along = np.unique(np.round(np.sort([float(p @ n) for p in positions]), 4)) if positions else []
        step = float(np.median(np.diff(along))) if len(along) > 1 else 0.0
        voxel = (*frames[0].spacing, step)
    return PLANES[axis], tilt, voxel


OBLIQUE_DEGREES = 1.0  # a slice normal further than this from every axis is called oblique
