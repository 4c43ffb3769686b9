"""Training on a lab's own data: partial annotations read from the files, every scan resampled to
the training spacing, nothing cropped silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neoseg.core.hierarchy import UNKNOWN, builtin
from neoseg.core.partial import code_session, known_channels
from neoseg.core.preprocess import head_center, plane_windows, to_slices
from neoseg.data.dhcp import Session, find_sessions
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
    return coded.table(H)[coded.codes]


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


def test_validation_and_test_never_rest_on_brain_masks_alone():
    """Subjects with brain masks only are split apart from those whose files know a structure, so
    every seed's validation and test hold a session that scores a structure."""
    def session(i, kind):
        masks = () if kind != "brain" else (("brain", Path(f"{i}_desc-brain_mask.nii.gz")),)
        labels = None if kind == "brain" else Path(f"{i}_desc-drawem9_dseg.nii.gz")
        return Session(f"S{i:02d}", "1", Path(f"{i}_T2w.nii.gz"), labels, float("nan"), masks)

    sessions = [session(i, kind) for i, kind in enumerate(["full"] * 2 + ["partial"] * 3 + ["brain"] * 3)]
    partial = {s.key: s.subject not in ("S00", "S01") for s in sessions}  # both fully labelled subjects train
    for seed in range(20):
        split = split_by_annotation(sessions, partial, seed=seed)
        assert all(any(s.labels is not None for s in side) for side in (split.val, split.test)), seed
        assert len(split.train) + len(split.val) + len(split.test) == len(sessions)
    # with fewer than three that know a structure, the brain-mask-only subjects join them (one group)
    sessions = [session(i, kind) for i, kind in enumerate(["full"] * 2 + ["partial"] + ["brain"] * 5)]
    held_out = {s.subject for seed in range(20) for s in split_by_annotation(sessions, partial, seed=seed).val}
    assert "S02" in held_out and len(held_out) > 1


def test_without_a_fully_labelled_session_to_score_the_children_the_run_and_its_report_say_so(tmp_path, caplog):
    """Two fully labelled subjects both train: validation and test know no cortex, white matter or deep
    grey matter, which the log says once and every evaluation report names."""
    from neoseg.train.config import TrainConfig
    from neoseg.train.evaluate import report
    from neoseg.train.recipes import dataset_split

    root = write_release_like(tmp_path / "lab", SUBJECTS[:2] + [s for s in SUBJECTS if s[1] != "full"])
    config = TrainConfig(data=str(root))
    with caplog.at_level("WARNING", logger="neoseg.train"):
        split = dataset_split(config)
        dataset_split(config)
    assert not ({s.subject for s in split.val + split.test} & split.fully_labelled)
    assert caplog.text.count("no fully labelled session in validation or test") == 1
    assert "cgm, dgm, wm are neither validated nor scored" in caplog.text
    rows = [{"subject": "R05", "session": "1", "structure": n, "age_group": "term", "output": "dseg", "dice": 0.9, "hd100": 2.0, "vol_diff_ml": 0.1,
             "hd95": 1.0} for n in H.names if n not in ("cgm", "wm", "dgm")]
    text = report(rows, hierarchy=H)
    assert "1 of 1 sessions are partially labelled" in text and "**Not scored: cgm, wm, dgm**" in text
    assert "Not scored" not in report(rows)  # without the hierarchy, nothing to compare with


# ---- the walk-through of docs/own-data.md, on a small dataset of that shape ----------------------
TINY = ["--spacing", "2", "--slice-size", "32", "--widths", "8,16", "--batch-size", "8", "--quiet", "--device", "cpu"]


def _dice_rows(path, output="dseg"):
    import csv

    with open(path, newline="") as f:
        return {(r["subject"], r["structure"]): float(r["dice"]) for r in csv.DictReader(f)
                if r["output"] == output and r["truth_empty"] == "False"}


