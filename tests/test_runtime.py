"""The torch-free runtime: geometry, restack order, orientation and spacing round trips, outputs."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest

from neoseg.core.io import OutputExistsError
from neoseg.core.preprocess import box_center, foreground_profiles, head_box, head_center
from neoseg.data.dhcp import find_sessions
from neoseg.runtime import geometry, pipeline, staging
from neoseg.runtime.backend import Backend, BackendUnavailable
from neoseg.runtime.backends import open_backend
from neoseg.runtime.ort_backend import OrtBackend
from neoseg.runtime.files import output_paths, segment_file, stem
from neoseg.runtime.pipeline import Segmenter


CPU_DEFAULT = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"  # auto's CPU path


@pytest.fixture(scope="module", params=["bce", "labelset"])
def model(request, tiny_dataset, tmp_path_factory):
    """A sigmoid-head and a softmax-head model: the runtime must treat both alike."""
    from neoseg.benchmarks.toy import toy_onnx

    return toy_onnx(tmp_path_factory.mktemp("model"), find_sessions(tiny_dataset)[:4], loss=request.param)[1]


@pytest.fixture(scope="module")
def scan(tiny_dataset):
    return find_sessions(tiny_dataset)[5].t2


# ---- geometry ------------------------------------------------------------------------------
def test_head_box_centre_is_the_training_head_centre():
    rng = np.random.default_rng(1)
    for _ in range(3):
        vol = rng.normal(0, 0.01, (20, 24, 18)).astype(np.float32)
        lo = rng.integers(0, 6, 3)
        vol[lo[0]:lo[0] + 9, lo[1]:lo[1] + 7, lo[2]:lo[2] + 5] += 1
        profiles = foreground_profiles(vol)
        assert box_center(head_box(profiles), vol.shape) == head_center(vol)
        vol[0, 0, 0] = 1  # a stray bright voxel widens the plain box, not the head's
        assert head_box(foreground_profiles(vol), 0.1) == tuple((a, a + k - 1) for a, k in zip(lo, (9, 7, 5)))


def test_resize_linear_keeps_the_field_of_view():
    ramp = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((1, 3, 2), np.float32)
    up = geometry.resize_linear(ramp, (16, 3, 2))
    assert up.shape == (16, 3, 2)
    # voxel edges aligned: fine centres at (k + 0.5) / 2 - 0.5 in coarse voxels, borders clamped
    np.testing.assert_allclose(up[1:-1, 0, 0], (np.arange(1, 15) + 0.5) / 2 - 0.5, atol=1e-6)
    np.testing.assert_allclose(geometry.resize_linear(up, (8, 3, 2))[1:-1], ramp[1:-1], atol=1e-6)  # interior


# ---- restack order -------------------------------------------------------------------------
ROOT_VALUES = [1, 4, 5, 6, 8, 9]  # drawem9 channels without parent


class SliceIndexBackend(Backend):
    """A fake network whose output names the slice it was given: a slice whose head square holds
    the value (i + 1) / n (after min-max scaling) is labelled ROOT_VALUES[i % 6] inside the square, outside elsewhere."""

    def __init__(self, info, n_slices):
        self.info, self.n, self.name, self.batch = info, n_slices, "slice-index", 3
        self.calls = []

    def run(self, x):
        self.calls.append(x.shape)
        names = self.info.hierarchy.names
        out = np.full((len(x), len(names)) + x.shape[2:], -10.0, np.float32)
        for k, sl in enumerate(x[:, 0]):
            i = int(round(sl.max() * self.n)) - 1
            value = ROOT_VALUES[i % len(ROOT_VALUES)]
            channel = next(c for c, ch in enumerate(self.info.hierarchy.channels) if ch.value == value)
            out[k, channel][sl > 0] = 10.0
            out[k, names.index("unlabelled")][sl == 0] = 10.0
        return out


@pytest.mark.parametrize("staged", [64, 4])  # all slices decoded before the copy out, or in 5 parts
def test_restack_puts_every_slice_back_where_it_came_from(model, staged, monkeypatch):
    monkeypatch.setattr(staging, "STAGED", staged)
    info = OrtBackend(model).info  # axis 0, 32^2 slices
    n = 30
    image = np.zeros((n, 40, 36), np.float32)
    for i in range(3, n - 3):  # the head: slices 3..26, a 10 x 12 square off the array centre
        image[i, 22:32, 4:16] = i + 1
    backend = SliceIndexBackend(info, int(image.max()))  # min-max scaling divides by the largest value
    decoded = Segmenter(backend, crop_plane=True).predict(image)[0]
    outside = info.hierarchy.names.index("unlabelled")
    for i in range(n):
        expected = np.zeros((40, 36), np.uint8)
        if 3 <= i < n - 3:
            expected[22:32, 4:16] = ROOT_VALUES[i % len(ROOT_VALUES)]
        assert np.array_equal(decoded.labels[i], expected), f"slice {i}"
        assert np.array_equal(decoded.masks[outside, i], expected == 0), f"slice {i}"
    # only the head's slices (with a margin) were computed, in batches of 3, on a cropped plane
    assert sum(shape[0] for shape in backend.calls) == n
    assert all(shape[2] < 32 or shape[3] < 32 for shape in backend.calls)


# ---- orientation and spacing ---------------------------------------------------------------
def _reoriented(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    return img.as_reoriented(ornt)


def test_same_scan_in_another_axis_order_gives_the_same_segmentation(model, scan, tmp_path):
    img = nib.load(scan)
    other = _reoriented(img, "PIL")
    nib.save(other, tmp_path / "other_T2w.nii.gz")
    runner = Segmenter(open_backend(model))
    paths_a, _ = segment_file(scan, runner, tmp_path / "a")
    paths_b, _ = segment_file(tmp_path / "other_T2w.nii.gz", runner, tmp_path / "b")
    a, b = nib.load(paths_a["dseg"]), nib.load(paths_b["dseg"])
    assert b.shape == other.shape and np.allclose(b.affine, other.affine)  # the input's own grid
    assert np.array_equal(np.asarray(_reoriented(b, "RAS").dataobj), np.asarray(a.dataobj))
    ma, mb = nib.load(paths_a["mask"]), nib.load(paths_b["mask"])
    assert np.array_equal(np.asarray(_reoriented(mb, "RAS").dataobj), np.asarray(ma.dataobj))
    assert len(np.unique(np.asarray(a.dataobj))) > 3  # a real segmentation, not a constant


def test_scan_at_another_spacing_is_segmented_on_its_own_grid(model, scan, tmp_path):
    img = nib.load(scan)  # 2 mm, as the model
    data = geometry.resize_linear(np.asarray(img.dataobj, np.float32), tuple(2 * n for n in img.shape))
    fine = nib.Nifti1Image(data, img.affine @ np.diag([0.5, 0.5, 0.5, 1]))
    runner = Segmenter(open_backend(model))
    coarse_seg = runner.segment(np.asarray(img.dataobj), img.affine, img.header.get_zooms())
    fine_seg = runner.segment(data, fine.affine, fine.header.get_zooms())
    assert fine_seg.labels.shape == data.shape
    nearest = coarse_seg.labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    # the toy models are smooth only to a degree (0.84-0.92 agreement measured with both heads)
    assert (fine_seg.labels == nearest).mean() > 0.8


def test_a_head_beyond_the_slice_window_is_reported_not_cut_silently(model, scan, tmp_path):
    from neoseg.core.scans import read_scan
    from neoseg.runtime.files import segment_checked

    img = nib.load(scan)  # 24^3 at 2 mm in a window of 32 slices of 2 mm
    big = tmp_path / "big_T2w.nii.gz"  # the same voxels stated at 4 mm: a head 96 mm wide, the window 64 mm
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([2, 2, 2, 1])), big)
    runner = Segmenter(open_backend(model))
    notes = [w for w in segment_checked(read_scan(big), runner).warnings if "slice window" in w]
    assert len(notes) == 2 and all(w.startswith(f"{big}: the head reaches ") for w in notes)  # both in-plane axes
    assert "--slice-size" in notes[0] and " ml of it there are labelled outside" in notes[0]
    assert not any("slice window" in w for w in segment_checked(read_scan(scan), runner).warnings)


def _whole_volume_reference(backend, data, zooms):
    """The resampled path as a whole (C, X, Y, Z) logit volume: every slice computed, logits
    interpolated back onto the scan's grid, then decoded (labels by Hierarchy.to_labels)."""
    from neoseg.core.preprocess import from_slices, minmax_scale, plane_windows, to_slices

    info, h = backend.info, backend.info.hierarchy
    image = geometry.resize_linear(data, geometry.resampled_shape(data.shape, zooms, info.spacing))
    windows = plane_windows(image.shape, info.axis, info.slice_size, head_center(image))
    slices = to_slices(minmax_scale(image), info.axis, windows)[:, None]
    logits = np.concatenate([backend.run(slices[i:i + 8]) for i in range(0, len(slices), 8)])
    volume = from_slices(logits, image.shape, info.axis, windows, fill=-pipeline.OUTSIDE_LOGIT)
    inside = from_slices(np.ones(slices[:, 0].shape, bool), image.shape, info.axis, windows)
    volume[h.outside_channel][~inside] = pipeline.OUTSIDE_LOGIT
    native = geometry.resize_linear(volume, data.shape, first_axis=1)
    return h.to_labels(native), native >= info.logit_thresholds[:, None, None, None]


