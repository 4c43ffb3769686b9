"""Every kind of scan a pipeline can hand over, generated here: each is accepted (and segments like
the clean scan in world space) or refused with exit code 2, one line naming the file, the problem
and the fix, no traceback and no output file. docs/inference.md's "what inputs are accepted" table is
this corpus."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.cli.infer import app
from neoseg.core import gz, scans
from neoseg.data.dhcp import find_sessions

runner = CliRunner()


@pytest.fixture(scope="module")
def clean(tiny_dataset):
    return nib.load(find_sessions(tiny_dataset)[5].t2)


@pytest.fixture(scope="module")
def clean_labels(model, clean, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    nib.save(clean, folder / "clean.nii.gz")
    result = runner.invoke(app, [str(folder / "clean.nii.gz"), "-m", str(model), "-o", str(folder / "out")])
    assert result.exit_code == 0, result.output
    labels = np.asanyarray(nib.load(folder / "out" / "clean_desc-neoseg_dseg.nii.gz").dataobj)
    assert len(np.unique(labels)) > 3  # a real segmentation to compare against
    return labels


# ---- the corpus: accepted ------------------------------------------------------------------------
def _data(img) -> np.ndarray:
    return np.asanyarray(img.dataobj).astype(np.float32)


def _save(img, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _nii(folder, clean):
    return _save(clean, folder / "scan.nii")


def _upper_case(folder, clean):
    return _save(clean, folder / "SCAN.NII.GZ")


def _nifti2(folder, clean):
    return _save(nib.Nifti2Image(_data(clean), clean.affine), folder / "scan.nii.gz")


def _pair_as_img(folder, clean):
    _save(nib.Nifti1Pair(_data(clean), clean.affine), folder / "scan.hdr")
    return folder / "scan.img"


def _pair_as_hdr(folder, clean):
    return _save(nib.Nifti2Pair(_data(clean), clean.affine), folder / "scan.hdr")


def _reoriented(folder, clean):  # axes permuted and flipped, affine to match: the same anatomy
    ornt = np.array([[2, -1], [0, 1], [1, -1]])
    return _save(clean.as_reoriented(ornt), folder / "scan.nii.gz")


def _float64_big_endian(folder, clean):
    img = nib.Nifti1Image(_data(clean).astype(">f8"), clean.affine)
    img.header.set_data_dtype(">f8")
    return _save(img, folder / "scan.nii.gz")


def _scaled_int16(folder, clean):
    img = nib.Nifti1Image(_data(clean), clean.affine)
    img.header.set_data_dtype(np.int16)  # nibabel picks a scale factor
    return _save(img, folder / "scan.nii.gz")


def _qform_only(folder, clean):
    img = nib.Nifti1Image(_data(clean), None)
    img.set_qform(clean.affine, code=1)
    img.set_sform(None, code=0)
    return _save(img, folder / "scan.nii.gz")


def _four_d_singleton(folder, clean):
    return _save(nib.Nifti1Image(_data(clean)[..., None], clean.affine), folder / "scan.nii.gz")


def _five_d_singleton(folder, clean):
    return _save(nib.Nifti1Image(_data(clean)[..., None, None], clean.affine), folder / "scan.nii.gz")


def _grey_rgb(folder, clean):
    data = _data(clean)
    grey = np.round((data - data.min()) / (data.max() - data.min()) * 255).astype(np.uint8)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for c in "RGB":
        rgb[c] = grey
    return _save(nib.Nifti1Image(rgb, clean.affine), folder / "scan.nii.gz")


def _regridded(clean, affine: np.ndarray, shape) -> np.ndarray:
    """The clean scan's anatomy sampled (linearly) on another voxel grid."""
    from scipy.ndimage import map_coordinates

    ijk = np.indices(shape).reshape(3, -1)
    to_clean = np.linalg.inv(clean.affine) @ affine
    src = to_clean[:3, :3] @ ijk + to_clean[:3, 3:]
    return map_coordinates(_data(clean), src, order=1, mode="nearest").reshape(shape).astype(np.float32)