def test_train_evaluate_export_and_segment_a_labs_own_dataset(release, tmp_path):
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from neoseg.cli.evaluate import app as eval_app
    from neoseg.cli.export import app as export_app
    from neoseg.cli.infer import app as infer_app
    from neoseg.cli.train import app as train_app
    from neoseg.core import metrics
    from neoseg.train import checkpoint

    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(train_app, ["--data", str(release), "--out", str(run), "--epochs", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["spacing"] == [2.0, 2.0, 2.0]
    atlas = json.loads((run / "atlas.json").read_text())  # the default, --atlas auto: with two or more fully
    assert atlas["mode"] == "pairs" and atlas["pairs"] > 0  # labelled subjects, the atlases warped into the scans
    assert json.loads((run / "config.json").read_text())["atlas"] == "pairs"
    assert checkpoint.load(run / "best.pt").spacing == (2.0, 2.0, 2.0)
    split = json.loads((run / "split.json").read_text())
    kinds = {f"R{i:02d}": kind for i, (_, kind) in enumerate(SUBJECTS)}
    assert all(kinds[s] == "full" for s in split["fully_labelled"]) and split["fully_labelled"]
    trained = _dice_rows(run / "evaluation.csv")
    for subject in split["test"]:  # a partially labelled test session is scored on what it knows
        scored = {s for (sub, s) in trained if sub == subject}
        assert ("cgm" in scored) == (kinds[subject] == "full") and ("tcv" in scored) == (kinds[subject] != "brain")

    if any(kinds[s] != "full" for s in split["test"]):  # and the report says so
        assert "partially labelled: each is scored only" in (run / "evaluation.md").read_text()

    e_pt, e_onnx, model = tmp_path / "eval-pt.csv", tmp_path / "eval-onnx.csv", tmp_path / "model.onnx"
    assert runner.invoke(eval_app, [str(run / "best.pt"), "-o", str(e_pt), "--device", "cpu", "-q"]).exit_code == 0
    result = runner.invoke(export_app, [str(run / "best.pt"), "-o", str(model)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(eval_app, [str(model), "-o", str(e_onnx), "--backend", "ort-cpu", "-q"])
    assert result.exit_code == 0, result.output
    from_pt, from_onnx = _dice_rows(e_pt), _dice_rows(e_onnx)
    assert from_pt.keys() == from_onnx.keys() == trained.keys()
    assert all(abs(from_pt[k] - trained[k]) < 0.005 and abs(from_onnx[k] - trained[k]) < 0.005 for k in trained)

    seg = tmp_path / "seg"
    result = runner.invoke(infer_app, [str(release), "-m", str(model), "-o", str(seg), "--backend", "ort-cpu",
                                       *[a for s in split["test"] for a in ("--participant-label", s)]])
    assert result.exit_code == 0, result.output
    for subject in split["test"]:
        if kinds[subject] != "full":
            continue
        anat = f"sub-{subject}/ses-1/anat/sub-{subject}_ses-1"
        written = np.asarray(nib.load(seg / f"{anat}_desc-neoseg_dseg.nii.gz").dataobj)
        truth = np.asarray(nib.load(release / f"{anat}_desc-drawem9_dseg.nii.gz").dataobj)
        for structure in ("tcv", "cgm", "wm"):
            c = H.index(structure)
            d = metrics.dice(H.encode(written)[c] == 1, H.encode(truth)[c] == 1)
            assert abs(d - from_onnx[(subject, structure)]) < 1e-6, (subject, structure)


@pytest.mark.parametrize("loss", ["iuc", "labelset", "bce"])
def test_real_partial_sessions_train_with_each_recipe(release, tmp_path, loss):
    import json

    from neoseg.train.config import TrainConfig
    from neoseg.train.loop import train

    config = TrainConfig(data=str(release), loss=loss, spacing=[2.0], slice_size=32, widths=[8, 16], epochs=1,
                         batch_size=8, device="cpu")
    result = train(config, tmp_path / loss, progress=False)
    trained_on = json.loads((tmp_path / loss / "split.json").read_text())["trained_on"]
    kinds = {f"sub-R{i:02d}_ses-1": kind for i, (_, kind) in enumerate(SUBJECTS)}
    if loss == "bce":  # the supervised baseline: the fully labelled sessions only
        assert trained_on and all(kinds[k] == "full" for k in trained_on)
    else:
        assert {kinds[k] for k in trained_on} >= {"full", "partial", "tcv"}
    assert {r["output"] for r in result.rows} == {"dseg", "mask"}


def test_a_dataset_without_any_full_session_is_refused(tmp_path):
    from neoseg.train.config import TrainConfig
    from neoseg.train.loop import train

    root = write_release_like(tmp_path / "data", [(s, "partial" if k == "full" else k) for s, k in SUBJECTS])
    config = TrainConfig(data=str(root), spacing=[2.0], slice_size=32, widths=[8, 16], epochs=1, device="cpu")
    with pytest.raises(ValueError, match="no fully labelled session"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_options_that_differ_from_the_run(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from neoseg.cli.train import app as train_app

    run = tmp_path / "run"
    args = ["--data", str(tiny_dataset), "--out", str(run), "--slice-size", "32", "--widths", "8,16",
            "--batch-size", "8", "--quiet", "--device", "cpu"]
    assert CliRunner().invoke(train_app, [*args, "--epochs", "1"]).exit_code == 0
    result = CliRunner().invoke(train_app, [*args, "--epochs", "2", "--lr", "0.001", "--resume"])
    assert result.exit_code == 2 and "--epochs 2 (the run has 1)" in result.output and "--lr 0.001" in result.output
    assert CliRunner().invoke(train_app, [*args, "--epochs", "1", "--resume"]).exit_code == 0