@pytest.mark.parametrize("factors", [(0.7, 1.0, 1.3), (1.25, 0.8, 1.0)])
def test_resampled_scan_decoded_plane_by_plane_equals_the_whole_volume_decoding(model, scan, factors):
    """The scan-grid planes are interpolated from a few model-grid planes at a time, in batches of
    3 slices here, and equal the decoding of the whole interpolated logit volume exactly."""
    img = nib.as_closest_canonical(nib.load(scan))
    data = np.asarray(img.dataobj, np.float32)
    zooms = tuple(z * f for z, f in zip(img.header.get_zooms()[:3], factors))
    backend = open_backend(model, "ort-cpu")
    seg = Segmenter(backend, batch=3, skip_empty=False).segment(data, np.diag([*zooms, 1.0]), zooms)
    labels, masks = _whole_volume_reference(backend, data, zooms)
    assert seg.labels.shape == data.shape and np.array_equal(seg.labels, labels)
    assert np.array_equal(np.moveaxis(seg.masks, -1, 0), masks)
    assert len(np.unique(labels)) > 3


# ---- decoding and outputs ------------------------------------------------------------------
class TiedLogits(Backend):
    """A stand-in network with many exact ties between channels (logits in steps of 1), so the
    decoding's first-of-equals rule is exercised on every slice."""

    def __init__(self, info):
        self.info, self.name, self.batch = info, "tied", 3
        n = len(info.hierarchy)
        self.a = np.linspace(-6, 6, n, dtype=np.float32)[None, :, None, None]
        self.b = np.linspace(2, -2, n, dtype=np.float32)[None, :, None, None]

    def run(self, x):
        return np.round(x * self.a + self.b)


