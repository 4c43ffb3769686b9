"""Training from label maps: regions of full and partial targets, the synthesis's randomness
(deterministic, resumable, shared across ranks), label maps without images, and the options."""

import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from neoseg.core.hierarchy import builtin
from neoseg.train import synthesis as S
from neoseg.train.config import TrainConfig
from neoseg.train.label_maps import label_stacks

H = builtin()  # drawem9 + tcv (channel 10, parent of cgm 2, wm 3, dgm 7); channel 0 the outside
TCV = H.index("tcv")
DEPTH = torch.tensor([len(H.ancestors(i)) for i in range(len(H))])


def batch(n=4, size=32, coarse=False):
    """Nested squares: outside, csf, cgm, wm, dgm; images 0.1 / 0.9 / 0.3 / 0.5 / 0.7 by label."""
    labels = np.zeros((n, size, size), np.uint8)
    for margin, value in ((2, 1), (6, 2), (10, 3), (13, 7)):
        labels[:, margin:size - margin, margin:size - margin] = value
    image = torch.from_numpy(np.choose(np.searchsorted([1, 2, 3, 7], labels, side="right"),
                                       [0.1, 0.9, 0.3, 0.5, 0.7]).astype(np.float32))[:, None]
    if coarse:
        labels = H.coarsen(labels)
    return image, torch.from_numpy(np.ascontiguousarray(H.encode(labels).swapaxes(0, 1))), labels


def test_regions_are_the_leaves_where_known_and_the_parent_where_the_children_are_not():
    _, full, labels = batch()
    value_of_channel = {i: c.values[0] for i, c in enumerate(H.channels) if c.values}
    region = S.regions(full, DEPTH)
    assert torch.equal(region.apply_(lambda r: value_of_channel[r]), torch.from_numpy(labels.astype(np.int64)))
    _, partial, coarse = batch(coarse=True)
    region = S.regions(partial, DEPTH)
    cerebrum = torch.from_numpy(np.isin(batch()[2], [2, 3, 7]))
    assert (region[cerebrum] == TCV).all() and (region[~cerebrum] != TCV).all()
    assert (region[torch.from_numpy(coarse == 0)] == 0).all()


def test_only_the_outside_and_unknown_parents_are_split_by_the_real_intensity():
    image, partial, _ = batch(coarse=True)
    split = torch.tensor([bool(c.children) or i == H.outside_channel for i, c in enumerate(H.channels)])
    region = S.split_by_intensity(S.regions(partial, DEPTH), image, split)
    k = len(S.BINS) + 1
    # inside TCV the real cgm (0.3), wm (0.5) and dgm (0.7) fall in three bins; csf (0.9) stays one region
    assert set((region[region // k == TCV] % k).unique().tolist()) == {1, 2, 3}
    assert set(region[region // k == 1].unique().tolist()) == {k * 1}
    nan = torch.full_like(image, math.nan)  # a label map without an image: one region per channel
    assert (S.split_by_intensity(S.regions(partial, DEPTH), nan, split) % k == 0).all()


def test_synthesis_is_deterministic_resumable_and_shared_across_ranks_as_one_process():
    image, target, _ = batch(n=6)
    a, b, c = (S.Synthesis(1.0, H, seed) for seed in (5, 5, 6))
    first = a(image, target)[0]
    assert torch.equal(first, b(image, target)[0]) and not torch.equal(first, c(image, target)[0])
    assert torch.isfinite(first).all() and first.min() >= 0 and first.max() <= 1 + 1e-6
    assert not torch.equal(first, image)
    state = a.get_state()
    after = a(image, target)[0]
    resumed = S.Synthesis(1.0, H, 99)
    resumed.set_state(state)
    assert torch.equal(resumed(image, target)[0], after) and not torch.equal(after, first)
    whole = S.Synthesis(1.0, H, 2)(image, target)[0]
    parts = [S.Synthesis(1.0, H, 2)(image[i:j], target[i:j], i, 6)[0] for i, j in ((0, 4), (4, 6))]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)  # the same draws; batched convolutions round apart


def test_the_probability_is_per_slice_and_slices_without_an_image_are_always_synthesised():
    image, target, _ = batch(n=64)
    out, same_target = S.Synthesis(0.5, H, 0)(image, target)
    kept = (out == image).flatten(1).all(1)
    assert 16 < int(kept.sum()) < 48 and torch.equal(same_target, target)
    image[::2] = math.nan
    out, _ = S.Synthesis(1e-9, H, 0)(image, target)
    assert torch.isfinite(out).all()
    assert (out[1::2] == image[1::2]).all() and not (out[::2] == 0.5).all()
    assert S.with_synthesis(None, 0.0, H, 0) is None


def test_the_augmenter_runs_after_the_synthesis_and_both_states_resume():
    from neoseg.train.augment import make_augment

    image, target, _ = batch(n=8)
    make = lambda: S.with_synthesis(make_augment("standard", H, 3), 1.0, H, 3)  # noqa: E731
    a = make()
    a(image, target)
    state = a.get_state()
    expected = a(image, target)
    b = make()
    b.set_state(state)
    got = b(image, target)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_motion_ghosts_shift_only_the_late_lines():
    image, _, _ = batch(n=2)
    still = S.motion_ghosts(image, torch.zeros(2, 2), torch.full((2,), 0.2), torch.tensor([True, False]))
    assert torch.allclose(still, image, atol=1e-5)
    moved = S.motion_ghosts(image, torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.full((2,), 0.2),
                            torch.tensor([True, False]))
    assert (moved - image).abs().max() > 0.02
    everything = S.motion_ghosts(image, torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.full((2,), -1.0),
                                 torch.tensor([True, True]))
    assert torch.allclose(everything, torch.roll(image, 2, dims=-2), atol=1e-5)  # all lines moved: a shift


def _write_label_maps(tiny_dataset, folder, spacing=2.0):
    folder.mkdir()
    for src in sorted(tiny_dataset.rglob("*_dseg.nii.gz"))[:2]:
        img = nib.load(src)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([spacing] * 3 + [1.0])), folder / src.name)
    return folder


def test_label_maps_become_stacks_with_nan_images_and_bad_ones_are_refused(tiny_dataset, tmp_path):
    folder = _write_label_maps(tiny_dataset, tmp_path / "maps")
    stacks = label_stacks(folder, H, 0, 32, (2.0, 2.0, 2.0))
    assert len(stacks) == 2 and all(np.isnan(st.image).all() and st.labels.shape == st.image.shape for st in stacks)
    assert all(st.labels.shape[1:] == (32, 32) and st.labels.reshape(len(st.labels), -1).any(1).all() for st in stacks)
    finer = label_stacks(folder, H, 0, 32, (1.0, 1.0, 1.0))  # resampled to the training voxel size
    assert all(st.spacing == (1.0, 1.0, 1.0) and len(st.labels) > len(c.labels) for st, c in zip(finer, stacks))
    bad = tmp_path / "bad"
    bad.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 42, np.uint8), np.diag([2.0] * 3 + [1.0])), bad / "x.nii.gz")
    with pytest.raises(ValueError, match=r"label values \[42\] are not in hierarchy"):
        label_stacks(bad, H, 0, 32, (2.0, 2.0, 2.0))
    shutil.rmtree(bad)
    bad.mkdir()
    with pytest.raises(ValueError, match="holds no label maps"):
        label_stacks(bad, H, 0, 32, (2.0, 2.0, 2.0))


