"""DICOM folders: find the image series in a series or study folder (headers only), describe them,
and choose the T2w series by rules the user can set (shown by ``neoseg-infer --dry-run``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .deps import pydicom
from .detect import dicom_files

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
MR_CLASSES = {MR_IMAGE: "MR", ENHANCED_MR: "enhanced MR", LEGACY_ENHANCED_MR: "legacy enhanced MR"}
DEFAULT_INCLUDE = (r"t2",)  # series description or protocol name, case-insensitive
DEFAULT_EXCLUDE = (r"scout|locali[sz]er|survey|\bloc\b|calibration|flair|t2\*|t2star|swi|dwi|diffusion",)
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

    @property
    def name(self) -> str:
        """How messages name a series: number and description, never patient data."""
        number = "?" if self.number is None else str(self.number)
        return f"series {number} ({self.description or 'no description'})"


def find_series(folder: str | Path) -> list[Series]:
    """Every series under ``folder``, sorted by series number; unreadable files are refused."""
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no DICOM files (Part 10 files with the DICM marker); pass the folder "
                         f"of a DICOM series or study")
    by_uid: dict[str, list[tuple[Path, object]]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise ValueError(f"{path} is not a readable DICOM file ({_short(e)}); remove it or export the series "
                             f"again") from None
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR:
            continue  # the index of an exported study, not an image
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            raise ValueError(f"{path} has no SeriesInstanceUID; it is not a valid DICOM image; remove it")
        by_uid.setdefault(uid, []).append((path, ds))
    found = [_describe(uid, items) for uid, items in by_uid.items()]
    return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _describe(uid: str, items: list) -> Series:
    first = items[0][1]
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)
    number = first.get("SeriesNumber")
    geometry = [g for _, ds in items for g in frame_geometry(ds)]
    plane, tilt, voxel = _plane(geometry)
    return Series(uid, [ds for _, ds in items], [p for p, _ in items], None if number in (None, "") else int(number),
                  _text(first.get("SeriesDescription")), _text(first.get("ProtocolName")),
                  str(first.get("Modality", "")), str(first.get("SOPClassUID", "")), frames, plane, tilt, voxel)


def _text(value) -> str:
    return " ".join(str(value or "").split())


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:120]


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


# ---- choosing the T2w series ------------------------------------------------------------------
@dataclass
class SeriesRules:
    """Which series of a study is the T2w scan: regular expressions (case-insensitive, searched in the
    series description and the protocol name), slice planes, and the largest voxel size."""

    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    planes: tuple[str, ...] = ()  # empty: any plane
    max_voxel: float | None = None  # mm, the largest of the three spacings
    explicit: bool = False  # the user set a rule: apply it to a single-series folder too

    def __post_init__(self):
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"series pattern {pattern!r} is not a valid regular expression ({e}); "
                                 f"fix it") from None
        bad = [p for p in self.planes if p not in (*PLANES, "oblique")]
        if bad:
            raise ValueError(f"--plane {bad[0]}: choose from {', '.join((*PLANES, 'oblique'))}")

    def describe(self) -> str:
        """The rules in one line, as the dry run shows them."""
        parts = [f"description or protocol matches {' or '.join(self.include) or 'anything'}"]
        if self.exclude:
            parts.append(f"not {' or '.join(self.exclude)}")
        parts.append(f"plane {'/'.join(self.planes) or 'any'}")
        parts.append("voxels any size" if self.max_voxel is None else f"voxels at most {self.max_voxel:g} mm")
        return "T2w rules: MR volume; " + "; ".join(parts)

    def verdict(self, s: Series) -> str:
        """'' when ``s`` passes, else why not."""
        if s.sop_class not in MR_CLASSES:
            return f"not an MR image ({s.modality or 'no modality'})"
        if s.plane in ("mixed", "unknown"):
            return f"not a volume ({'slices in several planes' if s.plane == 'mixed' else 'no orientation'})"
        if s.frames < 2:
            return "a single slice"
        text = f"{s.description} {s.protocol}"
        if self.include and not any(re.search(p, text, re.IGNORECASE) for p in self.include):
            return f"description/protocol matches none of {', '.join(self.include)}"
        hit = next((p for p in self.exclude if re.search(p, text, re.IGNORECASE)), None)
        if hit:
            return f"description/protocol matches the exclusion {hit}"
        oblique = s.tilt is not None and s.tilt > OBLIQUE_DEGREES
        if self.planes and s.plane not in self.planes and not ("oblique" in self.planes and oblique):
            return f"{s.plane} slices, not {'/'.join(self.planes)}"
        if self.max_voxel is not None and s.voxel is not None and max(s.voxel) > self.max_voxel:
            return f"voxels up to {max(s.voxel):.3g} mm, more than {self.max_voxel:g} mm"
        return ""


OBLIQUE_DEGREES = 1.0  # a slice normal further than this from every axis is called oblique


def choose(series: list[Series], rules: SeriesRules, where: Path) -> Series:
    """The one series that passes the rules (a folder of one series: that series, unless the user set
    rules that refuse it); every series gets its ``verdict``. Refuses none or several."""
    for s in series:
        s.verdict = rules.verdict(s)
    if len(series) == 1 and not rules.explicit:
        series[0].verdict = ""  # the user pointed at this series: reading it says what is wrong with it
    passed = [s for s in series if not s.verdict]
    if len(passed) == 1:
        passed[0].verdict = "chosen"
        return passed[0]
    listing = "; ".join(f"{s.name}: {s.verdict or 'passes'}" for s in series[:8]) + (" ..." if len(series) > 8 else "")
    if not passed:
        raise ValueError(f"{where}: no series passes the T2w rules ({listing}); set --series-description, "
                         f"--plane or --max-voxel-size (see --dry-run)")
    raise ValueError(f"{where}: {len(passed)} series pass the T2w rules ({listing}); narrow them with "
                     f"--series-description, --plane or --max-voxel-size (see --dry-run)")


def table(series: list[Series]) -> str:
    """The dry run's listing: one line per series, with what the rules said."""
    lines = []
    for s in series:
        voxel = "x".join(f"{v:.3g}" for v in s.voxel) + " mm" if s.voxel else "-"
        tilt = f", {s.tilt:.1f} deg oblique" if s.tilt is not None and s.tilt > OBLIQUE_DEGREES else ""
        lines.append(f"  {s.name}: {MR_CLASSES.get(s.sop_class, s.modality or '?')}, {s.frames} frames, "
                     f"{s.plane}{tilt}, {voxel}, protocol '{s.protocol}' -> {s.verdict or 'passes'}")
    return "\n".join(lines)
