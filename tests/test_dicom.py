"""DICOM in and DICOM SEG out, driven through neoseg-infer as a user would: series synthesised from the
cohort's scans (axial, sagittal, coronal, oblique; single-frame and enhanced multi-frame) give the same
label maps in world space as NIfTI files holding the same voxels and geometry; the SEG read back with
highdicom equals the label map; bad series are refused with one line; no patient data leaks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("highdicom")
import pydicom  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402

from dicom_synth import PATIENT_ID, PATIENT_NAME, new_study, rotation, write_series  # noqa: E402
from neoseg.cli.infer import app  # noqa: E402
from neoseg.core.hierarchy import builtin  # noqa: E402
from neoseg.data.dhcp import find_sessions  # noqa: E402

runner = CliRunner()
SECRETS = (PATIENT_NAME, PATIENT_ID, "Secretina", "ACC-SECRET-9")


@pytest.fixture(scope="module")
def cohort(tiny_dataset):
    """A cohort scan as integers (DICOM stores integers) and its affine."""
    img = nib.load(find_sessions(tiny_dataset)[5].t2)
    return np.round(np.asarray(img.dataobj)).astype(np.int16), img.affine


def orientations(data, affine) -> dict:
    """The same head stored axial, sagittal, coronal (slice order reversed) and oblique."""
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = data.shape[2] - 1
    return {"axial": (data, affine),
            "sagittal": (np.transpose(data, (1, 2, 0)), affine[:, [1, 2, 0, 3]]),
            "coronal": (np.transpose(data, (0, 2, 1))[:, :, ::-1], affine[:, [0, 2, 1, 3]] @ flip),
            "oblique": (data, rotation(20, 0) @ rotation(10, 2) @ affine)}


def labels_of(path: Path) -> nib.Nifti1Image:
    return nib.load(path)


def world_equal(reference: nib.Nifti1Image, other: nib.Nifti1Image, outside: int = 0) -> bool:
    """``other`` placed in world space on ``reference``'s grid (voxel centres must coincide) equals
    ``reference``; voxels of ``reference`` that ``other`` does not cover must be ``outside``."""
    to_ref = np.linalg.inv(reference.affine) @ other.affine
    ijk = np.indices(other.shape).reshape(3, -1)
    mapped = to_ref[:3, :3] @ ijk + to_ref[:3, 3:]
    index = np.round(mapped).astype(int)
    assert np.abs(mapped - index).max() < 1e-3, "voxel centres do not coincide"
    assert all((index[a] >= 0).all() and (index[a] < reference.shape[a]).all() for a in range(3))
    placed = np.full(reference.shape, outside, np.int64)
    placed[tuple(index)] = np.asarray(other.dataobj).reshape(-1)
    return np.array_equal(placed, np.asarray(reference.dataobj))


@pytest.fixture(scope="module")
def converted(model, cohort, tmp_path_factory):
    """Every orientation, single- and multi-frame, as DICOM and as NIfTI, segmented by neoseg-infer."""
    root = tmp_path_factory.mktemp("orient")
    folders, niftis = [], []
    for name, (data, affine) in orientations(*cohort).items():
        for multiframe in (False, True):
            tag = f"{name}-{'enhanced' if multiframe else 'single'}"
            write_series(data * 2, affine, root / "dicom" / tag, multiframe=multiframe, slope=2.0,
                         intercept=-10.0 if multiframe else 0.0)
            folders.append(root / "dicom" / tag)
            niftis.append(root / "nifti" / f"{tag}.nii.gz")
            niftis[-1].parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image((data * 2).astype(np.int16), affine), niftis[-1])
    summary = root / "summary.json"
    result = runner.invoke(app, [*map(str, folders), "-m", str(model), "-o", str(root / "out_dicom"),
                                 "--dicom-seg", "--json", str(summary)])
    assert result.exit_code == 0, result.output
    result_nifti = runner.invoke(app, [*map(str, niftis), "-m", str(model), "-o", str(root / "out_nifti")])
    assert result_nifti.exit_code == 0, result_nifti.output
    return root, folders, result.output, summary


def test_dicom_and_nifti_give_world_identical_labels(converted):
    root, folders, output, _ = converted
    for folder in folders:
        dicom = labels_of(root / "out_dicom" / f"{folder.name}_desc-neoseg_dseg.nii.gz")
        nifti = labels_of(root / "out_nifti" / f"{folder.name}_desc-neoseg_dseg.nii.gz")
        assert len(np.unique(np.asarray(nifti.dataobj))) > 3, "a real segmentation to compare"
        assert world_equal(nifti, dicom), folder.name  # 100 % of the voxels, in world space
    assert "oblique slices (" in output and "without resampling" in output


def test_seg_read_back_equals_the_label_map(converted):
    from neoseg.dicom.seg import read_seg

    root, folders, _, _ = converted
    hierarchy = builtin()
    for folder in folders:
        seg_path = root / "out_dicom" / f"{folder.name}_desc-neoseg_seg.dcm"
        back = read_seg(seg_path, hierarchy)
        dseg = labels_of(root / "out_dicom" / f"{folder.name}_desc-neoseg_dseg.nii.gz")
        assert world_equal(dseg, back), folder.name
    seg = pydicom.dcmread(seg_path)
    source = pydicom.dcmread(next(folder.iterdir()))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID  # the same study, and the source series referenced
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {source.SOPInstanceUID}
    codes = {str(s.TrackingID): (s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
                                 s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence}
    assert codes["wm"] == ("SCT", "68523003") and codes["cgm"] == ("SCT", "40146001")
    assert codes["ventricles"] == ("SCT", "35764002") and codes["dgm"][0] == "99NEOSEG"
    assert "unlabelled" not in codes and "tcv" not in codes  # the outside and parents are no segments
    assert all(len(s.RecommendedDisplayCIELabValue) == 3 for s in seg.SegmentSequence)  # the QC colours
    assert str(seg.PatientID) == PATIENT_ID  # copied, as the standard requires of a derived object


def test_volumes_keyed_by_uids_and_no_patient_data_in_logs(converted):
    root, folders, output, summary = converted
    folder = folders[0]
    record = json.loads((root / "out_dicom" / f"{folder.name}_desc-neoseg_volumes.json").read_text())
    source = pydicom.dcmread(next(folder.iterdir()))
    assert record["StudyInstanceUID"] == source.StudyInstanceUID
    assert record["SeriesInstanceUID"] == source.SeriesInstanceUID
    tcv = next(v for v in record["Volumes"] if v["structure"] == "tcv")
    parts = sum(v["volume_ml"] for v in record["Volumes"] if v["structure"] in ("cgm", "wm", "dgm"))
    assert tcv["volume_ml"] == pytest.approx(parts, abs=1e-3) and tcv["volume_ml"] > 0
    texts = [output, summary.read_text()] + [p.read_text() for p in (root / "out_dicom").glob("*.json")]
    for text in texts:
        assert not any(secret in text for secret in SECRETS)


# ---- a study: the T2w series among others --------------------------------------------------------
@pytest.fixture(scope="module")
def study(cohort, tmp_path_factory):
    data, affine = cohort
    root = tmp_path_factory.mktemp("study")
    uids = new_study()
    write_series(data, affine, root / "study" / "s3", uids, description="T2W_TSE_AX", number=3)
    write_series(data[:, :, ::4], affine @ np.diag([1, 1, 4, 1]), root / "study" / "s1", uids,
                 description="Survey", number=1)
    # a three-plane localizer: one series, slices in three orientations
    localizer = root / "study" / "s2"
    for k, (d, a) in enumerate(list(orientations(data, affine).values())[:3]):
        write_series(d[:, :, 10:11], a @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 10], [0, 0, 0, 1.0]]),
                     localizer, uids, description="3-plane loc", number=2, series_uid="1.2.3.2", prefix=f"p{k}")
    nib.save(nib.Nifti1Image(data, affine), root / "t2.nii.gz")
    index = pydicom.dataset.Dataset()  # a DICOMDIR, as exported studies carry: no image, passed over
    index.file_meta = pydicom.dataset.FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    index.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    index.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    index.FileSetID = "STUDY"
    index.save_as(root / "study" / "DICOMDIR", enforce_file_format=True)
    return root


def test_study_folder_chooses_the_t2w_series(model, study, tmp_path):
    result = runner.invoke(app, [str(study / "study"), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("series 1 (Survey)" in x and "matches none of t2" in x for x in lines)
    assert any("series 2 (3-plane loc)" in x and "not a volume" in x for x in lines)
    assert any("series 3 (T2W_TSE_AX)" in x and "chosen" in x for x in lines)
    assert not any(p.is_file() for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert runner.invoke(app, [str(study / "study"), "-m", str(model), "-o", str(out)]).exit_code == 0
    assert runner.invoke(app, [str(study / "t2.nii.gz"), "-m", str(model), "-o", str(out)]).exit_code == 0
    assert world_equal(labels_of(out / "t2_desc-neoseg_dseg.nii.gz"), labels_of(out / "study_desc-neoseg_dseg.nii.gz"))
    assert (out / "dseg.tsv").is_file() and (out / "study_desc-neoseg_dseg.json").is_file()
    # a rerun skips the finished series, as for scan files and datasets
    before = (out / "study_desc-neoseg_dseg.nii.gz").stat().st_mtime_ns
    result = runner.invoke(app, [str(study / "study"), "-m", str(model), "-o", str(out)])
    assert result.exit_code == 0 and "skipped (finished earlier)" in result.output, result.output
    assert (out / "study_desc-neoseg_dseg.nii.gz").stat().st_mtime_ns == before
    # the user's rules: a plane no series has is refused, naming each series' verdict
    result = runner.invoke(app, [str(study / "study"), "-m", str(model), "-o", str(tmp_path / "x"),
                                 "--plane", "sagittal"])
    assert result.exit_code == 2 and "no series passes" in result.output
    assert "axial slices, not sagittal" in result.output
    result = runner.invoke(app, [str(study / "study"), "-m", str(model), "-o", str(tmp_path / "x"),
                                 "--series-description", "."])
    assert result.exit_code == 2 and "2 series pass" in result.output and "--series-description" in result.output
    result = runner.invoke(app, [str(study / "study"), "-m", str(model), "-o", str(tmp_path / "x"),
                                 "--series-description", ".", "--max-voxel-size", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "study_desc-neoseg_dseg.nii.gz").is_file()


# ---- refusals ----------------------------------------------------------------------------------
def _missing_slice(folder, data, affine):
    write_series(data, affine, folder)
    (folder / "im0012.dcm").unlink()


def _uneven(folder, data, affine):
    write_series(data, affine, folder)
    ds = pydicom.dcmread(folder / "im0012.dcm")
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 0.5]
    ds.save_as(folder / "im0012.dcm")


def _two_volumes(folder, data, affine):
    uid = write_series(data, affine, folder)
    write_series(data, affine, folder, series_uid=uid, prefix="echo2-")


def _mixed_sizes(folder, data, affine):
    uid = write_series(data, affine, folder)
    write_series(data[:20, :20, :4], affine, folder / "x", series_uid=uid, prefix="small")


def _localizer(folder, data, affine):
    """Three planes in one series, as scanners' localizers are."""
    for k, (d, a) in enumerate(list(orientations(data, affine).values())[:3]):
        write_series(d[:, :, 8:12], a, folder, series_uid="1.2.3.4", prefix=f"p{k}")


