"""DICOM series written from NIfTI volumes with pydicom, holding exactly the same voxels and geometry:
single-frame MR Image Storage or one enhanced MR multi-frame instance, in any orientation the affine
has (axial, sagittal, coronal, oblique). Patient identifiers are set to tell-tale values so that
tests can check they never reach logs or summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
PATIENT_NAME = "Doe^Secretina"
PATIENT_ID = "PID-4711-SECRET"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def rotation(degrees: float, axis: int) -> np.ndarray:
    """4x4 rotation about world axis ``axis`` (0 x, 1 y, 2 z)."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _geometry(affine: np.ndarray):
    """Row direction (along columns index i), column direction (along rows index j), spacings, normal step."""
    lps = RAS_TO_LPS @ affine[:3, :3]
    dx, dy = np.linalg.norm(lps[:, 0]), np.linalg.norm(lps[:, 1])
    return lps[:, 0] / dx, lps[:, 1] / dy, dx, dy, lps[:, 2]


def _base(study: dict, series_uid: str, sop_class: str, description: str, number: int) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = "20260101", "F"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study["uid"], "1", "ACC-SECRET-9"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260102", "101500", ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
    ds.ProtocolName = description
    ds.Modality, ds.SOPClassUID = "MR", sop_class
    ds.FrameOfReferenceUID = study["frame_uid"]
    ds.Manufacturer = "neoseg-tests"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    return ds


def _save(ds: Dataset, path: Path, sop_uid: str, syntax=ExplicitVRLittleEndian) -> None:
    ds.SOPInstanceUID = sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def new_study() -> dict:
    return {"uid": generate_uid(), "frame_uid": generate_uid()}


def write_series(data: np.ndarray, affine: np.ndarray, folder: Path, study: dict | None = None,
                 description: str = "T2w TSE", number: int = 3, multiframe: bool = False,
                 slope: float = 1.0, intercept: float = 0.0, syntax=ExplicitVRLittleEndian,
                 series_uid: str | None = None, prefix: str = "im") -> str:
    """``data`` (X, Y, Z) integers with a RAS ``affine`` -> DICOM files in ``folder`` (file k holds
    slice k along Z: pixel (row j, column i) = data[i, j, k]); stored values are (data - intercept) /
    slope. Returns the series UID."""
    study = study or new_study()
    series_uid = series_uid or generate_uid()
    stored = np.round((np.asarray(data, np.float64) - intercept) / slope).astype(np.int16)
    row_dir, col_dir, dx, dy, step = _geometry(affine)
    orientation = [float(v) for v in (*row_dir, *col_dir)]
    spacing = [float(dy), float(dx)]  # between rows, between columns
    origin = (RAS_TO_LPS @ affine[:3, 3])
    thickness = float(np.linalg.norm(step))
    nx, ny, nz = stored.shape
    if not multiframe:
        for k in range(nz):
            ds = _base(study, series_uid, MR_IMAGE, description, number)
            ds.InstanceNumber, ds.ImagesInAcquisition = k + 1, nz
            ds.Rows, ds.Columns = ny, nx
            ds.ImagePositionPatient = [float(v) for v in origin + k * step]
            ds.ImageOrientationPatient = orientation
            ds.PixelSpacing, ds.SliceThickness = spacing, thickness
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            _save(ds, Path(folder) / f"{prefix}{k + 1:04d}.dcm", generate_uid(), syntax)
        return series_uid
    ds = _base(study, series_uid, ENHANCED_MR, description, number)
    ds.InstanceNumber, ds.NumberOfFrames = 1, nz
    ds.Rows, ds.Columns = ny, nx
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20260102", "101500", "20260102101500"
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.ComplexImageComponent, ds.AcquisitionContrast = "MAGNITUDE", "T2"
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = spacing, thickness
    orient = Dataset()
    orient.ImageOrientationPatient = orientation
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "US"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in range(nz):
        item, pos, content = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in origin + k * step]
        content.DimensionIndexValues = [k + 1]
        item.PlanePositionSequence = Sequence([pos])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    dim_uid = generate_uid()
    index = Dataset()
    index.DimensionOrganizationUID = dim_uid
    index.DimensionIndexPointer = 0x00200032
    index.FunctionalGroupPointer = 0x00209113
    ds.DimensionOrganizationSequence = Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
    ds.DimensionIndexSequence = Sequence([index])
    ds.PixelData = np.ascontiguousarray(np.transpose(stored, (2, 1, 0))).tobytes()
    _save(ds, Path(folder) / f"{prefix}-enhanced.dcm", generate_uid(), syntax)
    return series_uid
