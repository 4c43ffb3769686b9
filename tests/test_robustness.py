"""The robustness suite: fixed and reproducible inputs, corruptions that keep labels in place, and
the command end to end on a tiny checkpoint."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from neoseg.benchmarks import robustness as R
from neoseg.data.dhcp import find_sessions


def test_the_suite_gives_the_same_inputs_every_time(tiny_dataset):
    sessions = find_sessions(tiny_dataset)[:2]
    first, second = list(R.build_cases(sessions)), list(R.build_cases(list(reversed(sessions))))
    assert [c.condition for c in first[:len(R.CONDITIONS)]] == list(R.CONDITIONS)
    key = lambda c: (c.subject, c.condition)  # noqa: E731 - the order of sessions does not matter
    for a, b in zip(sorted(first, key=key), sorted(second, key=key)):
        assert key(a) == key(b) and a.spacing == b.spacing
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    clean = {c.subject: c.image for c in first if c.condition == "clean"}
    for c in first:
        assert np.isfinite(c.image).all()
        if c.condition not in ("clean", "cropped-fov", "res-1.5mm"):  # 1.5 mm is no coarser than these 2 mm scans
            assert c.image.shape == clean[c.subject].shape and not np.array_equal(c.image, clean[c.subject])
    other_seed = list(R.build_cases(sessions[:1], seed=R.SUITE_SEED + 1))
    noisy = lambda cases: next(c.image for c in cases if c.condition == "noise")  # noqa: E731
    assert not np.array_equal(noisy(other_seed), noisy(first))


def test_corruptions_keep_the_labels_where_the_anatomy_is(tiny_dataset):
    from neoseg.train.volumes import load_session

    session = find_sessions(tiny_dataset)[0]
    image, labels, _ = load_session(session)
    brain = R.brain_mask(session, labels)  # the phantoms have no mask file: labels != 0
    rng = np.random.default_rng(0)
    extracted, same = R.corrupt("brain-extracted", image, labels, brain, rng)
    assert same is labels and np.array_equal(extracted, np.where(labels != 0, image, 0))
    cropped, cut = R.corrupt("cropped-fov", image, labels, brain, rng)
    assert cropped.shape == cut.shape and cut.shape[0] == labels.shape[0] and cut.shape[2] < labels.shape[2]
    box = np.argwhere(labels != 0)
    lo = box.min(axis=0)
    assert np.array_equal(cut, labels[:, lo[1]:lo[1] + cut.shape[1], lo[2]:lo[2] + cut.shape[2]])
    assert np.array_equal(cropped, image[:, lo[1]:lo[1] + cut.shape[1], lo[2]:lo[2] + cut.shape[2]])
    ramp = np.broadcast_to(np.arange(24, dtype=np.float32), (24, 24, 24)).copy()
    low = R.resample_axis(ramp, 3.0, 2)  # linear along the coarse axis stays linear (and in place)
    assert low.shape == ramp.shape and np.allclose(low[..., 4:20], ramp[..., 4:20], atol=1e-3)
    x = np.linspace(0, 100, 1001, dtype=np.float32)
    assert (np.diff(R.intensity_curve(x, rng)) >= 0).all()


def test_the_contrast_suite_changes_the_contrast_inside_the_head_only():
    rng = np.random.default_rng(0)
    labels = np.zeros((24, 24, 24), np.uint8)
    labels[4:20, 4:20, 4:20] = 1  # csf
    labels[6:18, 6:18, 6:18] = 2  # cgm
    labels[9:15, 9:15, 9:15] = 3  # wm
    t2 = np.array([0, 250, 120, 170], np.float32)[labels]
    air = ~ndimage.binary_dilation(labels > 0, iterations=3)  # the head mask is smoothed by a voxel
    mean = lambda img, v: float(img[labels == v].mean())  # noqa: E731
    t1 = R.contrast_condition("t1-like", t2, rng)
    assert np.array_equal(t1[air], t2[air])
    assert mean(t1, 3) < mean(t1, 2) and mean(t1, 1) < mean(t1, 3)  # white matter darker than the cortex, CSF darkest
    te_tr = R.contrast_condition("te-tr", t2, rng)
    # the order stays, the CSF/cortex contrast flattens: 250 -> sqrt(1) (1 - e^(-4/3)) = 0.736,
    # 120 -> sqrt(0.48) (1 - e^(-4/1.96)) = 0.603 (times the 99.5th percentile, 250), a ratio of 1.22, not 2.08
    assert mean(te_tr, 1) > mean(te_tr, 3) > mean(te_tr, 2)
    assert mean(te_tr, 1) == pytest.approx(0.736 * 250, rel=1e-3) and mean(te_tr, 2) == pytest.approx(0.603 * 250, rel=1e-3)
    ramp = np.linspace(1, 250, 24 ** 3, dtype=np.float32).reshape(24, 24, 24)
    matched = R.contrast_condition("scanner-histogram", ramp, rng)
    head = R.head_mask(ramp)[0]
    assert (np.diff(matched[head]) >= -1e-4).all() and not np.allclose(matched[head], ramp[head], rtol=0.02)
    with pytest.raises(ValueError, match="unknown contrast condition"):
        R.contrast_condition("flair", t2, rng)


def test_the_resolution_suite_coarsens_only_axes_finer_than_its_voxel():
    rng = np.random.default_rng(1)
    volume = rng.random((24, 24, 24)).astype(np.float32)
    assert np.array_equal(R.acquire_at(volume, (1.5, 1.5, 1.5), (2.0, 2.0, 2.0)), volume)
    thick = R.acquire_at(volume, (0.8, 0.8, 4.0), (2.0, 2.0, 2.0))
    assert np.allclose(thick, R.resample_axis(volume, 2.0, 2))  # 4 mm on 2 mm voxels, along z only
    fine = R.acquire_at(volume, (0.8, 0.8, 4.0), (0.5, 0.5, 0.5))
    expected = volume
    for axis, factor in enumerate((1.6, 1.6, 8.0)):
        expected = R.resample_axis(expected, factor, axis)
    assert np.allclose(fine, expected)
    image, labels = R.corrupt("res-3mm", volume, volume > 0.5, volume, rng, spacing=(1.0, 1.0, 1.0))
    assert image.shape == volume.shape and volume.std() > 2 * image.std()


def test_the_suites_check_names_structures_below_the_limit():
    rows = [{"condition": c, "output": "dseg", "structure": s, "dice": d, "truth_empty": False}
            for c, s, d in (("clean", "wm", 0.9), ("clean", "cgm", 0.8), ("t1-like", "wm", 0.7), ("t1-like", "cgm", 0.5),
                            ("res-3mm", "wm", 0.8))]
    lines = R.criteria(rows)
    assert lines[-1] == ("contrast and resolution suites, structures above 0.85 clean that fall below 0.75: "
                         "wm under t1-like (0.700, clean 0.900)")


@pytest.mark.slow
def test_the_command_reports_and_writes_reproducible_results(tiny_dataset, tmp_path, monkeypatch, capsys):
    import torch

    from neoseg.core.hierarchy import builtin
    from neoseg.train import checkpoint
    from neoseg.train.config import TrainConfig
    from neoseg.train.models import create_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the second cohort is generated here
    torch.manual_seed(0)
    config = TrainConfig(data=str(tiny_dataset), slice_size=32, widths=[8, 16], device="cpu")
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    checkpoint.save(ckpt, create_model("unet", 1, 11, widths=[8, 16]), config, builtin(), (2.0, 2.0, 2.0))
    out = tmp_path / "rob"
    R.main(["--checkpoint", str(ckpt), "--out", str(out), "--other-subjects", "1"])
    printed = capsys.readouterr().out
    assert "| clean |" in printed and "| other-cohort |" in printed and "brain-extracted within 0.05" in printed
    first = (out / "robustness.csv").read_text()
    conditions = {line.split(",")[0] for line in first.splitlines()[1:]}
    assert conditions == set(R.CONDITIONS) | {R.OTHER}
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        R.main(["--checkpoint", str(ckpt), "--out", str(out), "--other-subjects", "1"])
    R.main(["--checkpoint", str(ckpt), "--out", str(out), "--other-subjects", "1", "--overwrite"])
    assert (out / "robustness.csv").read_text() == first
    with pytest.raises(SystemExit, match="does not exist"):
        R.main(["--checkpoint", str(tmp_path / "missing.pt")])

    # a run folder of two members is measured as the one model they make: their mean probability
    (ckpt.parent / "config.json").write_text(dataclasses.replace(config, members=2).to_json())
    (ckpt.parent / "evaluation.csv").write_text("")
    second = ckpt.parent / "member-1"
    second.mkdir()
    torch.manual_seed(1)
    checkpoint.save(second / "best.pt", create_model("unet", 1, 11, widths=[8, 16]), config, builtin(), (2.0, 2.0, 2.0))
    with pytest.raises(SystemExit, match="has not finished training"):
        R.main(["--checkpoint", str(ckpt.parent), "--other-subjects", "0"])
    (second / "evaluation.csv").write_text("")
    R.main(["--checkpoint", str(ckpt.parent), "--out", str(tmp_path / "both"), "--other-subjects", "1"])
    assert f"# Robustness of {ckpt}, {second / 'best.pt'}" in capsys.readouterr().out
    assert (tmp_path / "both" / "robustness.csv").read_text() != first