def _unknown_compression(folder, data, affine):
    write_series(data, affine, folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"  # JPEG 2000 Part 2: no decoder
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.save_as(path)


def _not_mr(folder, data, affine):
    write_series(data, affine, folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(path)


def _enhanced_two_volumes(folder, data, affine):
    write_series(np.concatenate([data, data], axis=2),
                 affine @ np.diag([1, 1, 0.5, 1]) @ np.diag([1, 1, 1, 1]), folder, multiframe=True)
    ds = pydicom.dcmread(next(folder.iterdir()))
    n = len(ds.PerFrameFunctionalGroupsSequence) // 2
    for k in range(n):  # the second half repeats the first half's positions
        ds.PerFrameFunctionalGroupsSequence[n + k].PlanePositionSequence[0].ImagePositionPatient = \
            ds.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence[0].ImagePositionPatient
    ds.save_as(next(folder.iterdir()))


@pytest.mark.parametrize("make, expected", [
    (_missing_slice, "slices missing: a gap of 4 mm"),
    (_uneven, "uneven slice spacing"),
    (_two_volumes, "repeat a slice position"),
    (_mixed_sizes, "frames of different sizes"),
    (_localizer, "frames in different orientations"),
    (_unknown_compression, "cannot decode"),
    (_not_mr, "is not an MR image series"),
    (_enhanced_two_volumes, "repeat a slice position"),
])
def test_bad_series_are_refused_with_one_line(make, expected, model, cohort, tmp_path):
    folder = tmp_path / "series"
    make(folder, *cohort)
    out = tmp_path / "out"
    result = runner.invoke(app, [str(folder), "-m", str(model), "-o", str(out), "--dicom-seg"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("neoseg-infer: error:")]
    assert len(error) == 1 and expected in error[0] and str(folder) in error[0], result.output
    assert "Traceback" not in result.output and not any(secret in result.output for secret in SECRETS)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_compressed_series_read_as_uncompressed(cohort, tmp_path):
    """RLE (pydicom's own codec) and JPEG-LS (pyjpegls, a highdicom dependency) lossless series hold
    the same voxels as the uncompressed one."""
    from pydicom.uid import JPEGLSLossless, RLELossless

    from neoseg.dicom.choice import SeriesRules, choose
    from neoseg.dicom.series import find_series
    from neoseg.dicom.volume import read_series

    data, affine = cohort
    read = {}
    for name, syntax in (("plain", pydicom.uid.ExplicitVRLittleEndian), ("rle", RLELossless),
                         ("jpegls", JPEGLSLossless)):
        write_series(data, affine, tmp_path / name, syntax=syntax)
        read[name] = read_series(choose(find_series(tmp_path / name), SeriesRules(), tmp_path / name), tmp_path / name)
    assert str(pydicom.dcmread(next((tmp_path / "rle").iterdir())).file_meta.TransferSyntaxUID) == RLELossless
    for name in ("rle", "jpegls"):
        assert np.array_equal(read[name].scan.data, read["plain"].scan.data)
        assert np.allclose(read[name].scan.affine, read["plain"].scan.affine)


def test_a_folder_of_neither_kind_is_named_as_such(model, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    result = runner.invoke(app, [str(tmp_path), "-m", str(model), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "neither a BIDS / dHCP-layout dataset" in result.output
    assert "nor a DICOM folder" in result.output


def test_dicom_options_need_dicom_input(model, study, tmp_path):
    result = runner.invoke(app, [str(study / "t2.nii.gz"), "-m", str(model), "-o", str(tmp_path), "--dicom-seg"])
    assert result.exit_code == 2 and "--dicom-seg applies to DICOM input" in result.output
    result = runner.invoke(app, [str(study / "study"), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "missing -m MODEL" in result.output


def test_dicom_path_runs_without_torch(model, study, tmp_path):
    """The scanner-side install (runtime + dicom extra) needs no torch or onnx, SEG included."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
            "from neoseg.cli.infer import main; "
            f"sys.argv = ['neoseg-infer', {str(study / 'study')!r}, '-m', {str(model)!r}, '-o', {str(tmp_path)!r}, "
            "'--dicom-seg']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "study_desc-neoseg_seg.dcm").is_file()


def test_without_the_dicom_extra_the_error_names_it(study, tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['pydicom'] = None; from neoseg.cli.infer import main; "
            f"sys.argv = ['neoseg-infer', {str(study / 'study')!r}, '--dry-run']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install -e '.[dicom]'" in done.stderr, done.stderr


def test_tilted_stacking_is_refused(cohort, tmp_path):
    """Slices whose positions drift sideways (gantry tilt) are no regular volume."""
    from neoseg.core.scans import ScanError
    from neoseg.dicom.choice import SeriesRules, choose
    from neoseg.dicom.series import find_series
    from neoseg.dicom.volume import read_series

    data, affine = cohort
    shear = np.eye(4)
    shear[1, 2] = 0.1  # each slice 0.1 voxel further along y
    write_series(data, affine @ shear, tmp_path / "tilt")
    with pytest.raises(ScanError, match="not stacked along their normal"):
        read_series(choose(find_series(tmp_path / "tilt"), SeriesRules(), tmp_path / "tilt"), tmp_path / "tilt")
