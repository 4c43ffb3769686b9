"""Label-set losses, the softmax head and self-training, pinned on tiny hand-worked cases."""

import math

import numpy as np
import pytest
import torch

from neoseg.core.hierarchy import UNKNOWN, Hierarchy
from neoseg.train.heads import ChannelLogits, leaf_cover
from neoseg.train.losses import leaf_dice, make_loss, marginal_cross_entropy, leaf_sets
from neoseg.train.selftrain import EmaTeacher, complete_targets

# channels: bg (0), a (1), b (2), p = {a, b} (3); leaves bg, a, b
H = Hierarchy.from_dict({"name": "tiny", "channels": [
    {"name": "bg", "value": 0}, {"name": "a", "value": 1}, {"name": "b", "value": 2},
    {"name": "p", "value": 3, "children": ["a", "b"]}]})


def targets(labels) -> torch.Tensor:
    """(1, C, 1, W) targets of a row of label values."""
    return torch.from_numpy(H.encode(np.array([[labels]])).transpose(1, 0, 2, 3).copy())


def test_leaf_cover_and_sets():
    assert leaf_cover(H).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]]
    allowed = leaf_sets(targets([0, 1, 3]), H)[0, :, 0]  # (L, W)
    assert allowed.T.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_marginal_cross_entropy_values_and_gradients():
    # equal logits: p = 1/3 per leaf. A voxel labelled a: -log(1/3); labelled p = {a, b}: -log(2/3)
    x = torch.zeros(1, 3, 1, 2, requires_grad=True)
    ce = marginal_cross_entropy(x, leaf_sets(targets([1, 3]), H))
    assert ce[0, 0].tolist() == pytest.approx([math.log(3), math.log(1.5)])
    ce.sum().backward()
    # d/dx_l = p_l - q_l, q = the posterior within the set: (0, 1, 0) for a, (0, 1/2, 1/2) for p
    assert x.grad[0, :, 0, 0].tolist() == pytest.approx([1 / 3, 1 / 3 - 1, 1 / 3])
    assert x.grad[0, :, 0, 1].tolist() == pytest.approx([1 / 3, 1 / 3 - 1 / 2, 1 / 3 - 1 / 2])


def test_coarse_voxel_is_blind_to_the_split_inside_its_set():
    """How a coarse voxel's probability is shared among the set's leaves changes neither term."""
    t = targets([3])
    x1 = torch.tensor([0.0, 2.0, -1.0]).view(1, 3, 1, 1)
    x2 = torch.tensor([0.0, math.log(math.exp(2.0) + math.exp(-1.0) - 1.0), 0.0]).view(1, 3, 1, 1)  # same p(a)+p(b)
    loss = make_loss("labelset", H)
    assert loss(x1, t).item() == pytest.approx(loss(x2, t).item())


def test_leaf_dice_hand_worked():
    # voxel 1 labelled a, voxel 2 labelled p (ambiguous for a and b), voxel 3 labelled bg;
    # logits make p = (0.5, 0.25, 0.25) at every voxel
    x = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1).expand(1, 3, 1, 3).clone()
    allowed = leaf_sets(targets([1, 3, 0]), H)
    # bg: g = (0, 0, 1), p = (.5, .5, .5): (2*.5 + 1) / (1 + .75 + 1)
    # a: g = (1, 0, 0), p = (.25, [ignored], .25): (2*.25 + 1) / (1 + .125 + 1)
    # b: g = 0, p = (.25, [ignored], .25): 1 / (.125 + 1)
    expected = np.mean([2 / 2.75, 1.5 / 2.125, 1 / 1.125])
    assert leaf_dice(x, allowed).item() == pytest.approx(expected)
    value = make_loss("labelset", H, dice_weight=0.5)(x, targets([1, 3, 0]))
    ce = np.mean([-math.log(0.25), -math.log(0.5), -math.log(0.5)])
    assert value.item() == pytest.approx(ce + 0.5 * (1 - expected))


def test_labelset_refuses_channel_logits():
    with pytest.raises(ValueError, match="3 leaf logits"):
        make_loss("labelset", H)(torch.zeros(1, 4, 1, 1), targets([1]))


def test_channel_logits_are_the_marginals():
    x = torch.randn(2, 3, 4, 5) * 4
    p = torch.softmax(x, dim=1)
    expected = torch.stack([p[:, 0], p[:, 1], p[:, 2], p[:, 1] + p[:, 2]], dim=1)
    assert torch.allclose(torch.sigmoid(ChannelLogits(H)(x)), expected, atol=1e-6)
    # far beyond float range: clipped, never NaN
    huge = torch.tensor([0.0, 500.0, -500.0]).view(1, 3, 1, 1)
    out = ChannelLogits(H)(huge)
    assert torch.isfinite(out).all() and out[0, 1].item() == 30.0 and out[0, 2].item() == -30.0


