"""Voxel sizes in the header's units (xyzt_units), the field of view a head needs, and files whose
name says the wrong compression: read as mm, refused, or refused with the fix, in one line."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.cli.infer import app
from neoseg.core import scans
from neoseg.data.dhcp import find_sessions

MM_PER = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}
FIX = "check the voxel sizes (pixdim) and units (xyzt_units) in the header"


def _save(path, data, zooms, unit: str, affine=None):
    """``data`` with voxel sizes ``zooms`` (or ``affine``) stated in ``unit``."""
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]) if affine is None else affine)
    img.header.set_xyzt_units(unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _volume(shape=(20, 22, 12), dtype=np.float32):
    return np.random.default_rng(0).random(shape).astype(dtype)


@pytest.mark.parametrize("unit", list(MM_PER))
def test_voxel_sizes_are_read_in_mm_whatever_the_header_units(unit, tmp_path):
    stated = tuple(z / MM_PER[unit] for z in (0.8, 0.8, 1.6))
    path = _save(tmp_path / "scan.nii.gz", _volume(), stated, unit)
    seen = []

    def working_bytes(shape, zooms):
        seen.append(zooms)
        return 0

    scan = scans.read_scan(path, working_bytes=working_bytes)
    assert scan.zooms == pytest.approx((0.8, 0.8, 1.6), rel=1e-6)
    assert scans.voxel_size(scan.image) == pytest.approx((0.8, 0.8, 1.6), rel=1e-6)
    assert seen[0] == pytest.approx((0.8, 0.8, 1.6), rel=1e-6)  # the memory estimate, in mm
    # the image keeps the file's own affine and units (outputs are written with them)
    assert np.allclose(scan.affine, np.diag([*stated, 1.0])) and np.allclose(scan.image.affine, scan.affine)
    assert scan.image.header.get_xyzt_units()[0] == unit


def test_an_invalid_unit_code_is_taken_as_mm(tmp_path):
    path = _save(tmp_path / "scan.nii", _volume(), (0.8, 0.8, 1.6), "mm")
    raw = bytearray(path.read_bytes())
    raw[123] = 5  # xyzt_units: no such spatial unit (nibabel's get_xyzt_units raises KeyError)
    path.write_bytes(bytes(raw))
    assert scans.read_scan(path).zooms == pytest.approx((0.8, 0.8, 1.6), rel=1e-6)


def test_a_field_of_view_too_small_for_a_head_is_refused(tmp_path):
    """Voxels 100 times too small: a head 1.5 mm wide would be segmented as empty."""
    path = _save(tmp_path / "scan.nii.gz", _volume((152, 179, 96), np.int16), (0.008, 0.008, 0.016), "mm")
    with pytest.raises(scans.ScanError) as e:
        scans.read_scan(path)
    assert str(e.value) == (
        f"{path}: its field of view, 1.216 x 1.432 x 1.536 mm (152 x 179 x 96 voxels of 0.008 x 0.008 x 0.016 mm; "
        f"units in the header: mm), is too small to hold a neonatal head (under 5 mm); {FIX}")


def test_a_field_of_view_too_large_for_a_head_is_refused_before_the_memory_estimate(tmp_path):
    """Voxels 10 times too big: refused for what they are, not as needing more memory."""
    path = _save(tmp_path / "scan.nii.gz", _volume((152, 179, 96), np.int16), (8, 8, 16), "unknown")
    with pytest.raises(scans.ScanError) as e:
        scans.read_scan(path, working_bytes=lambda shape, zooms: 10 ** 15)
    assert str(e.value) == (
        f"{path}: its field of view, 1216 x 1432 x 1536 mm (152 x 179 x 96 voxels of 8 x 8 x 16 mm; "
        f"units in the header: unknown, read as mm), is too large for a neonatal head (over 1000 mm); {FIX}")


def test_metres_read_as_mm_would_be_refused_but_are_converted(tmp_path):
    metres = _save(tmp_path / "m.nii.gz", _volume(), (0.0008, 0.0008, 0.0016), "meter")
    assert scans.read_scan(metres).zooms == pytest.approx((0.8, 0.8, 1.6), rel=1e-6)
    mm = _save(tmp_path / "mm.nii.gz", _volume(), (0.0008, 0.0008, 0.0016), "mm")
    with pytest.raises(scans.ScanError, match="too small to hold a neonatal head"):
        scans.read_scan(mm)
    microns = _save(tmp_path / "um.nii.gz", _volume(), (800, 800, 1600), "mm")  # microns stated as mm
    with pytest.raises(scans.ScanError, match=r"units in the header: mm\), is too large"):
        scans.read_scan(microns)


def test_small_test_volumes_and_label_maps_pass_the_field_of_view_check(tmp_path):
    """The least field of view leaves room for the test suite's phantoms (8 voxels of 1 mm)."""
    assert scans.read_scan(_save(tmp_path / "s.nii.gz", _volume((8, 8, 8)), (1, 1, 1), "mm")).data.shape == (8, 8, 8)
    labels = np.ones((4, 4, 4), np.uint8)  # label maps lie on their scan's grid, checked there
    assert scans.read_labels(_save(tmp_path / "l.nii.gz", labels, (0.5, 0.5, 0.5), "mm")).zooms == (0.5, 0.5, 0.5)


