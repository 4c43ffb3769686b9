"""The training augmentation: geometry (labels move with the image), the label-map rules (brain
extraction, field-of-view cuts, unknown entries), determinism, and its wiring into training."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from neoseg.core.hierarchy import UNKNOWN, builtin
from neoseg.train import augment as A
from neoseg.train.config import TrainConfig

H = builtin()  # drawem9 + tcv; channel 0 is "unlabelled" (value 0, outside the brain mask)
CSF, CGM, WM, TCV = (H.index(n) for n in ("csf", "cgm", "wm", "tcv"))
FILL = torch.as_tensor(H.target_table()[0], dtype=torch.float32)


def square_batch(n=2, size=32, rows=(8, 16), cols=(10, 20), value=2):
    """Images 1 inside a square (0 elsewhere) and targets labelled ``value`` there, outside elsewhere."""
    labels = np.zeros((n, size, size), np.uint8)
    labels[:, rows[0]:rows[1], cols[0]:cols[1]] = value
    image = torch.from_numpy((labels > 0).astype(np.float32))[:, None]
    return image, torch.from_numpy(np.ascontiguousarray(H.encode(labels).swapaxes(0, 1)))


def label_mask(target, channel):
    return target[:, channel] == 1


def test_a_shift_moves_image_and_labels_together():
    image, target = square_batch()
    shift = torch.tensor([[2 * 4 / 32, 2 * -3 / 32]] * 2)  # 4 pixels right (x), 3 up (y)
    grid = A.affine_grid(torch.zeros(2), torch.ones(2), shift, (32, 32))
    moved, moved_target = A.warp(image, target, grid, FILL)
    expected = torch.zeros(2, 32, 32, dtype=torch.bool)
    expected[:, 5:13, 14:24] = True
    assert torch.equal(moved[:, 0] > 0.5, expected)
    assert torch.equal(label_mask(moved_target, CGM), expected)
    assert torch.equal(label_mask(moved_target, 0), ~expected)  # outside filled in as outside


@pytest.mark.parametrize("degrees", [90, 27])
def test_rotation_scaling_and_elastic_keep_image_and_labels_aligned(degrees):
    image, target = square_batch(rows=(4, 14), cols=(6, 18))
    angle = torch.full((2,), math.radians(degrees))
    grid = A.affine_grid(angle, torch.tensor([1.0, 1.2]), torch.zeros(2, 2), (32, 32))
    if degrees != 90:
        grid = grid + A.elastic_offsets(0.05 * torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(0)),
                                        (32, 32))
    moved, moved_target = A.warp(image, target, grid, FILL)
    seen, labelled = moved[:, 0] > 0.5, label_mask(moved_target, CGM)
    if degrees == 90:  # exact: the square lands rotated, image and labels alike
        assert torch.equal(seen, labelled)
        assert not torch.equal(labelled, label_mask(target, CGM))
    else:  # bilinear vs nearest differ at most on the rim
        assert (seen & labelled).sum() / (seen | labelled).sum() > 0.85
    assert torch.equal(label_mask(moved_target, TCV), labelled)  # the parent moves with its child


def test_targets_stay_in_0_1_2_and_unknown_stays_unknown():
    """A TCV-only (coarsened) region has unknown children; after the whole default policy every
    pixel's target is still one of the input's target vectors (or outside), never a new mixture."""
    labels = np.zeros((16, 32, 32), np.uint8)
    labels[:, 6:26, 6:26] = 1  # csf
    labels[:, 9:23, 9:23] = 10  # tcv only: cgm, wm, dgm unknown
    labels[:, 12:20, 12:20] = 3  # wm (fully labelled core)
    target = torch.from_numpy(np.ascontiguousarray(H.encode(labels).swapaxes(0, 1)))
    image = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    out_image, out_target = A.make_augment("standard", H, seed=3)(image, target)
    assert out_target.dtype == torch.uint8 and set(out_target.unique().tolist()) <= {0, 1, 2}
    vectors = lambda t: {tuple(v) for v in t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).tolist()}  # noqa: E731
    assert vectors(out_target) <= vectors(target) | {tuple(FILL.int().tolist())}
    unknown = out_target[:, CGM] == UNKNOWN
    assert unknown.any() and torch.equal(unknown, out_target[:, WM] == UNKNOWN)
    assert (out_target[:, TCV][unknown] == 1).all()
    assert torch.isfinite(out_image).all() and (out_image >= 0).all()
    assert not torch.equal(out_image, image)


def test_brain_extraction_zeroes_exactly_outside_the_brain_labels():
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 4:28, 4:28] = 4  # drawem9 "background": non-brain inside the brain mask, kept
    labels[:, 8:24, 8:24] = 2
    target = torch.from_numpy(np.ascontiguousarray(H.encode(labels).swapaxes(0, 1)))
    image = 0.2 + torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = A.brain_extract(image, target, H.outside_channel, torch.tensor([0, 1]))
    outside = torch.from_numpy(labels == 0)
    assert (out[0, 0][outside[0]] == 0).all() and torch.equal(out[0, 0][~outside[0]], image[0, 0][~outside[0]])
    loose = torch.zeros(32, 32, dtype=torch.bool)
    loose[3:29, 3:29] = True  # margin 1 keeps one more ring of non-brain pixels
    assert (out[1, 0][~loose] == 0).all() and torch.equal(out[1, 0][loose], image[1, 0][loose])


def test_field_of_view_cut_removes_a_band_of_image_and_labels():
    image, target = square_batch(n=4, rows=(0, 32), cols=(0, 32))
    out, out_target = A.fov_cut(image, target, torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), FILL)
    kept = [(slice(5, 32), slice(None)), (slice(0, 26), slice(None)), (slice(None), slice(7, 32)),
            (slice(None), slice(0, 24))]
    for k, region in enumerate(kept):
        assert out[k, 0][region].eq(1).all() and out[k, 0].sum() == out[k, 0][region].sum()
        assert label_mask(out_target[k:k + 1], CGM)[0].sum() == out[k, 0].sum()
        assert label_mask(out_target[k:k + 1], 0)[0].sum() == 32 * 32 - out[k, 0].sum()


def test_resolution_transforms_do_not_move_edges():
    step = torch.zeros(2, 1, 32, 32)
    step[..., 16:] = 1.0  # a vertical edge between columns 15 and 16
    for out in (A.blur(step, torch.tensor([0.5, 1.2])), A.low_resolution(step, torch.tensor([2.0, 3.7]), -1)):
        assert torch.allclose(out[..., 15] + out[..., 16], torch.ones_like(out[..., 15]), atol=0.15)
        assert torch.allclose(out[..., :4], torch.zeros(1)) and torch.allclose(out[..., -4:], torch.ones(1))
    across = A.low_resolution(step, torch.tensor([3.0, 3.0]), -2)  # along y: the x edge stays sharp
    assert torch.allclose(across, step, atol=1e-5)
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32)
    low = A.low_resolution(ramp, torch.tensor([3.0]), -1)  # linear stays linear away from the borders
    assert torch.allclose(low[..., 6:26], ramp[..., 6:26], atol=1e-4)


def test_intensity_curve_is_monotone_and_fixes_0_and_1():
    aug = A.make_augment("standard", H, seed=0)
    knots = aug.draw(8, (4, 4))["knots"]
    x = torch.linspace(0, 1, 101).expand(8, 1, 1, 101)
    y = A.intensity_curve(x, knots)
    assert (y.diff(dim=-1) > 0).all()
    assert torch.allclose(y[..., 0], torch.zeros(1)) and torch.allclose(y[..., -1], torch.ones(1))


def test_the_contrast_policy_reorders_tissue_intensities_and_keeps_air_dark():
    """The non-monotone curve: 0 stays 0, and across slices the order of two tissues flips both ways."""
    others = ("spatial", "bias", "gamma", "curve", "brightness", "blur", "lowres", "noise", "brain", "fov")
    only_remap = dataclasses.replace(A.Policy(), **{f: 0.0 for f in others}, remap=1.0)
    aug = A.Augmenter(only_remap, H, seed=3)
    n = 64
    image = torch.zeros(n, 1, 8, 8)
    image[:, :, :, 2:5], image[:, :, :, 5:] = 0.3, 0.9  # air, a dark and a bright tissue
    target = torch.zeros(n, len(H), 8, 8, dtype=torch.uint8)
    out, same_target = aug(image, target)
    assert torch.equal(same_target, target) and (out[..., :2] == 0).all()
    dark, bright = out[:, 0, 0, 3], out[:, 0, 0, 6]
    assert (dark > bright).sum() > n // 5 and (dark < bright).sum() > n // 5
    assert ((out >= 0) & (out <= 1)).all()
    assert A.make_augment("standard", H, seed=0).policy.remap == 0  # the standard policy keeps the tissues' order


def test_augmentation_is_deterministic_by_seed_and_resumable():
    image, target = square_batch(n=8)
    a, b, c = (A.make_augment("standard", H, seed=s) for s in (5, 5, 6))
    first_a, first_b, first_c = a(image, target), b(image, target), c(image, target)
    assert all(torch.equal(x, y) for x, y in zip(first_a, first_b))
    assert not torch.equal(first_a[0], first_c[0])
    state = a.get_state()
    second = a(image, target)
    b.set_state(state)
    assert all(torch.equal(x, y) for x, y in zip(second, b(image, target)))


def test_a_share_of_a_global_batch_is_augmented_as_in_one_process():
    """torchrun ranks draw for the whole global batch and keep their rows: the same result."""
    image, target = square_batch(n=7)
    whole = A.make_augment("standard", H, seed=2)(image, target)
    parts = [A.make_augment("standard", H, seed=2)(image[a:b], target[a:b], a, 7) for a, b in ((0, 4), (4, 7))]
    for k in range(2):
        assert torch.equal(whole[k], torch.cat([p[k] for p in parts]))


def test_policy_names_are_checked():
    assert A.make_augment("none", H, seed=0) is None
    with pytest.raises(ValueError, match="unknown augmentation policy 'heavy'; available: standard, none, contrast"):
        TrainConfig(augment="heavy")
    with pytest.raises(ValueError, match="available: standard, none, contrast"):
        A.make_augment("heavy", H, seed=0)
    assert TrainConfig().augment == "contrast"
    raw = TrainConfig().to_json().replace('"augment": "contrast",\n', "")
    assert TrainConfig.from_json(raw).augment == "none"  # runs from before augmentation existed
    old_name = TrainConfig().to_json().replace('"augment": "contrast"', '"augment": "default"')
    assert TrainConfig.from_json(old_name).augment == "standard"  # runs from before the policy was renamed


def _training_inputs(config, out):
    """Every image batch the model was trained on (not validated on) in a run of ``config``."""
    from neoseg.train import loop

    seen = []
    create = loop.create_model

    def recording(*args, **kw):
        model = create(*args, **kw)
        model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()) if m.training else None)
        return model

    loop.create_model = recording
    try:
        loop.train(config, out, progress=False)
    finally:
        loop.create_model = create
    return torch.cat(seen)


@pytest.mark.slow
def test_augment_none_trains_on_the_slices_as_they_are_and_the_default_does_not(tiny_dataset, tmp_path):
    base = dict(data=str(tiny_dataset), cache=str(tmp_path / "cache"), slice_size=32, widths=[8, 16], epochs=1,
                steps_per_epoch=4, batch_size=8, full_fraction=0.25, device="cpu")
    plain = _training_inputs(TrainConfig(**base, augment="none"), tmp_path / "none")
    augmented = _training_inputs(TrainConfig(**base), tmp_path / "default")
    cached = np.concatenate([np.load(p) for p in sorted((tmp_path / "cache").glob("*.image.npy"))])
    known = {s.astype(np.float32).tobytes() for s in cached}
    assert len(plain) == len(augmented) == 4 * 8
    assert all(x[0].numpy().tobytes() in known for x in plain)
    assert sum(x[0].numpy().tobytes() in known for x in augmented) < 0.5 * len(augmented)


def test_the_command_line_turns_augmentation_off_and_refuses_unknown_policies(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from neoseg.cli.train import app
    from neoseg.train import loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda config, *a, **kw: seen.append(config) or (_ for _ in ()).throw(
        ValueError("stop here")))
    runner = CliRunner()
    for args, expected in (([], "contrast"), (["--augment", "none"], "none"), (["--profile", "paper"], "none"),
                           (["--augment", "standard"], "standard"),
                           (["--profile", "paper", "--augment", "standard"], "standard")):
        result = runner.invoke(app, ["--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and "stop here" in result.output
        assert seen.pop().augment == expected
    result = runner.invoke(app, ["--out", str(tmp_path / "r"), "--augment", "heavy"])
    assert result.exit_code == 2 and "heavy" in result.output and not seen


def test_the_papers_experiments_train_without_augmentation(tmp_path):
    from neoseg.reproduce.grid import plan
    from neoseg.reproduce.profiles import PROFILES
    from neoseg.reproduce.training import run_config

    for name, profile in PROFILES.items():
        for spec in plan(profile)[:3]:
            assert run_config(spec, profile, tmp_path, tmp_path / "cache", "cpu").augment == "none", name