@pytest.mark.parametrize("layout", ["fortran", "c"])  # as nibabel reads a file / any other array
@pytest.mark.parametrize("factors", [(1.0, 1.0, 1.0), (0.7, 1.0, 1.3)])  # the model's grid / resampled
@pytest.mark.parametrize("host_threads", [1, 2])  # copied out in place / by a second thread, double-buffered
def test_outputs_decoded_in_the_files_order_equal_the_whole_volume_decoding(model, scan, layout, factors,
                                                                             host_threads, monkeypatch):
    """Labels and masks decoded batch by batch into staging buffers of 4 slices and copied into
    outputs laid out as the NIfTI file stores them equal the plain decoding of the whole logit
    volume (``Hierarchy.to_labels``: np.argmax, the first of equal logits wins)."""
    monkeypatch.setattr(staging, "STAGED", 4)
    monkeypatch.setattr(pipeline, "THREADED_VOXELS", 0)  # threads even for this small scan
    img = nib.as_closest_canonical(nib.load(scan))
    data = np.asarray(img.dataobj, np.float32)
    data = np.asfortranarray(data) if layout == "fortran" else np.ascontiguousarray(data)
    zooms = tuple(z * f for z, f in zip(img.header.get_zooms()[:3], factors))
    backend = TiedLogits(OrtBackend(model).info)
    seg = Segmenter(backend, skip_empty=False, host_threads=host_threads).segment(data, np.diag([*zooms, 1.0]), zooms)
    labels, masks = _whole_volume_reference(backend, data, zooms)
    assert seg.labels.flags.f_contiguous and seg.masks.flags.f_contiguous  # written without a transposing copy
    assert np.array_equal(seg.labels, labels) and np.array_equal(np.moveaxis(seg.masks, -1, 0), masks)
    assert len(np.unique(labels)) > 3