def _anisotropic(folder, clean):  # 2 x 2 x 4 mm: the same field of view with half the slices
    affine = clean.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0.5], [0, 0, 0, 1]])
    return _save(nib.Nifti1Image(_regridded(clean, affine, (24, 24, 12)), affine), folder / "scan.nii.gz")


def _oblique(folder, clean):  # the grid turned by 10 degrees about its centre
    a = np.deg2rad(10)
    turn = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    centre = np.eye(4)
    centre[:3, 3] = clean.affine[:3, :3] @ np.full(3, 11.5) + clean.affine[:3, 3]
    affine = centre @ turn @ np.linalg.inv(centre) @ clean.affine
    return _save(nib.Nifti1Image(_regridded(clean, affine, (24, 24, 24)), affine), folder / "scan.nii.gz")


def _odd_path(folder, clean):
    return _save(clean, folder / "a folder with spaces" / "scan été ü.nii.gz")


ACCEPTED = {  # name: (maker, least share of voxels labelled as in the clean scan)
    "uncompressed .nii": (_nii, 1.0),
    "upper-case .NII.GZ": (_upper_case, 1.0),
    "NIfTI-2": (_nifti2, 1.0),
    ".hdr/.img pair, given as the .img": (_pair_as_img, 1.0),
    "NIfTI-2 .hdr/.img pair, given as the .hdr": (_pair_as_hdr, 1.0),
    "axes permuted and flipped": (_reoriented, 1.0),
    "float64 big-endian": (_float64_big_endian, 1.0),
    "int16 with a scale factor": (_scaled_int16, 0.99),  # quantised to 16 bits
    "qform only": (_qform_only, 1.0),
    "4D with one volume": (_four_d_singleton, 1.0),
    "5D with singleton axes": (_five_d_singleton, 1.0),
    "RGB24 with equal channels (grey)": (_grey_rgb, 0.97),  # quantised to 8 bits
    # resampled anatomy, compared at the nearest voxel: boundaries of a 24^3 phantom differ (measured 0.91, 0.92)
    "anisotropic (4 mm slices)": (_anisotropic, 0.88),
    "oblique (turned 10 degrees)": (_oblique, 0.88),
    "path with spaces and non-ASCII letters": (_odd_path, 1.0),
}


