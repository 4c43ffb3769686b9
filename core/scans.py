"""Input checks for scans and label maps (numpy and nibabel only), shared by ``neoseg-infer`` and
the training and evaluation readers.

A file is inspected by its header before any voxel is read: the claimed data size is compared
with the file's size (for ``.gz`` with the most that DEFLATE can expand it to, so nothing is
decompressed first) and with the memory available; shape, data type, orientation and (for scans)
the field of view are checked; only then is the data read, at most the claimed number of bytes.
Voxel sizes are in mm: a header's metres or microns (``xyzt_units``) are converted, the affine
itself is kept as the file states it. Every refusal is a :class:`ScanError` (a ``ValueError``):
one line that names the file, the problem and the fix.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from . import gz
from .sizes import available_memory, dtype_name, human_bytes, one_line, plain_shape

# DEFLATE expands at most 1032-fold; gzip headers and several members add a little
GZIP_MAX_RATIO = 1032
GZIP_SLACK = 1 << 16
SINGLE_FILE = {nib.Nifti1Pair: nib.Nifti1Image, nib.Nifti2Pair: nib.Nifti2Image}
PAIR_EXTENSIONS = (".hdr", ".img")
COMPRESSED = (".gz", ".bz2", ".zst")
GZIP_MAGIC = b"\x1f\x8b"
NIFTI_HEADER_SIZES = (348, 540)  # sizeof_hdr, the first 4 bytes of a NIfTI-1 / NIfTI-2 file
# mm per spatial unit of xyzt_units (its low 3 bits: 1 metre, 2 mm, 3 micron); 0 (unknown) and
# invalid codes are taken as mm, as NIfTI readers do
MM_PER_UNIT = {1: 1000.0, 2: 1.0, 3: 0.001}
UNIT_NAMES = {1: "metres", 2: "mm", 3: "microns"}
# a field of view (mm) that can hold a neonatal head; outside it the voxel sizes or units are wrong
# (the least is far below a head: test volumes of 8 voxels of 1 mm must pass)
MIN_FOV_MM = 5.0  # the largest extent at least
MAX_FOV_MM = 1000.0  # every extent at most


class ScanError(ValueError):
    """An input that neoseg refuses; the message is one line: file, problem, fix."""


@dataclass
class Scan:
    """A checked volume: ``data`` (X, Y, Z) as stored (axis order of the file), the affine that
    places it in world space, voxel sizes (mm) from that affine, and what was noticed."""

    path: Path
    image: nib.Nifti1Image  # single-file NIfTI image holding ``data``, with the file's header
    data: np.ndarray
    affine: np.ndarray  # as the file states it (in its own units)
    zooms: tuple[float, float, float]  # mm
    nonfinite: np.ndarray | None = None  # bool mask of voxels that were NaN or +-Inf (set to background)
    notes: list[str] = field(default_factory=list)
    source: str = ""  # what was read, to tell it from another input of the same name: a file's SHA-256, a series UID

    @property
    def nonfinite_count(self) -> int:
        return 0 if self.nonfinite is None else int(np.count_nonzero(self.nonfinite))


def voxel_size(img) -> tuple[float, float, float]:
    """The voxel size of the first three axes in mm, as plain floats: the lengths of the affine's
    columns (where the voxels lie, as :func:`read_scan` places them; a pixdim that disagrees does
    not count), in the header's units converted to mm."""
    affine = np.asarray(img.affine, np.float64)[:3, :3]
    return tuple(float(z) * mm_per_unit(img.header) for z in np.sqrt((affine ** 2).sum(axis=0)))


def unit_code(header) -> int:
    """The spatial unit code of ``xyzt_units`` (as nibabel's ``get_xyzt_units()`` reads it, without
    its KeyError for invalid codes); 0 for formats without units."""
    try:
        return int(header["xyzt_units"]) & 0x07
    except (KeyError, ValueError, TypeError):  # Analyze, MGH: no such field
        return 0


def mm_per_unit(header) -> float:
    """The factor from the header's voxel sizes and affine to mm."""
    return MM_PER_UNIT.get(unit_code(header), 1.0)


# ---- header inspection ------------------------------------------------------------------------
@dataclass
class Header:
    path: Path
    image: nib.Nifti1Pair  # lazily loaded: only the header has been read
    shape: tuple[int, ...]  # the file's full shape
    shape3: tuple[int, int, int]  # the 3D volume it holds (trailing singleton axes dropped)
    dtype: np.dtype
    data_file: Path
    offset: int
    nbytes: int
    affine: np.ndarray
    zooms: tuple[float, float, float]  # mm

    @property
    def compressed(self) -> bool:
        return self.data_file.name.lower().endswith(COMPRESSED)


