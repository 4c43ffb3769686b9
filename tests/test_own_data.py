"""Training on a lab's own data: partial annotations read from the files, every scan resampled to
the training spacing, nothing cropped silently."""

from __future__ import annotations

import numpy as np
import pytest

from neoseg.core.hierarchy import UNKNOWN, builtin
from neoseg.core.partial import code_session, known_channels
from neoseg.core.preprocess import head_center, plane_windows, to_slices
from neoseg.data.dhcp import find_sessions
from neoseg.data.splits import split_by_annotation
from neoseg.core.partial import mask_names
from neoseg.runtime.geometry import resampled_shape, resize_linear
from neoseg.train.dataset import SliceDataset
from neoseg.train.volumes import VolumeCache, load_coded, resample_labels

from release_like import SUBJECTS, write_release_like

H = builtin("dhcp-drawem9")
TCV, CGM, WM, DGM, OUT = (H.index(n) for n in ("tcv", "cgm", "wm", "dgm", "unlabelled"))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release_like(tmp_path_factory.mktemp("release") / "data")


def _rows(coded):
    table = np.concatenate([H.target_table(), np.asarray(coded.extra_rows, np.uint8).reshape(-1, len(H))])
    return table[coded.codes]


def test_tcv_mask_knows_the_parent_and_nothing_of_its_children():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    rows = _rows(code_session(H, None, [("tcv", mask)], ["m.nii.gz"]))
    inside, outside = rows[1, 1, 1], rows[0, 0, 0]
    assert inside[TCV] == 1 and (inside[[CGM, WM, DGM]] == UNKNOWN).all() and inside[OUT] == 0
    assert (outside[[TCV, CGM, WM, DGM]] == 0).all() and outside[OUT] == UNKNOWN
    assert code_session(H, None, [("tcv", mask)], ["m"]).codes[1, 1, 1] == 10  # the label value of TCV


def test_brain_and_tcv_masks_combine_and_a_child_outside_its_parent_is_refused():
    brain = np.zeros((6, 6, 6), np.uint8)
    brain[1:5, 1:5, 1:5] = 1
    tcv = np.zeros_like(brain)
    tcv[2:4, 2:4, 2:4] = 1
    rows = _rows(code_session(H, None, [("brain", brain), ("tcv", tcv)], ["b", "t"]))
    assert rows[0, 0, 0][OUT] == 1 and (rows[0, 0, 0][[TCV, CGM]] == 0).all()  # outside the brain: known
    between = rows[1, 1, 1]  # in the brain, outside TCV
    assert between[OUT] == 0 and between[TCV] == 0 and between[H.index("csf")] == UNKNOWN
    assert known_channels(np.unique(rows.reshape(-1, len(H)), axis=0))[OUT]
    cgm = np.zeros_like(brain)
    cgm[0:2, 0:2, 0:2] = 1  # reaches outside the TCV mask
    with pytest.raises(ValueError, match="cgm_mask.nii.gz: .*outside this tcv mask|tcv_mask.nii.gz: .*outside"):
        code_session(H, None, [("cgm", cgm), ("tcv", tcv)], ["sub_desc-cgm_mask.nii.gz", "sub_desc-tcv_mask.nii.gz"])


def test_sessions_are_found_with_label_maps_or_masks(release):
    sessions = find_sessions(release, mask_names=mask_names(H))
    assert len(sessions) == len(SUBJECTS)
    by_kind = {kind: [s for s, (_, k) in zip(sessions, SUBJECTS) if k == kind] for kind in ("tcv", "brain")}
    assert all(s.labels is None and s.masks[0][0] == "tcv" for s in by_kind["tcv"])
    assert all(s.labels is None and s.masks[0][0] == "brain" for s in by_kind["brain"])
    assert len(find_sessions(release)) == sum(k in ("full", "partial") for _, k in SUBJECTS)  # masks not asked for


