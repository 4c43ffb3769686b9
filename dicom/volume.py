"""A DICOM series -> a checked volume (:class:`neoseg.core.scans.Scan`) on the series' own grid.

The headers are checked first, with one-line errors: MR images only, one volume (same size, pixel
spacing and orientation throughout; slices stacked along their normal, none missing, none twice,
evenly spaced: spacing from the positions, never SliceThickness), a transfer syntax this install
decodes, enough memory. highdicom then assembles the voxels (modality rescale applied) and the
affine, for single-frame series and for enhanced multi-frame images alike. The result is stored as
columns x rows x slices with a RAS affine (DICOM's LPS with x and y negated, as nibabel uses); an
oblique series keeps its true oblique affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neoseg.core.scans import Scan, ScanError
from neoseg.core.sizes import available_memory, human_bytes, plain_shape

from .deps import highdicom as hd
from .deps import pydicom
from .headers import MR_CLASSES, MR_IMAGE, cause
from .series import OBLIQUE_DEGREES, Frame, Series, frame_geometry, normal

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_RTOL = 0.01  # slice steps may differ from the median step by this share (highdicom's default)


@dataclass
class DicomScan:
    """A series read into a :class:`Scan`, with what the DICOM outputs need."""

    scan: Scan
    series: Series
    volume: object  # highdicom.Volume of the source grid (slices, rows, columns), LPS

    def to_volume_order(self, data: np.ndarray) -> np.ndarray:
        """(columns, rows, slices) as segmented -> highdicom's (slices, rows, columns)."""
        return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def read_series(series: Series, where: Path, working_bytes=None) -> DicomScan:
    """Check and read ``series`` (found under ``where``); raise :class:`ScanError` with one line."""
    name = f"{where}, {series.name}"
    _check_kind(series, name)
    frames = [f for ds in series.headers for f in frame_geometry(ds)]
    spacing = _check_geometry(frames, name)
    expected = series.headers[0].get("ImagesInAcquisition")
    if series.sop_class == MR_IMAGE and expected not in (None, "") and int(expected) > len(frames):
        raise ScanError(f"{name}: incomplete, {len(frames)} of {int(expected)} images (ImagesInAcquisition) are "
                        f"here; receive or export the whole series again")
    shape = (frames[0].size[1], frames[0].size[0], len(frames))
    zooms = (frames[0].spacing[1], frames[0].spacing[0], spacing)
    need = 4 * int(np.prod(shape)) * 2 + (working_bytes(shape, zooms) if working_bytes else 0)
    avail = available_memory()
    if avail is not None and need > avail:
        raise ScanError(f"{name}: {plain_shape(shape)} voxels need about {human_bytes(need)} of memory to process, "
                        f"but {human_bytes(avail)} is available; use a machine with more memory")
    volume = _assemble(series, name)
    data = np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0)), np.float32)
    affine = LPS_TO_RAS @ np.asarray(volume.affine, np.float64)[:, [2, 1, 0, 3]]
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise ScanError(f"{name}: every voxel has the value {lo:g}; there is no image to segment; check the export")
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    notes = list(series.notes)
    if series.tilt is not None and series.tilt > OBLIQUE_DEGREES:
        notes.append(f"{name}: oblique slices ({series.tilt:.1f} deg from the nearest axis); segmented on its own "
                     f"grid, slice by slice along the nearest axis, without resampling")
    return DicomScan(Scan(where, image, data, affine, zooms, None, notes), series, volume)


def _check_kind(s: Series, name: str) -> None:
    if s.sop_class not in MR_CLASSES:
        raise ScanError(f"{name} is not an MR image series (modality {s.modality or 'unknown'}, SOP class "
                        f"{s.sop_class}); neoseg segments T2-weighted MR; choose the T2w series")
    if s.sop_class != MR_IMAGE and len(s.headers) > 1:
        raise ScanError(f"{name} holds {len(s.headers)} multi-frame instances; neoseg reads one enhanced MR "
                        f"instance per series; export the T2w volume as one instance")
    for ds in s.headers:
        meta = getattr(ds, "file_meta", None)
        syntax = None if meta is None else meta.get("TransferSyntaxUID")
        if syntax is None:
            continue
        syntax = pydicom.uid.UID(str(syntax))
        if syntax.is_compressed and not _decodable(syntax):
            raise ScanError(f"{name} is compressed as {syntax.name} ({syntax}), which this install cannot decode; "
                            f"install the decoders (pip install -e '.[dicom]' in the neoseg checkout) or decompress it first "
                            f"(e.g. gdcmconv --raw or dcmdjpeg)")
    if int(s.headers[0].get("SamplesPerPixel", 1)) != 1:
        raise ScanError(f"{name} holds colour pixels; neoseg reads grey-scale MR; choose the T2w series")