def inspect(path: str | Path, what: str = "scan",
            working_bytes: Callable[[tuple[int, int, int], tuple[float, float, float]], int] | None = None,
            ) -> Header:
    """Read and check the header of ``path``; nothing of the data is read. ``working_bytes``
    estimates the memory that processing a volume of that shape and voxel size (mm) needs besides
    the data itself. A scan's field of view is checked after the memory its voxels take (the
    voxel size plays no part in that) and before the estimate, which depends on the voxel size."""
    path = Path(path)
    if not path.exists():
        raise ScanError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise ScanError(f"{what} {path} is a folder; pass a NIfTI file (.nii, .nii.gz or a .hdr/.img pair)")
    _check_partner(path)
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for unreadable files
        _check_compression(path)
        raise ScanError(f"{path} is not a readable NIfTI file ({one_line(e)}); pass a NIfTI-1 or NIfTI-2 "
                        f".nii, .nii.gz or .hdr/.img file") from None
    if isinstance(img, nib.AnalyzeImage) and not isinstance(img, nib.Nifti1Pair):
        raise ScanError(f"{path} is an Analyze 7.5 file, which has no orientation; convert it to NIfTI with its "
                        f"orientation set (e.g. with the scanner's DICOM converter) and pass the .nii.gz")
    if not isinstance(img, nib.Nifti1Pair):
        raise ScanError(f"{path} is a {type(img).__name__.removesuffix('Image')} file, not a NIfTI volume; pass "
                        f"a 3D NIfTI scan (.nii, .nii.gz or a .hdr/.img pair)")
    header = img.header
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    shape3 = _check_shape(path, shape)
    _check_dtype(path, dtype, what)
    offset = int(img.dataobj.offset)
    nbytes = math.prod(shape) * dtype.itemsize
    data_file = Path(img.file_map["image"].filename)
    affine, zooms = _check_orientation(path, img)
    found = Header(path, img, shape, shape3, dtype, data_file, offset, nbytes, affine, zooms)
    _check_file_size(found)
    avail = available_memory()
    _check_memory(found, found.nbytes, avail)  # the voxels as stored, whatever their size in mm
    if what == "scan":
        _check_field_of_view(found)  # before the estimate, which grows with the voxel size
    if working_bytes:
        _check_memory(found, found.nbytes + working_bytes(found.shape3, found.zooms), avail)
    return found


def _check_compression(path: Path) -> None:
    """Refuse a NIfTI file whose name says the wrong compression (told by the gzip magic bytes)."""
    name = path.name
    if not name.lower().endswith((".nii", ".nii.gz")):
        return
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
        named_gz = name.lower().endswith(".gz")
        if gzipped == named_gz:
            return
        with (gzip.open if gzipped else open)(path, "rb") as f:
            start = f.read(4)
    except (OSError, EOFError, zlib.error):  # unreadable either way: the caller says so
        return
    if not _nifti_start(start):
        return  # not a NIfTI file under the other name either
    if gzipped:
        raise ScanError(f"{path} is gzip-compressed, but its name ends in .nii; name it {name}.gz")
    raise ScanError(f"{path} is not gzip-compressed, but its name ends in .nii.gz; name it {name[:-3]}")


def _nifti_start(start: bytes) -> bool:
    """Whether ``start`` opens a NIfTI-1 or -2 header (sizeof_hdr, either byte order)."""
    return len(start) == 4 and any(struct.unpack(f"{order}i", start)[0] in NIFTI_HEADER_SIZES for order in "<>")


def _check_partner(path: Path) -> None:
    name = path.name.lower()
    for ext in COMPRESSED:
        name = name.removesuffix(ext)
    if not name.endswith(PAIR_EXTENSIONS):
        return
    files = nib.Nifti1Pair.filespec_to_file_map(str(path))
    for role, label in (("header", "header"), ("image", "image data")):
        partner = Path(files[role].filename)
        if not partner.exists():
            raise ScanError(f"{path} is half of a .hdr/.img pair, but its {label} file {partner.name} is missing; "
                            f"keep the two files together, under the same name")


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    text = plain_shape(shape)
    if any(n <= 0 for n in shape):
        raise ScanError(f"{path} has a zero-length axis, shape {text}; the file holds no volume (its header is "
                        f"damaged or the export failed); export the scan again")
    if len(shape) < 3:
        raise ScanError(f"{path} is {len(shape)}D, shape {text}; neoseg segments 3D volumes; pass the whole 3D scan")
    extra = math.prod(shape[3:])
    if extra > 1:
        raise ScanError(f"{path} holds {extra} volumes, shape {text}; neoseg segments one 3D volume; extract one "
                        f"first (e.g. fslroi IN OUT 0 1)")
    shape3 = shape[:3]
    if min(shape3) < 2:
        raise ScanError(f"{path} is a single slice, shape {text}; neoseg segments 3D volumes; pass the whole 3D scan")
    return shape3


