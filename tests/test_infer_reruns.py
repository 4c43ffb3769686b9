"""Reruns of neoseg-infer in file mode: what a user had is never replaced unasked (another model's
results, a hand-corrected label map, the input itself), what a new run replaces leaves nothing stale."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.cli.infer import app
from neoseg.data.dhcp import find_sessions

runner = CliRunner()


@pytest.fixture(scope="module")
def scan(tiny_dataset):
    return find_sessions(tiny_dataset)[4].t2


@pytest.fixture(scope="module")
def other_model(model, tmp_path_factory):
    """The same network in another file: another model as far as a rerun can tell."""
    import onnx

    retrained = onnx.load(model)
    retrained.metadata_props.add(key="note", value="retrained")
    path = tmp_path_factory.mktemp("other") / "retrained.onnx"
    onnx.save(retrained, path)
    return path


def infer(*args):
    return runner.invoke(app, [str(a) for a in args])


def outputs(out, kind):
    return next(out.glob(f"*_desc-neoseg_{kind}"))


def test_asking_for_more_outputs_never_replaces_another_models_or_a_hand_corrected_label_map(
        model, other_model, scan, tmp_path):
    out = tmp_path / "out"
    assert infer(scan, "-m", model, "-o", out).exit_code == 0
    dseg = outputs(out, "dseg.nii.gz")
    result = infer(scan, "-m", other_model, "-o", out, "--qc")
    assert result.exit_code == 2 and "were made by another model" in result.output, result.output
    corrected = nib.load(dseg)
    labels = np.asarray(corrected.dataobj).copy()
    labels[labels == labels.max()] = 1  # a hand correction
    nib.save(nib.Nifti1Image(labels, corrected.affine, corrected.header), dseg)
    edited = dseg.read_bytes()
    result = infer(scan, "-m", model, "-o", out)  # a plain rerun skips it: nothing is replaced
    assert result.exit_code == 0 and "1 of 1 scans already done" in result.output, result.output
    for extra in ("--qc", "--probabilities"):
        result = infer(scan, "-m", model, "-o", out, extra)
        assert result.exit_code == 2 and "have a label map edited since neoseg wrote it" in result.output, result.output
        assert "leave out what they lack (--qc, --probabilities)" in result.output
    outputs(out, "volumes.tsv").unlink()  # a missing output does not open the door either
    assert infer(scan, "-m", model, "-o", out).exit_code == 2
    assert dseg.read_bytes() == edited and not list(out.glob("*_qc.png"))
    result = infer(scan, "-m", model, "-o", out, "--qc", "--overwrite")
    assert result.exit_code == 0 and dseg.read_bytes() != edited and outputs(out, "qc.png").is_file()


def test_a_missing_output_is_redone_and_the_same_models_extras_are_kept(model, scan, tmp_path):
    out = tmp_path / "out"
    assert infer(scan, "-m", model, "-o", out, "--qc").exit_code == 0
    picture = outputs(out, "qc.png")
    outputs(out, "volumes.tsv").unlink()
    result = infer(scan, "-m", model, "-o", out)
    assert result.exit_code == 0 and "redone: some outputs were missing" in result.output, result.output
    assert picture.is_file() and outputs(out, "volumes.tsv").is_file()


def test_overwrite_with_another_model_leaves_none_of_the_earlier_runs_outputs(model, other_model, scan, tmp_path):
    out = tmp_path / "out"
    assert infer(scan, "-m", model, "-o", out, "--qc", "--probabilities").exit_code == 0
    seg = outputs(out, "dseg.nii.gz").with_name(outputs(out, "dseg.nii.gz").name.replace("dseg.nii.gz", "seg.dcm"))
    seg.write_bytes(b"a DICOM SEG of the earlier model")  # as --dicom-seg leaves one
    result = infer(scan, "-m", other_model, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*_qc.png")) and not list(out.glob("*_probseg.nii.gz")) and not seg.exists()
    assert outputs(out, "dseg.nii.gz").is_file()


def test_an_input_is_never_replaced_by_its_own_results_and_one_named_twice_runs_once(model, scan, tmp_path):
    out = tmp_path / "out"
    copy = out / "sub-01_T2w.nii.gz"
    out.mkdir()
    copy.write_bytes(scan.read_bytes())
    assert infer(copy, "-m", model, "-o", out).exit_code == 0
    dseg = out / "sub-01_desc-neoseg_dseg.nii.gz"
    before = dseg.read_bytes()
    result = infer(dseg, "-m", model, "-o", out, "--overwrite")
    assert result.exit_code == 2 and "would replace the input" in result.output, result.output
    assert dseg.read_bytes() == before
    result = infer(copy, tmp_path / "out" / ".." / "out" / copy.name, "-m", model, "-o", tmp_path / "twice")
    assert result.exit_code == 0 and "[1/1]" in result.output and "[1/2]" not in result.output, result.output
    link = out / "sub-02_T2w.nii.gz"  # another name for the same bytes (a git-annex dataset): another scan
    link.symlink_to(copy)
    result = infer(copy, link, "-m", model, "-o", tmp_path / "links")
    assert result.exit_code == 0 and "[2/2]" in result.output and len(list((tmp_path / "links").glob("*_dseg.nii.gz"))) == 2


def test_leftovers_of_a_killed_run_are_removed_and_a_rerun_with_q_says_what_it_skipped(model, scan, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    name = scan.name.replace("_desc-restore_T2w.nii.gz", "")
    leftover = out / f".{name}_desc-neoseg_dseg.nii.gz.x1y2.part.nii.gz"
    leftover.write_bytes(b"half")
    assert infer(scan, "-m", model, "-o", out).exit_code == 0
    assert not leftover.exists()
    result = infer(scan, "-m", model, "-o", out, "-q", "--precision", "fp32")
    assert result.exit_code == 0 and result.stdout == "" and "1 of 1 scans already done" in result.stderr


def test_unwritable_summary_or_output_is_refused_before_any_scan(model, scan, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = infer(scan, "-m", model, "-o", tmp_path / "out", "--json", blocker / "run.json")
    assert result.exit_code == 2 and "cannot write in" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()
    result = infer(scan, "-m", model, "-o", blocker / "out")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_results_carry_the_scans_grid_but_not_its_text_window_or_time_units(model, scan, tmp_path):
    img = nib.load(scan)
    header = img.header.copy()
    header["cal_min"], header["cal_max"], header["aux_file"], header["db_name"] = 0, 3387.0, b"DOE^JOHN", b"DOE^J"
    header["xyzt_units"] = 2 | 8 | 64  # mm, seconds, and a time code nibabel does not know
    header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=DOE^JOHN"))
    tagged = tmp_path / "tagged_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header), tagged)
    out = tmp_path / "out"
    assert infer(tagged, "-m", model, "-o", out).exit_code == 0
    for kind in ("dseg.nii.gz", "mask.nii.gz"):
        written = nib.load(outputs(out, kind))
        assert np.allclose(written.affine, img.affine) and written.header.get_zooms()[:3] == img.header.get_zooms()
        assert written.header["cal_max"] == 0 and written.header["aux_file"] == b"" and not written.header.extensions
        assert written.header.get_xyzt_units() == ("mm", "unknown")
        assert b"DOE" not in gzip.decompress(outputs(out, kind).read_bytes())
    assert nib.load(outputs(out, "dseg.nii.gz")).header.get_intent()[0] == "label"
    assert json.loads(outputs(out, "mask.json").read_text())["LabelMapDigest"].startswith("sha256:")


def test_a_flat_folder_of_bids_named_scans_is_not_taken_for_a_dataset(model, scan, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "sub-01_T2w.nii.gz").write_bytes(scan.read_bytes())
    result = infer(flat, "-m", model, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "it holds NIfTI files: pass them" in result.output, result.output
    assert infer(*flat.glob("*.nii.gz"), "-m", model, "-o", tmp_path / "out").exit_code == 0


def test_intensities_that_min_max_scaling_mishandles_are_named(model, scan, tmp_path):
    img = nib.load(scan)
    data = np.asarray(img.dataobj, np.float32)
    hot, filled = data.copy(), data.copy()
    hot.flat[data.argmax()] = 50 * data.max()  # one stray bright voxel
    filled[data <= np.percentile(data, 30)] = -1000  # the background filled below zero
    clean = infer(scan, "-m", model, "-o", tmp_path / "clean")
    assert clean.exit_code == 0 and "far brighter" not in clean.output and "below zero" not in clean.output
    finer = img.affine @ np.diag([0.5, 0.5, 0.5, 1])  # resampled to the model's voxels: told on the scan's own
    for name, volume, affine, words in (("hot", hot, img.affine, "a few voxels are far brighter than the rest"),
                                        ("hotfine", hot, finer, "a few voxels are far brighter than the rest"),
                                        ("filled", filled, img.affine, "of the voxels hold the minimum, -1000, below zero")):
        path = tmp_path / f"{name}_T2w.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), path)
        result = infer(path, "-m", model, "-o", tmp_path / name)
        assert result.exit_code == 0 and words in result.stderr, result.output
        warnings = json.loads(outputs(tmp_path / name, "mask.json").read_text())["Warnings"]
        assert any(words in w for w in warnings)