@pytest.mark.parametrize("probabilities", [False, True])
def test_crops_and_probabilities_are_the_same_on_one_or_two_host_threads(model, scan, monkeypatch, probabilities):
    import threading

    monkeypatch.setattr(staging, "STAGED", 4)
    monkeypatch.setattr(pipeline, "THREADED_VOXELS", 0)
    img = nib.load(scan)
    data, zooms = np.asanyarray(img.dataobj), img.header.get_zooms()[:3]
    backend = TiedLogits(OrtBackend(model).info)
    real_write, writers = staging.Staged._write, []

    def write(self, *args):
        writers.append(threading.current_thread().name.split("_")[0])
        return real_write(self, *args)

    monkeypatch.setattr(staging.Staged, "_write", write)
    one, two = (Segmenter(backend, crop_plane=True, host_threads=n).segment(data, img.affine, zooms, probabilities)
                for n in (1, 2))
    second = "MainThread" if probabilities else "neoseg-copy-out"  # probabilities keep one staging buffer
    assert set(writers[:len(writers) // 2]) == {"MainThread"} and set(writers[len(writers) // 2:]) == {second}
    for a, b in [(one.labels, two.labels), (one.masks, two.masks)] + [(one.probs, two.probs)] * probabilities:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert one.computed_slices == two.computed_slices > 0 and len(np.unique(one.labels)) > 3


def test_input_blocks_gathered_ahead_on_the_second_thread_equal_those_gathered_in_turn(model, scan, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(staging, "STAGED", 4)
    data = np.asfortranarray(np.asarray(nib.load(scan).dataobj, np.float32))  # as a NIfTI file holds it
    segmenter = Segmenter(TiedLogits(OrtBackend(model).info), skip_empty=False)
    windows, todo, plane, scale, _ = segmenter._plan(data)
    in_turn = [(i, j, x.copy()) for i, j, x in segmenter._batches(data, windows, todo, plane, scale)]
    copy, threads = staging.copy_blocked, []

    def recorded(dst, src, *args):
        threads.append(threading.current_thread().name.split("_")[0])
        copy(dst, src, *args)

    monkeypatch.setattr(staging, "copy_blocked", recorded)
    with ThreadPoolExecutor(1, "neoseg-copy-out") as pool:
        ahead = [(i, j, x.copy()) for i, j, x in segmenter._batches(data, windows, todo, plane, scale, pool)]
    assert len(ahead) == len(in_turn) > 2 and set(threads) == {"neoseg-copy-out"}
    for (i, j, x), (k, m, y) in zip(in_turn, ahead):
        assert (i, j) == (k, m) and np.array_equal(x, y)


def test_host_threads_must_be_positive(model):
    with pytest.raises(ValueError, match="host threads must be at least 1, got 0"):
        Segmenter(OrtBackend(model), host_threads=0)


def _masked_copy_argmax(logits, channels):
    """The running argmax as it was first written (masked copies), the reference of the vectorised one."""
    best, index = logits[channels[0]].copy(), np.full(logits.shape[1:], channels[0], np.intp)
    for c in channels[1:]:
        higher = logits[c] > best
        np.copyto(best, logits[c], where=higher)
        np.copyto(index, c, where=higher)
    return index


def test_vectorised_argmax_equals_the_masked_copy_reference_with_ties_and_nan():
    rng = np.random.default_rng(3)
    logits = np.round(rng.normal(0, 1.5, (6, 40, 50))).astype(np.float32)  # many ties
    logits[rng.random(logits.shape) < 0.05] = np.nan  # a NaN never wins, except in the first channel
    for channels in ([0, 1, 2, 3, 4, 5], [4, 1, 5], [2]):
        assert np.array_equal(Segmenter._argmax(logits, channels), _masked_copy_argmax(logits, channels))
    many = np.round(rng.normal(0, 3, (300, 4, 5))).astype(np.float32)  # positions and channels past uint8
    for channels in (list(range(300)), list(range(299, -1, -1)), list(range(250, 300))):
        assert np.array_equal(Segmenter._argmax(many, channels), _masked_copy_argmax(many, channels))


def test_staging_slices_start_one_cache_line_off_a_page():
    for shape, dtype in (((5, 11, 256, 256), np.uint8), ((4, 200, 256), np.float32), ((3, 7, 9), np.uint16)):
        a = staging.aligned_empty(shape, dtype)
        a[...] = 1  # writable, the requested shape and type
        assert a.shape == shape and a.dtype == dtype and a.strides[0] % staging.PAGE == staging.CACHE_LINE
        assert a[0].flags.c_contiguous  # each slice is contiguous: the decoding's ufunc loops stay fast


def test_thresholds_on_logits_equal_thresholds_on_probabilities(model):
    runner = Segmenter(open_backend(model))
    logits = np.random.default_rng(0).normal(0, 3, (4, 11, 5, 5)).astype(np.float32)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    decoded = runner.decode(logits, 1, probabilities=True)
    h = runner.info.hierarchy
    assert np.array_equal(decoded.masks, h.masks(probs, runner.info.thresholds, 1))
    assert np.array_equal(decoded.labels, h.to_labels(probs, 1))
    np.testing.assert_allclose(decoded.probs, probs, atol=1e-6)


def test_outputs_are_named_typed_and_written_all_or_nothing(model, scan, tmp_path):
    runner = Segmenter(open_backend(model))
    paths, seg = segment_file(scan, runner, tmp_path, probabilities=True)
    assert paths["dseg"].name == "sub-T05_ses-1_desc-neoseg_dseg.nii.gz"
    dseg, mask, prob = (nib.load(paths[k]) for k in ("dseg", "mask", "probseg"))
    img = nib.load(scan)
    assert dseg.get_data_dtype() == np.uint8 and dseg.shape == img.shape and np.allclose(dseg.affine, img.affine)
    assert mask.get_data_dtype() == np.uint8 and mask.shape == img.shape + (11,)
    assert set(np.unique(np.asarray(dseg.dataobj))) <= set(range(10))
    p = prob.get_fdata()
    assert p.min() >= 0 and p.max() <= 1.0001
    agree = (p >= 0.5) == np.asarray(mask.dataobj).astype(bool)
    assert agree.mean() > 0.999  # up to uint8 rounding right at the threshold
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["Channels"][-1] == "tcv" and sidecar["Model"]["backend"] == runner.backend.name
    with pytest.raises(OutputExistsError):
        segment_file(scan, runner, tmp_path)

    class Broken(Backend):
        info, name, batch = runner.info, "broken", 4

        def run(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        segment_file(scan, Segmenter(Broken()), tmp_path / "new")
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_output_stem_keeps_bids_entities():
    assert stem("sub-1_ses-2_desc-restore_T2w.nii.gz") == "sub-1_ses-2"
    assert stem("scan.nii.gz") == "scan" and stem("sub-1_T2w.nii") == "sub-1"
    assert set(output_paths("a_T2w.nii.gz", "o")) == {"dseg", "dseg_sidecar", "mask", "sidecar", "volumes"}
    assert set(output_paths("a_T2w.nii.gz", "o", probabilities=True, qc=True)) == {
        "dseg", "dseg_sidecar", "mask", "sidecar", "volumes", "probseg", "qc"}


# ---- backends ------------------------------------------------------------------------------
def test_backends_never_fall_back_silently(model, monkeypatch):
    import onnxruntime as ort

    assert open_backend(model, "auto").name.startswith(CPU_DEFAULT)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        open_backend(model, "ort-cuda")
    with pytest.raises(ValueError, match="engine"):
        open_backend(model, "tensorrt")
    # ORT drops a provider that fails to load and carries on on CPU: that must be an error
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda path, options, providers: real(path, options, providers=["CPUExecutionProvider"]))
    with pytest.raises(BackendUnavailable, match="did not activate CUDAExecutionProvider"):
        open_backend(model, "ort-cuda")


@pytest.mark.parametrize("shape", [(5, 6, 7), (7, 7, 7), (13, 14, 3), (8, 21, 5), (1, 1, 1), (40, 36, 30)])
def test_robust_sample_of_fortran_volumes_is_the_flattened_sample(shape):
    from neoseg.core.preprocess import robust_sample

    volume = np.asfortranarray(np.random.default_rng(0).random(shape, dtype=np.float32))
    assert np.array_equal(np.sort(robust_sample(volume)), np.sort(volume.reshape(-1)[::7]))
    flipped = volume[::-1].transpose(2, 0, 1)  # any other layout: the plain flattened sample
    assert np.array_equal(robust_sample(flipped), flipped.reshape(-1)[::7])


def test_plane_counts_equal_counting_each_axis_in_every_layout():
    from neoseg.core.preprocess import plane_counts

    mask = np.random.default_rng(1).random((9, 12, 7)) > 0.6
    layouts = [mask, np.asfortranarray(mask), mask[::-1, :, ::2].transpose(2, 0, 1),
               np.asfortranarray(mask).transpose(1, 2, 0), mask[:, 3], np.ones((300, 2, 1), bool)]
    for m in layouts:
        expected = [np.count_nonzero(m, axis=tuple(a for a in range(m.ndim) if a != axis)) for axis in range(m.ndim)]
        got = plane_counts(m)
        assert len(got) == m.ndim
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype and np.array_equal(g, e)


# ---- the CPU ------------------------------------------------------------------------------
def test_physical_cores_counts_hyperthread_siblings_once(tmp_path):
    from neoseg.runtime.cpu import physical_cores

    for cpu, package, core in ((0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 1, 0)):  # 0 and 1: siblings
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    assert physical_cores({0, 1}, tmp_path) == 1
    assert physical_cores({0, 1, 2, 3}, tmp_path) == 3  # core 0 of package 1 is another core
    assert physical_cores({0, 2, 5}, tmp_path) == 3  # no topology for cpu5: the logical count
    assert 1 <= physical_cores() <= len(__import__("os").sched_getaffinity(0))


def test_cpu_name_keeps_the_family_and_model_that_tell_generations_apart(tmp_path):
    from neoseg.runtime.cpu import cpu_name

    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n"
    (tmp_path / "zen5").write_text(block.format(0, 26, 2) + "\n" + block.format(1, 25, 17))
    assert cpu_name(tmp_path / "zen5") == "AMD EPYC (family 26, model 2)"  # the first processor's
    (tmp_path / "bare").write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_name(tmp_path / "bare") == "Some CPU"
    assert cpu_name(tmp_path / "missing") and cpu_name()


def test_host_path_benchmark_reports_every_phase_and_the_cpu(tmp_path):
    from neoseg.benchmarks import host_path

    data = np.zeros((24, 20, 18), np.float32)
    data[6:18, 5:15, 4:14] = np.linspace(1, 2, 12 * 10 * 10).reshape(12, 10, 10)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0])), tmp_path / "s_T2w.nii.gz")
    host_path.main(["--scan", str(tmp_path / "s_T2w.nii.gz"), "--repeats", "1", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "host-path.json").read_text())
    settings = result["scans"][0]["settings"]
    assert set(settings) == {"default", *host_path.REFERENCES}  # compared in the same process by default
    for setting in settings.values():
        for clock in ("wall_s", "cpu_s"):
            seconds = setting[clock]
            assert set(host_path.PHASES) <= set(seconds) and seconds["host"] > 0
            assert seconds["host"] == pytest.approx(sum(seconds[p] for p in host_path.PHASES), rel=1e-6)
    text = (tmp_path / "out" / "host-path.md").read_text()
    assert "cpu_features" in result["machine"] and "host path" in text and "default / one host thread" in text