def _decodable(syntax) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def _check_geometry(frames: list[Frame], name: str) -> float:
    """The slice spacing of a series that forms one evenly spaced volume; else a refusal."""
    if any(f.position is None or f.orientation is None or len(f.orientation) != 6 or f.spacing is None
           for f in frames):
        raise ScanError(f"{name}: some frames lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing, "
                        f"so their place in the body is unknown; export the series with its geometry")
    if len({f.size for f in frames}) > 1:
        sizes = ", ".join(f"{r}x{c}" for r, c in sorted({f.size for f in frames}))
        raise ScanError(f"{name}: frames of different sizes ({sizes}); the series mixes several acquisitions; "
                        f"export the T2w volume alone")
    first = frames[0]
    if any(not np.allclose(f.orientation, first.orientation, atol=1e-4) for f in frames):
        raise ScanError(f"{name}: frames in different orientations (a localizer or a mixed series); export the "
                        f"T2w volume alone")
    if any(not np.allclose(f.spacing, first.spacing, rtol=1e-4) for f in frames):
        raise ScanError(f"{name}: frames with different pixel spacings; the series mixes acquisitions; export the "
                        f"T2w volume alone")
    if len(frames) < 2:
        raise ScanError(f"{name} is a single slice; neoseg segments 3D volumes; choose the 3D T2w series")
    n = normal(first.orientation)
    positions = np.array([f.position for f in frames])
    along = positions @ n
    order = np.argsort(along)
    along, positions = along[order], positions[order]
    steps = np.diff(along)
    step = float(np.median(steps))
    if np.any(steps < 1e-3 * max(step, 1e-3)):
        repeats = len(along) - len(np.unique(np.round(along, 3)))
        raise ScanError(f"{name}: {repeats} frames repeat a slice position, so the series holds several volumes "
                        f"(echoes, dynamics or repeats); export one volume")
    offsets = positions - np.outer(along, n)  # what is left once the normal component is taken out
    if np.max(np.linalg.norm(offsets - offsets[0], axis=1)) > 0.05 * min(first.spacing):
        raise ScanError(f"{name}: slices are not stacked along their normal (gantry tilt or shifted slices); "
                        f"neoseg needs a regular volume; resample it first")
    gaps = np.flatnonzero(steps > (1 + 0.5) * step)
    if gaps.size:
        i = int(gaps[0])
        raise ScanError(f"{name}: slices missing: a gap of {steps[i]:.3g} mm between slice positions {along[i]:.4g} "
                        f"and {along[i + 1]:.4g} mm, where slices are {step:.3g} mm apart; receive or export the whole "
                        f"series again")
    if np.max(np.abs(steps - step)) > SPACING_RTOL * step:
        raise ScanError(f"{name}: uneven slice spacing ({steps.min():.4g} to {steps.max():.4g} mm); neoseg needs "
                        f"evenly spaced slices; resample the series first")
    return step


def _assemble(s: Series, name: str):
    """highdicom's volume of the series: voxels with the modality rescale applied, and the affine."""
    try:
        datasets = [pydicom.dcmread(p) for p in s.files]
        if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
            return hd.Image.from_dataset(datasets[0], copy=False).get_volume(dtype=np.float32,
                                                                            rtol=SPACING_RTOL)
        return hd.get_volume_from_series(datasets, dtype=np.float32, rtol=SPACING_RTOL)
    except MemoryError:
        raise ScanError(f"{name}: ran out of memory reading the voxels; use a machine with more memory") from None
    except Exception as e:  # noqa: BLE001 - pydicom, the decoders and highdicom raise many types
        path, e = _undecodable(s.files, e)
        raise ScanError(f"{name}: {path or 'the series'} could not be read ({type(e).__name__}: {cause(e)}); it "
                        f"is damaged or of a kind neoseg does not read; export the series again") from None


def _undecodable(files: list[Path], error: Exception) -> tuple[Path | None, Exception]:
    """After a failure to assemble the series: the first file whose own pixels do not decode, and why
    (each read again, one at a time); None when each decodes alone."""
    for path in files:
        try:
            pydicom.dcmread(path).pixel_array  # noqa: B018 - decoded only to find the damaged file
        except MemoryError:
            break
        except Exception as e:  # noqa: BLE001 - as above
            return path, e
    return None, error