def test_complete_targets_only_inside_the_known_parent():
    # voxels: bg, p, p, a; the teacher favours a strongly everywhere, b mildly at voxel 2
    t = targets([0, 3, 3, 1])
    probs = torch.tensor([[0.1, 0.9, 0.05, 0.95],   # bg
                          [0.9, 0.95, 0.55, 0.9],   # a
                          [0.1, 0.05, 0.45, 0.1],   # b
                          [0.9, 0.99, 0.99, 0.9]]).view(1, 4, 1, 4)  # p
    out = complete_targets(probs, t, H, confidence=0.9)
    assert out[0, :, 0, 1].tolist() == [0, 1, 0, 1]  # confident: a inside p
    assert out[0, :, 0, 2].tolist() == [0, UNKNOWN, UNKNOWN, 1]  # 0.55 share: stays unknown
    assert torch.equal(out[..., [0, 3]], t[..., [0, 3]])  # observed entries untouched, no child outside p


def test_ema_teacher_moves_towards_student():
    student = torch.nn.Linear(2, 1)
    teacher = EmaTeacher(student, decay=0.75)
    start = teacher.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(4.0)
    teacher.update(student)
    assert torch.allclose(teacher.model.weight, start + 1.0)
    assert not teacher.model.weight.requires_grad


# ---- through the training loop --------------------------------------------------------------

def _config(data, **kw):
    from neoseg.train.config import TrainConfig

    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=2, batch_size=8, full_fraction=0.25,
                device="cpu", loss="labelset", prior_bias=True)
    return TrainConfig(**{**base, **kw})


def test_labelset_run_trains_a_softmax_head_and_evaluates_every_channel(tiny_dataset, tmp_path):
    import csv

    from neoseg.train import checkpoint
    from neoseg.train.loop import train

    result = train(_config(tiny_dataset, select="child-dice"), tmp_path / "run", progress=False)
    loaded = checkpoint.load(tmp_path / "run" / "best.pt")
    assert loaded.config.head == "softmax"
    x = torch.zeros(1, 1, 32, 32)
    assert loaded.net(x).shape[1] == len(loaded.hierarchy.leaves) == 10
    assert loaded.model(x).shape[1] == len(loaded.hierarchy) == 11
    assert {r["structure"] for r in result.rows} == set(loaded.hierarchy.names)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(0 <= float(r["val_child_dice"]) <= 1 for r in rows)
    best = [r for r in rows if r["best"] == "1"][-1]  # the selected epoch has the best child Dice so far
    assert float(best["val_child_dice"]) == max(float(r["val_child_dice"]) for r in rows[: int(best["epoch"])])


def test_self_training_is_deterministic_and_resumable(tiny_dataset, tmp_path):
    from neoseg.train import checkpoint
    from neoseg.train.loop import train

    cfg = _config(tiny_dataset, loss="iuc", self_training=True, self_train_after=1, confidence=0.5, epochs=2)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    wa, wb = (checkpoint.load(tmp_path / r / "last.pt") for r in ("a", "b"))
    assert all(torch.equal(wa.net.state_dict()[k], wb.net.state_dict()[k]) for k in wa.net.state_dict())
    assert all(torch.equal(wa.state["teacher_state"][k], wb.state["teacher_state"][k]) for k in wa.state["teacher_state"])
    # 1 epoch, then resume to 2: the same weights as the straight run
    import dataclasses, json
    one = dataclasses.replace(cfg, epochs=1)
    train(one, tmp_path / "c", progress=False)
    stored = json.loads((tmp_path / "c" / "config.json").read_text())
    stored["epochs"] = 2
    (tmp_path / "c" / "config.json").write_text(json.dumps(stored))
    train(cfg, tmp_path / "c", resume=True, progress=False)
    wc = checkpoint.load(tmp_path / "c" / "last.pt")
    assert all(torch.equal(wa.net.state_dict()[k], wc.net.state_dict()[k]) for k in wa.net.state_dict())


