"""DICOM folders as they arrive from scanners and PACS, through neoseg-infer: a repeated T2w acquisition
(chosen by series number or by the documented tie rule, never silently), neoseg's own SEG or a key
object beside a single series, damaged and duplicated files, NIfTI scans given with DICOM folders,
and the SEG codes of a hierarchy of one's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("highdicom")
import pydicom  # noqa: E402
from pydicom.uid import RLELossless, generate_uid  # noqa: E402

from dicom_synth import new_study, write_series  # noqa: E402
from neoseg.cli.infer import app  # noqa: E402
from neoseg.core.hierarchy import Hierarchy, builtin  # noqa: E402
from neoseg.data.dhcp import find_sessions  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tiny_dataset):
    img = nib.load(find_sessions(tiny_dataset)[5].t2)
    return np.round(np.asarray(img.dataobj)).astype(np.int16), img.affine


def run(*args) -> tuple[int, str, list[str]]:
    """Exit code, output, and the error lines of a neoseg-infer call."""
    result = runner.invoke(app, [str(a) for a in args])
    errors = [line for line in result.output.splitlines() if line.startswith("neoseg-infer: error:")]
    return result.exit_code, result.output, errors


def source_of(out: Path, stem: str) -> str:
    return json.loads((out / f"{stem}_desc-neoseg_mask.json").read_text())["SourceDigest"]


# ---- a repeated acquisition -------------------------------------------------------------------
@pytest.fixture(scope="module")
def repeat(cohort, tmp_path_factory):
    """A study with a survey and the T2w series acquired twice (series 3 and its repeat 5)."""
    data, affine = cohort
    root = tmp_path_factory.mktemp("repeat") / "repeat"
    uids = new_study()
    series = {n: write_series(data, affine, root / f"s{n}", uids, description="T2 TSE axial", number=n)
              for n in (3, 5)}
    write_series(data[:, :, ::4], affine @ np.diag([1, 1, 4, 1]), root / "s1", uids, description="Survey", number=1)
    return root, series


def test_repeats_are_refused_with_fixes_that_separate_them(model, repeat, tmp_path):
    root, _ = repeat
    code, output, errors = run(root, "-m", model, "-o", tmp_path / "out")
    assert code == 2 and len(errors) == 1, output
    assert "2 series pass" in errors[0] and "series 3 (T2 TSE axial): passes" in errors[0]
    assert "--series-number 3 or --series-number 5" in errors[0] and "--repeats last" in errors[0]
    # description, plane and voxel size are the same: options that cannot separate them are not suggested
    assert "--series-description" not in errors[0] and "--plane" not in errors[0]
    assert not (tmp_path / "out").exists()
    code, output, _ = run(root, "--dry-run")
    assert code == 0 and "-> none chosen: choose one with --series-number 3" in output


def test_a_series_number_chooses_one_repeat(model, repeat, tmp_path):
    root, series = repeat
    code, output, _ = run(root, "-m", model, "-o", tmp_path, "--series-number", 5)
    assert code == 0, output
    assert source_of(tmp_path, "repeat") == f"SeriesInstanceUID:{series[5]}"
    code, output, errors = run(root, "-m", model, "-o", tmp_path / "x", "--series-number", 4)
    assert code == 2 and "no series passes" in errors[0] and "series number 3, not 4" in errors[0]
    code, output, errors = run(tmp_path / "repeat_desc-neoseg_dseg.nii.gz", "-m", model, "-o", tmp_path / "x",
                               "--series-number", 5)
    assert code == 2 and "--series-number applies to DICOM input" in errors[0]


def test_the_tie_rule_takes_the_last_or_first_repeat_and_says_so(model, repeat, tmp_path):
    root, series = repeat
    code, output, _ = run(root, "-m", model, "-o", tmp_path, "--repeats", "last")
    assert code == 0, output
    assert source_of(tmp_path, "repeat") == f"SeriesInstanceUID:{series[5]}"
    warning = next(line for line in output.splitlines() if "repeats of one acquisition" in line)
    assert warning.startswith("neoseg-infer: warning:") and "series 5 (T2 TSE axial)" in warning
    sidecar = json.loads((tmp_path / "repeat_desc-neoseg_mask.json").read_text())
    assert any("repeats of one acquisition" in w for w in sidecar["Warnings"])  # kept with the result
    code, output, _ = run(root, "--dry-run", "--repeats", "first")
    assert code == 0 and "-> series 3 (T2 TSE axial)" in output
    assert "series 5 (T2 TSE axial)" in output and "a later repeat of series 3" in output


def test_the_tie_rule_takes_no_series_that_are_not_repeats(model, cohort, tmp_path):
    """Two different T2w series (axial, coronal) are no repeats: --repeats last does not pick one."""
    data, affine = cohort
    uids = new_study()
    write_series(data, affine, tmp_path / "study" / "a", uids, description="T2 axial", number=3)
    write_series(np.transpose(data, (0, 2, 1)), affine[:, [0, 2, 1, 3]], tmp_path / "study" / "c", uids,
                 description="T2 coronal", number=4)
    code, output, errors = run(tmp_path / "study", "-m", model, "-o", tmp_path / "out", "--repeats", "last")
    assert code == 2 and "2 series pass" in errors[0], output
    assert "narrow them with --series-description or --plane" in errors[0] and "--repeats" not in errors[0]


# ---- objects beside the images -----------------------------------------------------------------
def _key_object(folder: Path, study: dict) -> None:
    """A Key Object Selection document, as a PACS stores beside the images: no pixels."""
    ds = pydicom.dataset.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.59", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study["uid"], generate_uid()
    ds.Modality, ds.SeriesNumber = "KO", 99
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "KO0001", enforce_file_format=True)


def test_own_seg_and_key_objects_beside_a_single_series_do_not_count(model, cohort, tmp_path):
    """A folder of one series whose description lacks 't2': segmenting it with the SEG written inside
    it, then again, skips it as finished; a key object beside it changes nothing."""
    data, affine = cohort
    folder = tmp_path / "axtse"
    uids = new_study()
    write_series(data, affine, folder, uids, description="AX TSE 2mm", number=4)
    _key_object(folder / "pacs", uids)
    out = folder / "neoseg"
    code, output, _ = run(folder, "-m", model, "-o", out, "--dicom-seg")
    assert code == 0, output
    seg = out / "axtse_desc-neoseg_seg.dcm"
    before = seg.stat().st_mtime_ns
    code, output, _ = run(folder, "-m", model, "-o", out, "--dicom-seg")
    assert code == 0 and "skipped (finished earlier)" in output, output
    assert seg.stat().st_mtime_ns == before
    code, output, _ = run(folder, "--dry-run")
    assert "series 1004 (neoseg segmentation of series 4): SEG" in output and "-> series 4 (AX TSE 2mm)" in output


# ---- damaged and duplicated files ---------------------------------------------------------------
def _cut_header(folder: Path, data, affine) -> Path:
    write_series(data, affine, folder)
    path = folder / "im0010.dcm"
    path.write_bytes(path.read_bytes()[:700])  # within the header; the DICM marker intact
    return path


def _cut_pixels(folder: Path, data, affine) -> Path:
    write_series(data, affine, folder)
    path = folder / "im0011.dcm"
    path.write_bytes(path.read_bytes()[:-300])
    return path


def _cut_compressed(folder: Path, data, affine) -> Path:
    write_series(data, affine, folder, syntax=RLELossless)
    path = folder / "im0009.dcm"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _short_pixels(folder: Path, data, affine) -> Path:
    """Whole as a file, but holding fewer pixels than Rows x Columns: found when the pixels are decoded."""
    write_series(data, affine, folder)
    path = folder / "im0012.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-200]
    ds.save_as(path)
    return path


@pytest.mark.parametrize("damage, expected", [
    (_cut_header, "is damaged: it ends after 700 bytes, before its pixel data"),
    (_cut_pixels, "is damaged: its pixel data are cut short"),
    (_cut_compressed, "is damaged: it ends within its pixel data"),
    (_short_pixels, "could not be read (ValueError: The number of bytes of pixel data is less than expected"),
])
def test_damaged_files_are_named_in_one_line(damage, expected, model, cohort, tmp_path):
    folder = tmp_path / "series"
    path = damage(folder, *cohort)
    out = tmp_path / "out"
    code, output, errors = run(folder, "-m", model, "-o", out, "--dicom-seg")
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert f"{path} " in errors[0] and expected in errors[0], errors[0]
    assert errors[0].endswith(("again, or remove it", "export the series again")), errors[0]
    assert "or the )" not in errors[0]  # a cause is never cut mid-sentence
    assert "lack ImagePositionPatient" not in errors[0]  # damage is not blamed on the geometry
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_an_instance_stored_twice_is_read_once(model, cohort, tmp_path):
    folder = tmp_path / "dup"
    write_series(*cohort, folder)
    shutil.copy(folder / "im0010.dcm", folder / "im0010 (copy).dcm")
    other = pydicom.dcmread(folder / "im0011.dcm")  # the same instance, re-encoded elsewhere: other bytes
    other.ImageComments = "exported again"
    other.save_as(folder / "zz-im0011.dcm")
    code, output, _ = run(folder, "-m", model, "-o", tmp_path / "out")
    assert code == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("neoseg-infer: warning:")]
    assert any(str(folder / "im0010 (copy).dcm") in w and f"{folder / 'im0010.dcm'} " in w and "same file" in w
               and w.endswith("read once") for w in warnings), output
    assert any(f"{folder / 'im0011.dcm'} and {folder / 'zz-im0011.dcm'} hold the same instance" in w
               and "other bytes" in w for w in warnings), output


# ---- NIfTI scans with DICOM folders ---------------------------------------------------------------
def test_nifti_scans_and_dicom_folders_together(model, cohort, tmp_path):
    data, affine = cohort
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "t2.nii.gz")
    write_series(data, affine, tmp_path / "a")
    write_series(data, affine, tmp_path / "b")
    out = tmp_path / "out"
    code, output, _ = run(tmp_path / "t2.nii.gz", tmp_path / "a", tmp_path / "b", "-m", model, "-o", out)
    assert code == 0, output
    for stem in ("t2", "a", "b"):
        assert (out / f"{stem}_desc-neoseg_dseg.nii.gz").is_file()
    assert (out / "dseg.tsv").is_file()
    assert [line.split("]")[1].split(":")[0].strip() for line in output.splitlines() if line.startswith("[")] == \
        ["t2.nii.gz", "a, series 3 (T2w TSE)", "b, series 3 (T2w TSE)"]  # in the order given
    # two inputs that would write the same files are refused before any work
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii.gz")
    code, output, errors = run(tmp_path / "a.nii.gz", tmp_path / "a", "-m", model, "-o", tmp_path / "x")
    assert code == 2 and "would both write" in errors[0] and not (tmp_path / "x").exists()


def test_a_dataset_folder_with_other_inputs_is_refused_as_such(model, tiny_dataset, cohort, tmp_path):
    write_series(*cohort, tmp_path / "a")
    code, output, errors = run(tiny_dataset, tmp_path / "a", "-m", model, "-o", tmp_path / "out")
    assert code == 2 and f"{tiny_dataset} is a dataset folder" in errors[0] and "pass it alone" in errors[0]
    assert "several folders" not in output


# ---- SEG codes --------------------------------------------------------------------------------------
MYLAB = {"name": "mylab", "channels": [
    {"name": "outside", "value": 0}, {"name": "csf", "values": [24, 5]}, {"name": "cortex", "value": 300},
    {"name": "wm", "value": 41}, {"name": "cerebrum", "value": 500, "children": ["cortex", "wm"]}]}


def test_seg_codes_of_a_hierarchy_of_ones_own_are_private(cohort, tmp_path):
    """Channels named as drawem9's (csf, wm) in a lab's own scheme are not given drawem9's SNOMED codes."""
    from neoseg.dicom.choice import SeriesRules, choose
    from neoseg.dicom.seg import segment_codes, write_seg_outputs
    from neoseg.dicom.series import find_series
    from neoseg.dicom.volume import read_series

    mylab = Hierarchy.from_dict(MYLAB)
    renamed = Hierarchy(name="my-drawem9-copy", channels=builtin().channels)
    assert segment_codes("csf", builtin())[1].value == "65216001"
    assert segment_codes("csf", renamed)[1].value == "65216001"  # the built-in channels, whatever the name
    assert segment_codes("csf", mylab)[1].scheme_designator == "99NEOSEG"
    data, affine = cohort
    write_series(data, affine, tmp_path / "s")
    read = read_series(choose(find_series(tmp_path / "s"), SeriesRules(), tmp_path / "s"), tmp_path / "s")
    labels = np.zeros(read.scan.data.shape, np.uint16)
    labels[read.scan.data > 50], labels[read.scan.data > 110], labels[read.scan.data > 160] = 24, 300, 41
    info = SimpleNamespace(hierarchy=mylab, architecture="toy", config_digest="0")
    seg = write_seg_outputs(read, labels, info, tmp_path / "seg.dcm", tmp_path / "volumes.json")
    codes = {str(s.TrackingID): (s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
                                 s.SegmentedPropertyTypeCodeSequence[0].CodeValue, str(s.SegmentLabel))
             for s in seg.SegmentSequence}
    assert codes == {"csf": ("99NEOSEG", "csf", "csf"), "cortex": ("99NEOSEG", "cortex", "cortex"),
                     "wm": ("99NEOSEG", "wm", "wm")}
    volumes = {v["structure"]: v["code"] for v in json.loads((tmp_path / "volumes.json").read_text())["Volumes"]}
    assert volumes["csf"] == "99NEOSEG:csf" and volumes["wm"] == "99NEOSEG:wm" and volumes["cerebrum"] is None