def in_world(path: Path, ref) -> tuple[np.ndarray, np.ndarray]:
    """The labels of ``path`` at the world positions of ``ref``'s voxel centres (nearest voxel),
    and where those positions lie inside ``path``'s grid."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    ijk = np.indices(ref.shape[:3]).reshape(3, -1)
    to_img = np.linalg.inv(img.affine) @ ref.affine
    idx = np.rint(to_img[:3, :3] @ ijk + to_img[:3, 3:]).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(data.shape)[:, None]), axis=0)
    idx = np.clip(idx, 0, np.array(data.shape)[:, None] - 1)
    return data[tuple(idx)].reshape(ref.shape[:3]), inside.reshape(ref.shape[:3])


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_inputs_segment_like_the_clean_scan(name, model, clean, clean_labels, tmp_path):
    maker, least = ACCEPTED[name]
    path = maker(tmp_path / "in", clean)
    result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.exception is None and "Traceback" not in result.output
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["dseg.tsv", "scan_desc-neoseg_dseg.json", "scan_desc-neoseg_dseg.nii.gz",
                       "scan_desc-neoseg_mask.json", "scan_desc-neoseg_mask.nii.gz", "scan_desc-neoseg_volumes.tsv"] \
        or name.startswith("upper-case") or name.startswith("path")
    dseg = next((tmp_path / "out").glob("*_dseg.nii.gz"))
    assert nib.load(dseg).shape == nib.load(path).shape[:3]  # the input's own grid (4D/5D: the 3D volume)
    assert np.allclose(nib.load(dseg).affine, nib.load(path).affine)
    labels, inside = in_world(dseg, clean)
    agree = np.mean(labels[inside] == clean_labels[inside])
    assert agree >= least, f"{name}: {agree:.4f} of voxels agree with the clean scan"


def test_upper_case_and_odd_names_give_plain_output_names(model, clean, tmp_path):
    paths = [_upper_case(tmp_path / "a", clean), _odd_path(tmp_path / "b", clean)]
    result = runner.invoke(app, [*map(str, paths), "-m", str(model), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").glob("*_dseg.nii.gz"))
    assert names == ["SCAN_desc-neoseg_dseg.nii.gz", "scan été ü_desc-neoseg_dseg.nii.gz"]


@pytest.mark.parametrize("values", [(np.inf,), (-np.inf,), (np.inf, -np.inf), (np.nan,)])
def test_each_kind_of_nonfinite_voxel_alone_is_found(clean, tmp_path, values):
    data = _data(clean)
    data.flat[[5, 500, 5000][:len(values)]] = values
    scan = scans.read_scan(_save(nib.Nifti1Image(data, clean.affine), tmp_path / "scan.nii.gz"))
    assert scan.nonfinite_count == len(values) and np.isfinite(scan.data).all()
    assert any("NaN or infinite" in note for note in scan.notes)


def test_nonfinite_voxels_are_background_with_a_warning(model, clean, clean_labels, tmp_path):
    data = _data(clean)
    bad = np.zeros(data.shape, bool)
    bad[3:7, 10:14, 10:14] = True  # a block of NaN at the head's edge
    rng = np.random.default_rng(0)
    scattered = rng.choice(data.size, 30, replace=False)
    bad.flat[scattered] = True
    data[bad] = np.nan
    data.flat[scattered[:10]] = np.inf
    data.flat[scattered[10:20]] = -np.inf
    path = _save(nib.Nifti1Image(data, clean.affine), tmp_path / "scan.nii.gz")
    result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(tmp_path / "out"), "--probabilities"])
    assert result.exit_code == 0, result.output
    n = int(bad.sum())
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and f"{n} of {data.size} voxels" in warning[0] and "NaN or infinite" in warning[0]
    assert str(path) in warning[0] and "background" in warning[0]
    labels = np.asanyarray(nib.load(tmp_path / "out" / "scan_desc-neoseg_dseg.nii.gz").dataobj)
    assert np.all(labels[bad] == 0)  # labelled outside
    masks = np.asanyarray(nib.load(tmp_path / "out" / "scan_desc-neoseg_mask.nii.gz").dataobj)
    probs = np.asarray(nib.load(tmp_path / "out" / "scan_desc-neoseg_probseg.nii.gz").get_fdata())
    assert np.all(masks[bad].sum(axis=-1) == 1) and np.allclose(probs[bad].sum(axis=-1), 1, atol=0.01)
    assert np.array_equal(masks[bad].argmax(-1), probs[bad].argmax(-1))  # the same, outside, channel
    from scipy.ndimage import binary_dilation

    near = binary_dilation(bad, iterations=2)
    agree = np.mean(labels[~near] == clean_labels[~near])
    assert agree >= 0.98, agree  # the rest segments as without them (measured 0.997)
    sidecar = json.loads((tmp_path / "out" / "scan_desc-neoseg_mask.json").read_text())
    assert sidecar["NonFiniteVoxels"] == n and len(sidecar["Warnings"]) == 1 and not sidecar["Empty"]


def test_a_scan_without_head_is_said_and_recorded(model, clean, tmp_path):
    """Nothing found is said: a volume with content but no head (one bright voxel) is segmented,
    every voxel outside, with a warning, and the sidecar records it."""
    dot = np.zeros((24, 24, 24), np.float32)
    dot[12, 12, 12] = 1
    path = _save(nib.Nifti1Image(dot, clean.affine), tmp_path / "dot.nii.gz")
    result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    labels = np.asanyarray(nib.load(tmp_path / "out" / "dot_desc-neoseg_dseg.nii.gz").dataobj)
    sidecar = json.loads((tmp_path / "out" / "dot_desc-neoseg_mask.json").read_text())
    assert not labels.any() and sidecar["Empty"] is True
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and "warning" in warning[0] and "no brain found" in warning[0] and str(path) in warning[0]
    assert sidecar["Warnings"] == [warning[0].split("warning: ", 1)[1]]


# ---- the corpus: refused -------------------------------------------------------------------------
def _patch(path: Path, offset: int, fmt: str, *values) -> Path:
    """Overwrite header fields of an uncompressed .nii in place."""
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))
    return path


def _gzip(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return out


def _small(folder, clean):
    return _save(nib.Nifti1Image(_data(clean)[:8, :8, :8], clean.affine), folder / "scan.nii")


def _huge_header(folder, clean):  # 4000^3 float32 claimed, 2 kB held
    return _patch(_small(folder, clean), 42, "3h", 4000, 4000, 4000)


def _huge_header_gz(folder, clean):
    return _gzip(_huge_header(folder, clean))


def _truncated_gz(folder, clean):
    path = _save(clean, folder / "scan.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _unaffordable(folder, clean):  # 4096^3 float32, a sparse file of the full size: it fits the disk, not memory
    path = _patch(_small(folder, clean), 42, "3h", 4096, 4096, 4096)
    with path.open("r+b") as f:
        f.truncate(352 + 4 * 4096 ** 3)
    return path


def _zero_axis(folder, clean):
    return _patch(_small(folder, clean), 42, "h", 0)


def _all_nan(folder, clean):
    return _save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), clean.affine), folder / "scan.nii.gz")


def _constant(folder, clean):
    return _save(nib.Nifti1Image(np.full((8, 8, 8), 7, np.int16), clean.affine), folder / "scan.nii.gz")


def _rgb(folder, clean):
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"] = 200, np.arange(8, dtype=np.uint8)[:, None, None]
    return _save(nib.Nifti1Image(rgb, clean.affine), folder / "scan.nii.gz")


def _complex(folder, clean):
    return _save(nib.Nifti1Image(_data(clean).astype(np.complex64), clean.affine), folder / "scan.nii.gz")


def _hdr_without_img(folder, clean):
    path = _save(nib.Nifti1Pair(_data(clean), clean.affine), folder / "scan.hdr")
    (folder / "scan.img").unlink()
    return path


def _img_without_hdr(folder, clean):
    _save(nib.Nifti1Pair(_data(clean), clean.affine), folder / "scan.hdr")
    (folder / "scan.hdr").unlink()
    return folder / "scan.img"


def _analyze(folder, clean):
    return _save(nib.AnalyzeImage(_data(clean), clean.affine), folder / "scan.hdr")


def _no_orientation(folder, clean):
    return _save(nib.Nifti1Image(_data(clean), None), folder / "scan.nii.gz")


def _singular_affine(folder, clean):
    return _patch(_small(folder, clean), 280, "4f", 0, 0, 0, 0)  # srow_x = 0: the first axis has no size


def _nan_affine(folder, clean):
    return _patch(_small(folder, clean), 280, "f", float("nan"))


def _two_d(folder, clean):
    return _save(nib.Nifti1Image(_data(clean)[:, :, 12], clean.affine), folder / "scan.nii.gz")


def _single_slice(folder, clean):
    return _save(nib.Nifti1Image(_data(clean)[:, :, 12:13], clean.affine), folder / "scan.nii.gz")


def _series(folder, clean):
    return _save(nib.Nifti1Image(np.stack([_data(clean)] * 3, -1), clean.affine), folder / "scan.nii.gz")


def _five_d_vector(folder, clean):
    return _save(nib.Nifti1Image(np.stack([_data(clean)] * 3, -1)[..., None, :], clean.affine),
                 folder / "scan.nii.gz")


def _random_bytes(folder, clean):
    path = folder / "scan.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    return path


def _text(folder, clean):
    path = folder / "scan.nii"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("subject,age\nsub-1,40\n" * 40)
    return path


def _missing(folder, clean):
    return folder / "scan.nii.gz"


REFUSED = {  # name: (maker, words the message must hold besides the file's name)
    "header claims more data than the file holds": (_huge_header, ["(4000, 4000, 4000) float32", "256.0 GB", "holds only"]),
    "the same, compressed": (_huge_header_gz, ["(4000, 4000, 4000) float32", "256.0 GB", "gzip file of"]),
    "truncated gzip": (_truncated_gz, ["damaged"]),
    "more than the memory available": (_unaffordable, ["(4096, 4096, 4096) float32", "of memory", "available"]),
    "zero-length axis": (_zero_axis, ["zero-length axis", "(0, 8, 8)"]),
    "every voxel NaN": (_all_nan, ["NaN or infinite", "no image"]),
    "every voxel equal": (_constant, ["the value 7", "no image"]),
    "RGB24 colour": (_rgb, ["colour", "RGB24"]),
    "complex": (_complex, ["complex", "magnitude"]),
    ".hdr whose .img is missing": (_hdr_without_img, ["scan.img is missing"]),
    ".img whose .hdr is missing": (_img_without_hdr, ["scan.hdr is missing"]),
    "Analyze 7.5 pair": (_analyze, ["Analyze", "orientation"]),
    "no orientation": (_no_orientation, ["no orientation", "qform_code"]),
    "singular affine": (_singular_affine, ["singular"]),
    "non-finite affine": (_nan_affine, ["NaN"]),
    "2D": (_two_d, ["2D", "(24, 24)"]),
    "single slice": (_single_slice, ["single slice", "(24, 24, 1)"]),
    "4D series": (_series, ["3 volumes", "(24, 24, 24, 3)"]),
    "5D vector": (_five_d_vector, ["3 volumes"]),
    "random bytes": (_random_bytes, ["not a readable NIfTI"]),
    "text file": (_text, ["not a readable NIfTI"]),
    "missing file": (_missing, ["does not exist"]),
}


def assert_refused(result, path: Path, words: list[str], outdir: Path) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("neoseg-infer: error: ") and str(path) in line, line
    for word in words:
        assert word in line, (word, line)
    assert "np." not in line and "dtype(" not in line, line  # plain text, not numpy reprs
    assert not outdir.exists() or list(outdir.iterdir()) == []


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_inputs_say_why_in_one_line_and_write_nothing(name, model, clean, tmp_path):
    maker, words = REFUSED[name]
    path = maker(tmp_path / "in", clean)
    result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(tmp_path / "out")])
    assert_refused(result, path, words, tmp_path / "out")


@pytest.mark.parametrize("codec", sorted(gz.CODECS))
def test_gzip_is_not_decompressed_beyond_the_claimed_size(clean, tmp_path, monkeypatch, codec):
    """A small header with a long tail of data: only the claimed bytes are inflated."""
    path = tmp_path / "tail.nii.gz"
    raw = nib.Nifti1Image(_data(clean), clean.affine).to_bytes()
    path.write_bytes(gzip.compress(raw + bytes(50_000_000), compresslevel=1))
    inflated = []
    real = gz.CODECS[codec]

    class Counting:
        def __init__(self, *args):
            self.z = real.decompressobj(*args)

        def decompress(self, data, max_length=0):
            out = self.z.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.z, name)

    monkeypatch.setitem(gz.CODECS, codec, type("Counted", (), {"decompressobj": Counting}))
    with gz.using(codec):
        checked = scans.read_scan(path)
    assert sum(inflated) == len(raw) and np.array_equal(checked.data, _data(clean))


def test_memory_check_uses_the_available_memory(clean, tmp_path, monkeypatch):
    path = _save(clean, tmp_path / "scan.nii.gz")
    monkeypatch.setattr(scans, "available_memory", lambda: 10_000)
    with pytest.raises(scans.ScanError, match=r"need about 55.3 kB of memory to process, but 10.0 kB is available"):
        scans.read_scan(path)


def test_nibabel_test_files_never_give_a_traceback(model, tmp_path):
    """nibabel's own NIfTI test files: each is segmented or refused in one plain line."""
    folder = Path(nib.__file__).parent / "tests" / "data"
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz", ".hdr", ".img")))
    if not files:
        pytest.skip("nibabel's test files are not installed")
    for path in files:
        out = tmp_path / path.name
        result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(out)])
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, (path.name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (path.name, result.exception)
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert "np." not in result.stderr, result.stderr
        if result.exit_code:
            assert len(errors) == 1 and str(path) in errors[0], result.stderr
            assert not out.exists() or list(out.iterdir()) == []
    assert any(p.name == "analyze.hdr" for p in files)


# ---- several scans ---------------------------------------------------------------------------------
def test_a_broken_scan_does_not_stop_the_others(model, clean, tmp_path):
    """Run as a pipeline would, in a process of its own: the good scan is written, the broken one
    reported, and the exit code says that one failed."""
    broken = _zero_axis(tmp_path / "in", clean)
    good = _save(clean, tmp_path / "in" / "good.nii.gz")
    done = subprocess.run([sys.executable, "-m", "neoseg.cli.infer", str(broken), str(good), "-m", str(model),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2 and "zero-length axis" in errors[0] and str(broken) in errors[0]
    assert "1 of 2 scans failed" in errors[1] and broken.name in errors[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dseg.tsv", "good_desc-neoseg_dseg.json", "good_desc-neoseg_dseg.nii.gz", "good_desc-neoseg_mask.json",
        "good_desc-neoseg_mask.nii.gz", "good_desc-neoseg_volumes.tsv"]


# ---- training and evaluation read the same way -------------------------------------------------------
def test_training_data_is_checked_the_same_way(tiny_dataset, tmp_path):
    """neoseg-train --data refuses a session's bad scan or label map in one line, and leaves no run folder."""
    import shutil

    from neoseg.cli.train import app as train_app

    sessions = find_sessions(tiny_dataset)
    cases = {
        "T2 with NaN": (0, "t2", lambda d: np.where(np.arange(d.size).reshape(d.shape) % 97 == 0, np.nan, d),
                        "NaN or infinite"),
        "fractional labels": (1, "labels", lambda d: d.astype(np.float32) * 0.5, "non-integer values"),
        "labels on another grid": (2, "labels", lambda d: d[:, :, :-1], "resample it onto the scan's grid"),
    }
    for name, (index, which, change, words) in cases.items():
        root = tmp_path / name.replace(" ", "_") / "data"
        shutil.copytree(tiny_dataset, root)
        target = getattr(find_sessions(root)[index], which)
        img = nib.load(target)
        data = change(np.asanyarray(img.dataobj))
        nib.save(nib.Nifti1Image(data, img.affine), target)
        out = tmp_path / name.replace(" ", "_") / "run"
        result = runner.invoke(train_app, ["--out", str(out), "--data", str(root), "--epochs", "1", "--slice-size",
                                           "32", "--widths", "4,8", "--full-fraction", "1", "--quiet",
                                           "--device", "cpu"])
        assert result.exit_code == 2, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exception)
        lines = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and str(target) in lines[0] and words in lines[0], (name, result.stderr)
        assert not out.exists(), name
    assert len(sessions) == 6


def test_annotations_are_scored_on_the_scans_grid_whatever_their_stored_orientation(tiny_dataset, tmp_path):
    """A label map stored flipped (with the affine that says so) is the same annotation; one placed
    elsewhere in space is refused, as neoseg-train refuses it."""
    import dataclasses

    from neoseg.core.hierarchy import builtin
    from neoseg.core.scans import read_scan
    from neoseg.train.evaluate import session_truth

    session = find_sessions(tiny_dataset)[0]
    scan, hierarchy = read_scan(session.t2), builtin()
    truth = session_truth(session, hierarchy, scan)
    img = nib.load(session.labels)
    flipped, shifted = tmp_path / "flipped_dseg.nii.gz", tmp_path / "shifted_dseg.nii.gz"
    nib.save(img.as_reoriented([[0, -1], [1, 1], [2, -1]]), flipped)  # LPI storage of the same map
    assert not np.array_equal(np.asanyarray(nib.load(flipped).dataobj), np.asanyarray(img.dataobj))
    found = session_truth(dataclasses.replace(session, labels=flipped), hierarchy, scan)
    assert np.array_equal(found.codes, truth.codes)
    moved = img.affine.copy()
    moved[0, 3] += 1.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), moved), shifted)
    with pytest.raises(ValueError, match=r"placed elsewhere in space .* differ by up to 1\); resample it"):
        session_truth(dataclasses.replace(session, labels=shifted), hierarchy, scan)