def test_the_cache_holds_every_labelled_voxel_at_the_training_spacing(release, tmp_path):
    cache = VolumeCache(tmp_path, axis=0, size=32, hierarchy=H, spacing=(2.0, 2.0, 2.0))
    for session, (spacing, kind) in zip(find_sessions(release, mask_names=mask_names(H)), SUBJECTS):
        stack = cache.get(session)
        assert stack.spacing == (2.0, 2.0, 2.0) and np.allclose(stack.native_spacing, spacing)
        assert stack.partial == (kind != "full")
        image, coded, img = load_coded(session, H)
        shape = resampled_shape(image.shape, spacing, (2.0, 2.0, 2.0))
        expected = resample_labels(coded.codes, shape, spacing, (2.0, 2.0, 2.0))
        assert shape == (24, 24, 24) or kind == "partial"  # 48 mm at 2 mm (the anisotropic scan rounds 16 x 3 mm)
        for value in np.unique(expected)[1:]:  # every labelled value (0, outside, is padded and trimmed)
            assert (np.asarray(stack.labels) == value).sum() == (expected == value).sum(), (session.key, value)


def test_a_brain_larger_than_the_window_is_refused_naming_file_extent_and_fix(release, tmp_path):
    session = find_sessions(release)[0]
    cache = VolumeCache(tmp_path, axis=0, size=16, hierarchy=H, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"sub-R00_ses-1_desc-drawem9_dseg.nii.gz: the labelled brain spans 4\d x 4\d mm"
                                         r".*16\^2 slices at 2x2x2 mm cover 32 x 32 mm.*--slice-size 32"):
        cache.get(session)


def test_label_resampling_keeps_each_structure_where_it_fills_most_of_the_voxel():
    labels = np.zeros((40, 8, 8), np.uint8)
    labels[8:20] = 2  # 12 voxels at 0.5 mm: 6 mm, the 2 mm voxels 2, 3 and 4
    labels[20:40] = 3
    out = resample_labels(labels, (10, 2, 2), (0.5, 0.5, 0.5), (2.0, 2.0, 2.0))
    assert out[:, 0, 0].tolist() == [0, 0, 2, 2, 2, 3, 3, 3, 3, 3]
    image = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    assert np.allclose(resize_linear(image, (10, 2, 2))[:, 0, 0], np.arange(10) * 4 + 1.5)  # the runtime's


def test_mask_sessions_enter_training_targets_with_their_rows(release, tmp_path):
    sessions = find_sessions(release, mask_names=mask_names(H))
    cache = VolumeCache(tmp_path, axis=0, size=32, hierarchy=H, spacing=(2.0, 2.0, 2.0))
    stacks = [cache.get(s) for s in sessions]
    data = SliceDataset(stacks, H, [False] * len(stacks))
    k = next(i for i, (_, kind) in enumerate(SUBJECTS) if kind == "tcv")
    first = next(i for i, (s, _) in enumerate(data.index) if s == k)
    middle = first + len(stacks[k].image) // 2
    _, target, _ = data[middle]
    target = target.numpy()
    assert (target[TCV] != UNKNOWN).all() and (target[TCV] == 1).any()
    assert (target[CGM][target[TCV] == 1] == UNKNOWN).all() and (target[CGM][target[TCV] == 0] == 0).all()
    assert data.full == [kind == "full" for _, kind in SUBJECTS]


def test_the_split_keeps_fully_labelled_subjects_for_training(release):
    sessions = find_sessions(release, mask_names=mask_names(H))
    partial = {s.key: kind != "full" for s, (_, kind) in zip(sessions, SUBJECTS)}
    split = split_by_annotation(sessions, partial, seed=0)
    assert split.fully_labelled and all(not partial[s.key] for s in split.train if s.subject in split.fully_labelled)
    assert {s.key for s in split.train + split.val + split.test} == set(partial)
    with pytest.raises(ValueError, match="no fully labelled session"):
        split_by_annotation(sessions, {k: True for k in partial})