def test_memory_for_the_voxels_themselves_is_checked_before_the_field_of_view(tmp_path, monkeypatch):
    """However wrong the voxel sizes, voxels that do not fit in memory are said as such."""
    path = _save(tmp_path / "scan.nii.gz", _volume(), (80, 80, 160), "mm")
    monkeypatch.setattr(scans, "available_memory", lambda: 999)
    with pytest.raises(scans.ScanError, match=r"need about 21.1 kB of memory to process, but 999 bytes"):
        scans.read_scan(path)


def test_gzip_data_named_nii_is_refused_with_the_right_name(tmp_path):
    plain = _save(tmp_path / "scan.nii", _volume(), (1, 1, 1), "mm")
    path = tmp_path / "gzipped.nii"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(scans.ScanError) as e:
        scans.read_scan(path)
    assert str(e.value) == f"{path} is gzip-compressed, but its name ends in .nii; name it gzipped.nii.gz"


def test_uncompressed_data_named_nii_gz_is_refused_with_the_right_name(tmp_path):
    plain = _save(tmp_path / "scan.nii", _volume(), (1, 1, 1), "mm")
    path = tmp_path / "Plain.NII.GZ"
    path.write_bytes(plain.read_bytes())
    with pytest.raises(scans.ScanError) as e:
        scans.read_scan(path)
    assert str(e.value) == f"{path} is not gzip-compressed, but its name ends in .nii.gz; name it Plain.NII"


@pytest.mark.parametrize("name, raw", [("junk.nii.gz", bytes(range(256)) * 8),
                                       ("junk.nii", gzip.compress(bytes(range(256)) * 8))])
def test_other_unreadable_files_are_not_told_to_be_renamed(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(scans.ScanError, match="is not a readable NIfTI file") as e:
        scans.read_scan(path)
    assert "name it" not in str(e.value)


def test_neoseg_infer_segments_a_scan_in_metres_as_in_mm_and_refuses_a_wrong_one(model, tiny_dataset, tmp_path):
    runner = CliRunner()
    clean = nib.load(find_sessions(tiny_dataset)[5].t2)  # 24^3 voxels of 2 mm
    data = np.asanyarray(clean.dataobj)
    to_metres = np.diag([0.001, 0.001, 0.001, 1.0])
    mm = _save(tmp_path / "mm" / "scan.nii.gz", data, (), "mm", clean.affine)
    metres = _save(tmp_path / "m" / "scan.nii.gz", data, (), "meter", to_metres @ clean.affine)
    results = {}
    for path in (mm, metres):
        out = path.parent / "out"
        result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(out)])
        assert result.exit_code == 0 and "warning" not in result.output, result.output
        dseg = nib.load(out / "scan_desc-neoseg_dseg.nii.gz")
        assert np.allclose(dseg.affine, nib.load(path).affine)  # the scan's own affine and units
        assert dseg.header.get_xyzt_units()[0] == nib.load(path).header.get_xyzt_units()[0]
        results[path] = np.asanyarray(dseg.dataobj), (out / "scan_desc-neoseg_volumes.tsv").read_text()
    assert len(np.unique(results[mm][0])) > 3  # a real segmentation
    assert np.array_equal(results[mm][0], results[metres][0]) and results[mm][1] == results[metres][1]

    wrong = _save(tmp_path / "wrong.nii.gz", data, (), "mm", to_metres @ clean.affine)  # metres said to be mm
    result = runner.invoke(app, [str(wrong), "-m", str(model), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"neoseg-infer: error: {wrong}: its field of view, 0.048 x "), lines
    assert lines[0].endswith(FIX) and not (tmp_path / "out").exists()


def test_voxel_sizes_follow_the_affine_where_pixdim_disagrees(tmp_path):
    """Training, inference and the volumes all take the voxel size where the voxels lie (the affine)."""
    img = nib.Nifti1Image(np.arange(4000, dtype=np.float32).reshape(20, 20, 10), np.diag([0.8, 0.8, 1.6, 1.0]))
    img.header.set_zooms((1.6, 1.6, 3.2))  # a pixdim that disagrees with the sform
    path = tmp_path / "pixdim_T2w.nii.gz"
    nib.save(img, path)
    loaded = nib.load(path)
    assert loaded.header.get_zooms()[:3] == pytest.approx((1.6, 1.6, 3.2))
    assert scans.voxel_size(loaded) == pytest.approx((0.8, 0.8, 1.6))
    assert scans.read_scan(path).zooms == pytest.approx((0.8, 0.8, 1.6))