def test_config_checks_the_synthesis_options():
    assert TrainConfig().synthesis == 0 and TrainConfig().synth_labels is None  # today's behaviour by default
    with pytest.raises(ValueError, match="probability per slice"):
        TrainConfig(synthesis=1.5)
    with pytest.raises(ValueError, match="train only through synthesis"):
        TrainConfig(synth_labels="maps")
    raw = TrainConfig().to_json().replace('"synthesis": 0.0,\n', "")
    assert TrainConfig.from_json(raw).synthesis == 0  # runs from before synthesis existed


@pytest.mark.slow
def test_label_maps_without_images_enter_training_through_synthesis(tiny_dataset, tmp_path):
    from test_augment import _training_inputs

    folder = _write_label_maps(tiny_dataset, tmp_path / "maps")
    # a synthesis probability of ~0 and no augmentation: real slices reach the network as they are,
    # so every other input is a label map's synthesised slice
    config = TrainConfig(data=str(tiny_dataset), cache=str(tmp_path / "cache"), slice_size=32, widths=[8, 16],
                         epochs=1, steps_per_epoch=6, batch_size=8, full_fraction=0.25, augment="none",
                         synthesis=1e-9, synth_labels=str(folder), device="cpu")
    inputs = _training_inputs(config, tmp_path / "run")
    cached = np.concatenate([np.load(p) for p in sorted((tmp_path / "cache").glob("*.image.npy"))])
    known = {s.astype(np.float32).tobytes() for s in cached}
    synthesised = [x for x in inputs if x[0].numpy().tobytes() not in known]
    assert torch.isfinite(inputs).all() and 0 < len(synthesised) < len(inputs)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and math.isfinite(float(rows[1].split(",")[1]))


def test_the_command_line_passes_the_synthesis_options(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from neoseg.cli.train import app
    from neoseg.train import loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda config, *a, **kw: seen.append(config) or (_ for _ in ()).throw(
        ValueError("stop here")))
    runner = CliRunner()
    result = runner.invoke(app, ["--out", str(tmp_path / "r"), "--synthesis", "0.5", "--synth-labels", str(tmp_path)])
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen.pop().synthesis == 0.5
    result = runner.invoke(app, ["--out", str(tmp_path / "r"), "--synth-labels", str(tmp_path)])
    assert result.exit_code != 0 and "train only through synthesis" in result.output and not seen


@pytest.mark.slow
def test_a_run_with_synthesis_resumes_exactly(tiny_dataset, tmp_path):
    import json

    from neoseg.train import checkpoint
    from neoseg.train.loop import train

    config = lambda epochs, p=0.5: TrainConfig(  # noqa: E731
        data=str(tiny_dataset), cache=str(tmp_path / "cache"), slice_size=32, widths=[8, 16], epochs=epochs,
        steps_per_epoch=3, batch_size=8, full_fraction=0.25, synthesis=p, device="cpu")
    train(config(1), tmp_path / "a", progress=False)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["epochs"] = 2
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    train(config(2), tmp_path / "a", resume=True, progress=False)
    train(config(2), tmp_path / "b", progress=False)
    train(config(2, 0.0), tmp_path / "c", progress=False)
    weights = [checkpoint.load(tmp_path / run / "last.pt").model.state_dict() for run in "abc"]
    assert all(torch.allclose(weights[0][k].float(), weights[1][k].float()) for k in weights[0])
    assert not all(torch.allclose(weights[0][k].float(), weights[2][k].float()) for k in weights[0])
    assert set(checkpoint.load(tmp_path / "a" / "last.pt").state["augment_state"]) == {"synthesis", "augment"}
