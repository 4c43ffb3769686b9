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


# ---- gzip codecs (neoseg.core.gz) ------------------------------------------------------------
from neoseg.core import gz  # noqa: E402
from neoseg.core.scans import read_scan  # noqa: E402


@pytest.mark.parametrize("codec", sorted(gz.CODECS))
def test_inflate_into_reads_members_padding_and_stops_where_asked(tmp_path, codec):
    payload = np.random.default_rng(0).integers(0, 255, 300_000, dtype=np.uint8).tobytes()
    path = tmp_path / "m.gz"  # three members, zero padding between two of them, as gzip allows
    path.write_bytes(gzip.compress(payload[:1000]) + gzip.compress(payload[1000:200_000]) + bytes(8)
                     + gzip.compress(payload[200_000:]))
    with gz.using(codec):
        for skip, n in [(0, len(payload)), (999, 5000), (1000, 199_000), (250_000, 50_000)]:
            out = bytearray(n)
            assert gz.inflate_into(path, skip, out) == n and bytes(out) == payload[skip:skip + n], (skip, n)
        out = bytearray(len(payload))  # asked for more than the file holds: says how much it filled
        assert gz.inflate_into(path, 100, out) == len(payload) - 100 and out[:-100] == payload[100:]


def test_an_unknown_codec_is_refused_in_one_line():
    with pytest.raises(ValueError, match="gzip codec 'lz4' is not available here"):
        with gz.using("lz4"):
            pass


@pytest.mark.parametrize("dtype,scaled", [("<f4", False), (">i2", False), ("<i2", True), ("<u1", True)])
def test_scans_read_as_nibabel_reads_them_with_either_codec(tmp_path, dtype, scaled):
    """Voxels inflated straight into their array equal nibabel's own reading: byte order, integer
    types and scl_slope / scl_inter included."""
    rng = np.random.default_rng(2)
    data = rng.normal(100, 30, (23, 17, 11)).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([0.5, 0.6, 1.0, 1.0]))
    if scaled:
        img.header.set_slope_inter(0.25, -3.0)
    path = tmp_path / "scan.nii.gz"
    img.to_filename(str(path))
    expected = np.asanyarray(nib.load(path).dataobj)
    for codec in gz.CODECS:
        with gz.using(codec):
            got = read_scan(path).data
        assert got.dtype == expected.dtype and np.array_equal(got, expected), codec


def test_outputs_written_with_zlib_equal_those_written_with_isal(tmp_path, monkeypatch):
    """The fallback codec writes the same image: nibabel decodes the same header and voxels."""
    if "isal" not in gz.CODECS:
        pytest.skip("isal is not installed")
    monkeypatch.setattr(io, "GZIP_CHUNK", 700)
    data = np.asfortranarray((np.arange(13 * 9 * 8 * 2) % 5).reshape(13, 9, 8, 2).astype(np.uint8))
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0]))
    for codec in ("isal", "zlib"):
        with gz.using(codec):
            io.write_nifti(img, tmp_path / f"{codec}.nii.gz")
    a, b = (nib.load(tmp_path / f"{c}.nii.gz") for c in ("isal", "zlib"))
    assert a.header.binaryblock == b.header.binaryblock
    assert np.array_equal(np.asanyarray(a.dataobj), data) and np.array_equal(np.asanyarray(b.dataobj), data)
    assert gzip.decompress((tmp_path / "isal.nii.gz").read_bytes()) == gzip.decompress((tmp_path / "zlib.nii.gz").read_bytes())


def test_without_isal_the_stdlib_codec_reads_and_writes(tmp_path, monkeypatch):
    """An install without python-isal falls back to zlib for both directions."""
    import importlib
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import ...` now raises ImportError
    try:
        importlib.reload(gz)
        assert gz.codec() == "zlib" and sorted(gz.CODECS) == ["zlib"]
        data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
        path = io.save_nifti(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s.nii.gz")
        assert np.array_equal(read_scan(path).data, data)
        assert np.array_equal(np.asanyarray(nib.load(path).dataobj), data)
    finally:
        monkeypatch.undo()  # isal importable again
        importlib.reload(gz)
    assert gz.codec() == ("isal" if importlib.util.find_spec("isal") else "zlib")


def test_cache_files_are_written_once_and_never_overwritten(tmp_path):
    path = tmp_path / "cache" / "a.txt"
    assert io.write_once(path, lambda tmp: tmp.write_text("first"))
    assert not io.write_once(path, lambda tmp: tmp.write_text("second"))  # there: kept, not rewritten
    assert path.read_text() == "first"

    def another_run_wins(tmp):  # the same file appears while this run writes it
        tmp.write_text("mine")
        path2.write_text("theirs")

    path2 = tmp_path / "cache" / "b.txt"
    assert not io.write_once(path2, another_run_wins)
    assert path2.read_text() == "theirs" and sorted(p.name for p in path2.parent.iterdir()) == ["a.txt", "b.txt"]
    (tmp_path / "cache" / "dir.txt").mkdir()  # not a file of the cache's: refused, untouched
    with pytest.raises(io.OutputExistsError):
        io.write_once(tmp_path / "cache" / "dir.txt", lambda tmp: tmp.write_text("x"))


def test_replacing_one_file_never_leaves_a_moment_without_it(tmp_path, monkeypatch):
    """Another process may read the file while it is replaced (a shared cache, a timing cache)."""
    path = tmp_path / "cache.bin"
    path.write_text("old")
    seen = []
    for name in ("replace", "link", "unlink", "rename"):
        def watched(*args, _real=getattr(io.os, name), **kwargs):
            _real(*args, **kwargs)
            seen.append(path.exists())
        monkeypatch.setattr(io.os, name, watched)
    io.write_text(path, "new", overwrite=True)
    monkeypatch.undo()
    assert path.read_text() == "new" and seen and all(seen)