def _check_dtype(path: Path, dtype: np.dtype, what: str) -> None:
    if dtype.fields:
        if what == "scan" and set(dtype.fields) >= {"R", "G", "B"}:
            return  # read as grey when all channels are equal, see read_image
        raise ScanError(f"{path} holds {dtype_name(dtype)} colour voxels; neoseg reads single-channel "
                        f"{'label numbers' if what != 'scan' else 'grey values'}; convert it to one channel")
    if dtype.kind == "c":
        raise ScanError(f"{path} holds complex voxels ({dtype_name(dtype)}); neoseg reads real values; pass the "
                        f"magnitude image")
    if dtype.kind not in "biuf":
        raise ScanError(f"{path} has an unsupported data type ({dtype_name(dtype)}); store it as integers or floats")


def _check_orientation(path: Path, img) -> tuple[np.ndarray, tuple[float, float, float]]:
    header = img.header
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        raise ScanError(f"{path} has no orientation information (qform_code and sform_code are 0), so its "
                        f"left, right, front and back are unknown; set the scanner orientation in its header "
                        f"(e.g. fslorient -setqformcode 1, or re-export from the scanner's DICOM)")
    affine = np.asarray(img.affine, np.float64)
    which = "sform" if sform_code > 0 else "qform"
    if not np.all(np.isfinite(affine)):
        raise ScanError(f"{path}: its {which} affine holds NaN or infinite values; repair the header's orientation "
                        f"(e.g. re-export from DICOM)")
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # in the header's units, as the affine
    zooms = sizes * mm_per_unit(header)  # mm, for everything that follows
    if np.any(sizes <= 0) or abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * float(np.prod(sizes)):
        raise ScanError(f"{path}: its {which} affine is singular (voxel sizes "
                        f"{', '.join(f'{z:g}' for z in zooms)} mm); repair the header's orientation and voxel "
                        f"size (e.g. re-export from DICOM)")
    return affine, tuple(float(z) for z in zooms)


def _check_field_of_view(h: Header) -> None:
    """Refuse a scan whose field of view (voxels x voxel size) cannot hold a neonatal head: its
    voxel sizes or their units are wrong, and it would be segmented as empty or need absurd memory."""
    fov = [n * z for n, z in zip(h.shape3, h.zooms)]
    if MIN_FOV_MM <= max(fov) <= MAX_FOV_MM:
        return
    units = UNIT_NAMES.get(unit_code(h.image.header), "unknown, read as mm")
    problem = (f"too small to hold a neonatal head (under {MIN_FOV_MM:g} mm)" if max(fov) < MIN_FOV_MM else
               f"too large for a neonatal head (over {MAX_FOV_MM:g} mm)")
    raise ScanError(f"{h.path}: its field of view, {_xyz(fov)} mm ({_xyz(h.shape3)} voxels of {_xyz(h.zooms)} mm; "
                    f"units in the header: {units}), is {problem}; check the voxel sizes (pixdim) and units "
                    f"(xyzt_units) in the header")


def _xyz(values) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def _check_file_size(h: Header) -> None:
    claimed = h.offset + h.nbytes
    what = f"{plain_shape(h.shape)} {dtype_name(h.dtype)} voxels"
    size = h.data_file.stat().st_size
    damaged = "the file is truncated or its header is damaged; export the scan again"
    if not h.compressed and size < claimed:
        raise ScanError(f"{h.path}: its header claims {what} ({human_bytes(claimed)} with the header), but "
                        f"{h.data_file.name} holds only {human_bytes(size)}; {damaged}")
    if h.data_file.name.lower().endswith(".gz") and claimed > GZIP_MAX_RATIO * size + GZIP_SLACK:
        raise ScanError(f"{h.path}: its header claims {what} ({human_bytes(claimed)}), but a gzip file of "
                        f"{human_bytes(size)} holds at most {human_bytes(GZIP_MAX_RATIO * size + GZIP_SLACK)}; "
                        f"{damaged}")