def test_maps_that_all_hold_parent_voxels_are_partial_and_refused_without_a_full_one(tmp_path):
    import nibabel as nib

    from conftest import write_dataset
    from neoseg.train.loop import train

    root = write_dataset(tmp_path / "data", n_subjects=4, n=24)
    for path in root.glob("sub-*/ses-1/anat/*dseg.nii.gz"):  # every map labels some voxels TCV (10): partial
        img = nib.load(path)
        labels = np.asarray(img.dataobj).copy()
        labels[labels == 3] = 10
        nib.save(nib.Nifti1Image(labels, img.affine), path)
    with pytest.raises(ValueError, match="no fully labelled session"):
        train(_config(root, full_fraction=1.0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_config_refusals():
    from neoseg.train.config import TrainConfig

    with pytest.raises(ValueError, match="model selection"):
        TrainConfig(select="dice")
    with pytest.raises(ValueError, match="bce has none"):
        TrainConfig(loss="bce", self_training=True)


# ---- export and runtime ----------------------------------------------------------------------

def test_softmax_head_exports_and_runs_like_a_sigmoid_model(tiny_dataset, tmp_path):
    import json

    import onnx

    from neoseg.benchmarks.toy import train_toy
    from neoseg.data.dhcp import find_sessions
    from neoseg.export.onnx_export import export_onnx, verification_slices
    from neoseg.runtime.backends import OrtBackend
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.runtime.pipeline import Segmenter
    from neoseg.train import checkpoint
    from neoseg.train.volumes import load_canonical

    sessions = find_sessions(tiny_dataset)
    loaded = checkpoint.load(train_toy(tmp_path / "toy.pt", sessions[:4], 32, widths=(8, 16), steps=60,
                                       loss="labelset"))
    info = info_from_checkpoint(loaded)
    assert info.head == "softmax"
    images = [load_canonical(s.t2, np.float32)[0] for s in sessions[4:6]]
    report = export_onnx(loaded.model, info, tmp_path / "m.onnx", verify_on=verification_slices(images, info))
    assert report.max_abs_diff < 1e-3 and min(report.dice.values()) >= 0.999  # ONNX Runtime = torch
    backend = OrtBackend(tmp_path / "m.onnx")
    import dataclasses
    assert dataclasses.replace(backend.info, reduced_precision="{}") == info  # the head survives the model file
    assert set(backend.info.parity_records) == {"bf16", "fp16"}  # the reduced-precision gate measured it too
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    output = json.loads(meta["neoseg.output"])
    assert output["head"] == "softmax" and output["leaves"] == [n for n in info.hierarchy.names if n != "tcv"]
    # every channel is derived, parents included: P(tcv) = P(cgm) + P(wm) + P(dgm), so no child
    # mask reaches outside the TCV mask, and the leaves' probabilities sum to 1
    seg = Segmenter(backend).segment(images[0], np.diag([2.0, 2, 2, 1]), (2.0, 2, 2), probabilities=True)
    probs, masks, names = seg.probs, seg.masks.astype(bool), info.hierarchy.names
    kids = [names.index(n) for n in ("cgm", "wm", "dgm")]
    np.testing.assert_allclose(probs[..., names.index("tcv")], probs[..., kids].sum(axis=-1), atol=1e-4)
    np.testing.assert_allclose(probs[..., info.hierarchy.leaves].sum(axis=-1), 1.0, atol=1e-4)
    tcv = masks[..., names.index("tcv")]
    assert all(not (masks[..., k] & ~tcv).any() for k in kids) and tcv.any()


def test_self_training_starts_from_the_best_weights_once_the_plain_loss_plateaus(tiny_dataset, tmp_path,
                                                                                 monkeypatch):
    """Default schedule: plain loss until early stopping would end the run, then self-training from
    the best epoch's weights with patience counted afresh; then early stopping for good."""
    from neoseg.train import checkpoint, loop
    from neoseg.core.hierarchy import resolve
    from neoseg.train.epoch import EpochStats

    calls = []

    def flat_epoch(ctx, loader, desc="", train=False, complete=None, after_step=None):
        if train:  # training pass: record whether pseudo labels were in use
            calls.append(complete is not None)
        return EpochStats(1.0, 0.5, np.full(len(resolve("dhcp-drawem9")), 0.5))  # the validation loss never improves after epoch 1

    monkeypatch.setattr(loop, "run_epoch", flat_epoch)
    result = loop.train(_config(tiny_dataset, loss="iuc", self_training=True, patience=1, epochs=10),
                        tmp_path / "run", progress=False)
    assert calls == [False, False, True]  # epochs 1-2 plain, 3 self-training, 4 would exceed the patience again
    assert result.stopped_by == "early stopping" and result.best_epoch == 1
    assert checkpoint.load(tmp_path / "run" / "last.pt").state["self_train_began"] == 3