def test_evaluation_data_is_checked_the_same_way(model, tiny_dataset, tmp_path):
    """neoseg-eval --data: a damaged label map is refused in one line naming it; nothing is written."""
    import shutil

    from neoseg.cli.evaluate import app as eval_app

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    target = find_sessions(root)[3].labels
    target.write_bytes(target.read_bytes()[:200])  # cut short, as by a failed copy
    result = runner.invoke(eval_app, [str(model.with_suffix(".pt")), "--data", str(root), "-o",
                                      str(tmp_path / "eval.csv"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and (result.exception is None or isinstance(result.exception, SystemExit))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("neoseg-eval: error: ") and str(target) in lines[0], lines
    assert "damaged" in lines[0] and not (tmp_path / "eval.csv").exists()


@pytest.mark.parametrize("values, words", [
    (lambda d: d.astype(np.int16) - 1, "negative values"),
    (lambda d: d.astype(np.int32) + 70000, "values up to"),  # above 65535, the most a hierarchy names
    (lambda d: np.where(d == 3, np.nan, d.astype(np.float32)), "NaN or infinite"),
    (lambda d: d.astype(np.float32) + 0.25, "non-integer values"),
    (lambda d: np.zeros_like(d), "only 0 \\(outside\\) everywhere: no annotation"),  # a failed export
])
def test_label_maps_hold_whole_label_numbers(values, words, tiny_dataset, tmp_path):
    from neoseg.train.volumes import load_canonical

    source = nib.load(find_sessions(tiny_dataset)[0].labels)
    path = _save(nib.Nifti1Image(values(np.asanyarray(source.dataobj)), source.affine), tmp_path / "labels.nii.gz")
    with pytest.raises(ValueError, match=words) as refused:
        load_canonical(path, labels=True)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    assert load_canonical(find_sessions(tiny_dataset)[0].labels, labels=True)[0].max() == 9


def test_a_full_disk_is_one_line_and_leaves_nothing(model, clean, tmp_path, monkeypatch):
    import errno

    from neoseg.runtime import files

    real_write, written = files.write_niftis, []

    def write_then_fail(images, *args, **kwargs):  # the first file fits, the second does not
        first = list(images)[:1]
        real_write(first, *args, **kwargs)
        written.append(first[0][1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "write_niftis", write_then_fail)
    path = _save(clean, tmp_path / "in" / "scan.nii.gz")
    result = runner.invoke(app, [str(path), "-m", str(model), "-o", str(tmp_path / "out")])
    assert_refused(result, path, ["could not be written", "No space left on device", "free space"], tmp_path / "out")
    assert written  # the first output had been written before the failure
