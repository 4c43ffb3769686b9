import gzip

import nibabel as nib
import numpy as np
import pytest

from neoseg.core import io


def test_parallel_gzip_nifti_reads_back_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "GZIP_CHUNK", 1000)  # many gzip members even for a small image
    data = (np.arange(30 * 20 * 10 * 3) % 7).reshape(30, 20, 10, 3).astype(np.uint8)
    img = nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.0, 1.0]))
    path = io.save_nifti(img, tmp_path / "m.nii.gz")
    back = nib.load(path)
    assert np.array_equal(np.asanyarray(back.dataobj), data)
    assert np.allclose(back.affine, img.affine) and back.header.get_data_dtype() == np.uint8
    raw, reference = gzip.decompress(path.read_bytes()), img.to_bytes()  # as an uncompressed .nii
    assert len(raw) == len(reference) and raw[352:] == reference[352:]


@pytest.mark.parametrize("layout", ["channels-last view", "3d int16 with input scaling"])
def test_fast_path_writes_what_nibabel_writes(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(io, "GZIP_CHUNK", 500)
    rng = np.random.default_rng(1)
    if layout == "channels-last view":  # as the runtime hands its masks over: a non-contiguous view
        data = np.moveaxis(rng.integers(0, 2, (4, 9, 8, 7), dtype=np.uint8), 0, -1)
    else:
        data = rng.integers(-5, 300, (9, 8, 7)).astype(np.int16)
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(2.0, 1.0)  # copied from an input scan: must not rescale our labels
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0]), header)
    io.write_nifti(img, tmp_path / "fast.nii.gz")
    back = nib.load(tmp_path / "fast.nii.gz")
    assert np.array_equal(np.asanyarray(back.dataobj), data) and back.dataobj.slope == 1.0
    assert back.header.get_data_dtype() == data.dtype and back.shape == data.shape
    reference = tmp_path / "ref.nii.gz"
    nib.Nifti1Image(data, img.affine, header).to_filename(str(reference))
    assert np.array_equal(np.asanyarray(nib.load(reference).dataobj), data)


def test_output_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    path = io.write_text(tmp_path / "a.txt", "x")
    expected = 0o666 & ~io._umask()
    assert stat.S_IMODE(os.stat(path).st_mode) == expected


def test_atomic_write_never_overwrites_unasked_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("mine")
    with pytest.raises(io.OutputExistsError, match="--overwrite"):
        io.write_text(target, "new")
    assert target.read_text() == "mine"
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "half.nii.gz") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    io.write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"


def test_load_nifti_reads_gzip_members_and_plain_files(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0]))
    io.save_nifti(img, tmp_path / "a.nii.gz")
    img.to_filename(str(tmp_path / "b.nii"))
    nib.Nifti2Image(data, img.affine).to_filename(str(tmp_path / "c.nii.gz"))
    for name in ("a.nii.gz", "b.nii", "c.nii.gz"):
        back = io.load_nifti(tmp_path / name)
        assert np.array_equal(np.asanyarray(back.dataobj), data) and np.allclose(back.affine, img.affine), name


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_set_of_outputs_appears_together_or_not_at_all(tmp_path, monkeypatch, overwrite):
    """A failure between moving the second and the third output in place takes the first two back
    (and, with overwrite, puts back the files they replaced); no temporary file is left."""
    paths = {k: tmp_path / f"{k}.txt" for k in "abc"}
    if overwrite:
        for k, p in paths.items():
            p.write_text(f"old {k}")
    real_place, moved = io._place, []

    def failing_place(tmp, path):
        if len(moved) == 2:
            raise OSError("disk full")
        real_place(tmp, path)
        moved.append(path)

    monkeypatch.setattr(io, "_place", failing_place)
    with pytest.raises(OSError, match="disk full"):
        with io.atomic_paths(paths, overwrite) as tmp:
            for k, t in tmp.items():
                t.write_text(f"new {k}")
    assert len(moved) == 2
    if overwrite:
        assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {f"{k}.txt": f"old {k}" for k in "abc"}
    else:
        assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(io, "_place", real_place)
    with io.atomic_paths(paths, overwrite) as tmp:
        for k, t in tmp.items():
            t.write_text(f"new {k}")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {f"{k}.txt": f"new {k}" for k in "abc"}


def test_an_output_that_appears_while_writing_is_never_replaced(tmp_path):
    paths = {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}
    with pytest.raises(io.OutputExistsError, match="appeared while writing"):
        with io.atomic_paths(paths) as tmp:
            for t in tmp.values():
                t.write_text("new")
            paths["b"].write_text("someone else's")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"b.txt": "someone else's"}


def test_files_the_new_output_set_lacks_go_with_its_commit(tmp_path, monkeypatch):
    """``remove``: an old companion the new set lacks is removed when the set appears, and comes
    back with the replaced output when the commit fails; it is refused without overwrite."""
    out, old = tmp_path / "m.onnx", tmp_path / "m.int8.xml"
    out.write_text("old model"), old.write_text("old companion")
    with pytest.raises(io.OutputExistsError, match="m.int8.xml already exists"):
        with io.atomic_paths({0: tmp_path / "other.onnx"}, overwrite=False, remove=[old]):
            pass

    def failing_place(tmp, path):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(io, "_place", failing_place)
        with pytest.raises(OSError, match="disk full"):
            with io.atomic_paths({0: out}, overwrite=True, remove=[old]) as tmp:
                tmp[0].write_text("new model")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"m.onnx": "old model",
                                                                    "m.int8.xml": "old companion"}
    with io.atomic_paths({0: out}, overwrite=True, remove=[old, tmp_path / "m.int8.bin"]) as tmp:
        tmp[0].write_text("new model")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"m.onnx": "new model"}