def _check_memory(h: Header, need: int, avail: int | None) -> None:
    what = f"{plain_shape(h.shape)} {dtype_name(h.dtype)} voxels"
    if avail is not None and need > avail:
        raise ScanError(f"{h.path}: {what} need about {human_bytes(need)} of memory to process, but "
                        f"{human_bytes(avail)} is available; use a machine with more memory, or crop or "
                        f"downsample the scan")


# ---- reading ----------------------------------------------------------------------------------
def read_image(path: str | Path, what: str = "scan", working_bytes=None) -> tuple[Header, np.ndarray]:
    """The checked header and the voxel data (scaled as the header says; at most the claimed
    bytes are read, so a gzip bomb cannot fill the memory)."""
    h = inspect(path, what, working_bytes)
    try:
        if h.data_file.name.lower().endswith(".gz") and not isinstance(h.image, nib.Nifti1Image):
            data = np.asanyarray(h.image.dataobj)  # a compressed pair: nibabel reads the .img.gz
        elif h.data_file.name.lower().endswith(".gz"):
            data = _from_gzip(h)
        else:
            data = np.asanyarray(h.image.dataobj)
    except ScanError:  # a short gzip stream, said as such
        raise
    except MemoryError:
        raise ScanError(f"{h.path}: ran out of memory reading {human_bytes(h.nbytes)} of voxels; use a machine "
                        f"with more memory") from None
    except Exception as e:  # noqa: BLE001 - zlib, EOF and nibabel errors of damaged files
        raise ScanError(f"{h.path} could not be read ({one_line(e)}); the file is damaged; export it again") from None
    return h, data.reshape(h.shape3)


def _from_gzip(h: Header) -> np.ndarray:
    """A single-file .nii.gz's voxels, inflated straight into their array and scaled as nibabel
    scales them (``dataobj``'s slope and intercept)."""
    raw = np.empty(h.nbytes, np.uint8)
    got = gz.inflate_into(h.data_file, h.offset, raw)
    if got < h.nbytes:
        claimed, held = h.offset + h.nbytes, h.offset + got
        raise ScanError(f"{h.path}: its header claims {plain_shape(h.shape)} {dtype_name(h.dtype)} voxels "
                        f"({human_bytes(claimed)} uncompressed), but the file holds only {human_bytes(held)}; "
                        f"the file is truncated or its header is damaged; export the scan again")
    data = raw.view(h.dtype).reshape(h.shape, order="F")
    proxy = h.image.dataobj  # as nibabel's ArrayProxy applies scl_slope and scl_inter
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return apply_read_scaling(data, slope, inter)


def _grey(path: Path, data: np.ndarray) -> np.ndarray:
    """An RGB volume whose channels are equal is grey-scale stored as colour; others are refused."""
    r, g, b = (data[c] for c in "RGB")
    if not (np.array_equal(r, g) and np.array_equal(r, b)):
        raise ScanError(f"{path} is a colour (RGB24) volume with differing channels; neoseg reads single-channel "
                        f"grey values; pass the grey-scale scan")
    return np.array(r)


def read_scan(path: str | Path, working_bytes=None, nonfinite: str = "background") -> Scan:
    """A scan, checked. Non-finite voxels (NaN, +-Inf) are refused (``nonfinite="refuse"``) or set
    to the lowest finite value, i.e. background, and marked in ``Scan.nonfinite``. A scan with no
    finite voxel or a single value throughout is refused: it holds no image to segment."""
    h, data = read_image(path, "scan", working_bytes)
    path = h.path
    notes = []
    if data.dtype.fields:
        data = _grey(path, data)
        notes.append(f"{path} is stored as RGB24 with equal channels; read as grey-scale")
    mask = None
    lo, hi = float(data.min()), float(data.max())  # NaN if any voxel is NaN
    if data.dtype.kind == "f" and not (math.isfinite(lo) and math.isfinite(hi)):
        finite = np.isfinite(data)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad == finite.size:
            raise ScanError(f"{path}: every voxel is NaN or infinite; there is no image to segment; check the "
                            f"export that wrote it")
        if n_bad:
            share = f"{n_bad} of {finite.size} voxels ({100 * n_bad / finite.size:.2g} %)"
            if nonfinite == "refuse":
                raise ScanError(f"{path}: {share} are NaN or infinite; repair the scan (or remove this session)")
            low = float(data[finite].min())
            data = np.where(finite, data, np.asarray(low, data.dtype))
            mask = ~finite
            notes.append(f"{path}: {share} are NaN or infinite; they were treated as background and are "
                         f"labelled outside")
            lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise ScanError(f"{path}: every {'finite ' if mask is not None else ''}voxel has the value {lo:g}; there "
                        f"is no image to segment; check the export that wrote it")
    return Scan(path, _single_file(h, data), data, h.affine, h.zooms, mask, notes)


