"""The robustness suite: fixed and reproducible inputs, corruptions that keep labels in place, and
the command end to end on a tiny checkpoint."""

import numpy as np
import pytest

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
        if c.condition not in ("clean", "cropped-fov"):
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