def read_labels(path: str | Path, max_value: int | None = None, working_bytes=None) -> Scan:
    """A label map, checked: finite, whole, non-negative numbers (at most ``max_value``)."""
    h, data = read_image(path, "label map", working_bytes)
    path = h.path
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise ScanError(f"{path}: label map holds NaN or infinite values; label maps hold whole label numbers; "
                            f"repair it (or remove this session)")
        fraction = data[data != np.round(data)]
        if fraction.size:
            raise ScanError(f"{path}: label map holds non-integer values (e.g. {float(fraction[0]):g}); label maps "
                            f"hold whole label numbers; is this a probability map or an image?")
    if data.size and float(data.min()) < 0:
        raise ScanError(f"{path}: label map holds negative values (down to {float(data.min()):g}); label values "
                        f"are 0 or more")
    if max_value is not None and data.size and float(data.max()) > max_value:
        raise ScanError(f"{path}: label map holds values up to {float(data.max()):g}, more than {max_value}; "
                        f"map its labels onto the hierarchy's values")
    if data.size and not data.any():
        raise ScanError(f"{path}: label map holds only 0 (outside) everywhere: no annotation; check the export that "
                        f"wrote it (or remove this session)")
    return Scan(path, _single_file(h, data), data, h.affine, h.zooms)


def labels_on_scan_grid(labels: Scan, scan: Scan) -> np.ndarray:
    """``labels``' data in ``scan``'s stored axis order (a map stored in another orientation is
    reoriented); refused with one line where the two lie on different voxel grids."""
    ornt = nib.orientations.ornt_transform(nib.io_orientation(labels.affine), nib.io_orientation(scan.affine))
    img = labels.image.as_reoriented(ornt)
    check_same_grid(labels.path, img, scan.image, scan.path)
    return np.asanyarray(img.dataobj)


def check_same_grid(path, img, reference, reference_path) -> None:
    """Refuse an annotation ``img``, in ``reference``'s orientation, that lies on another voxel grid."""
    name = Path(reference_path).name
    if tuple(img.shape[:3]) != tuple(reference.shape[:3]):
        raise ScanError(f"{path}: shape {plain_shape(img.shape[:3])} differs from {name}'s "
                        f"{plain_shape(reference.shape[:3])}; resample it onto the scan's grid (nearest neighbour)")
    gap = float(np.abs(img.affine - reference.affine).max())
    if gap > 1e-3:
        raise ScanError(f"{path}: same shape as {name} but placed elsewhere in space (their affines differ by up to "
                        f"{gap:.3g}); resample it onto the scan's grid (nearest neighbour), or correct its header")


def load_image(path: str | Path, what: str = "scan") -> nib.Nifti1Image:
    """A NIfTI file of the family nibabel reads, checked and read into a single-file image."""
    h, data = read_image(path, what)
    return _single_file(h, data)


def _single_file(h: Header, data: np.ndarray) -> nib.Nifti1Image:
    """The data in a single-file image with the file's header (pairs become .nii images); shape
    and data type follow ``data``."""
    kind = SINGLE_FILE.get(type(h.image), type(h.image))
    header = h.image.header.copy()
    header.set_data_dtype(data.dtype)
    if isinstance(h.image, nib.Nifti1Pair) and not isinstance(h.image, nib.Nifti1Image):
        header = kind.header_class.from_header(header)
    img = kind(data, h.affine, header)
    img.header.set_slope_inter(None, None)  # ``data`` is already scaled
    return img


def same_grid(scan: Scan, labels: Scan) -> None:
    """Refuse a label map that does not lie on its scan's voxel grid."""
    if scan.data.shape != labels.data.shape:
        raise ScanError(f"{labels.path}: label map shape {plain_shape(labels.data.shape)} differs from the scan's "
                        f"{plain_shape(scan.data.shape)} ({scan.path.name}); resample it onto the scan's grid "
                        f"(nearest neighbour)")
    if not np.allclose(scan.affine, labels.affine, atol=1e-3):
        raise ScanError(f"{labels.path}: label map lies on another grid than its scan {scan.path.name} (the affines "
                        f"differ); resample it onto the scan's grid (nearest neighbour)")
