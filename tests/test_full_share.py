"""The levers for few fully labelled subjects: batches with a share of fully labelled slices
(train/sampling.py, ``--full-share``), a start from a model of another head (train/init.py,
train/heads.py ``head_conversion``, ``--init-from``), and the selection criterion a run reports."""

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neoseg.cli.train import app as train_app
from neoseg.core.hierarchy import builtin
from neoseg.data.dhcp import find_sessions
from neoseg.train import checkpoint
from neoseg.train.config import TrainConfig
from neoseg.train.dataset import SliceDataset
from neoseg.train.heads import ChannelLogits, channel_model, head_conversion, output_channels
from neoseg.train.init import load_initial_weights
from neoseg.train.loop import train
from neoseg.train.models import create_model
from neoseg.train.sampling import MixedBatches, ShardedBatches, training_batches
from neoseg.train.schedule import Schedule, Step
from neoseg.train.volumes import VolumeCache

H = builtin()
CGM, WM, DGM, TCV, CSF = (H.index(n) for n in ("cgm", "wm", "dgm", "tcv", "csf"))
FLAGS = [i % 9 == 0 for i in range(45)]  # 5 fully labelled slices among 45
runner = CliRunner()


def generator(seed=3):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("n, batch, world, steps", [(21, 8, 1, None), (45, 8, 2, None), (45, 7, 3, 9)])
def test_no_share_draws_the_plain_shuffle_of_before(n, batch, world, steps):
    g, reference = generator(), generator()
    sampler = training_batches(FLAGS[:n], batch, 0.0, g, world=world, steps=steps)
    assert type(sampler) is ShardedBatches
    for _ in range(2):  # two epochs: the generator moves on alike
        order = torch.randperm(n, generator=reference).tolist()  # the sampler as it was: shuffles, chunked
        while steps is not None and len(order) < steps * batch:
            order += torch.randperm(n, generator=reference).tolist()
        order = order[: n if steps is None else steps * batch]
        expected = [order[i:i + batch] for i in range(0, len(order), batch)]
        assert sampler.global_batches() == [b for b in expected if len(b) >= world]


def test_every_batch_holds_the_share_of_full_slices_and_an_epoch_is_one_pass_over_the_rest():
    full = {i for i, f in enumerate(FLAGS) if f}
    sampler = training_batches(FLAGS, 8, 0.25, generator())
    assert isinstance(sampler, MixedBatches) and sampler.per_batch == 2
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7  # 40 partial slices, 6 per batch
    assert [sum(i in full for i in b) for b in batches] == [2] * 7
    assert [len(b) for b in batches] == [8] * 6 + [6]  # the last batch: 2 full + the 4 partial ones left
    partial = Counter(i for b in batches for i in b if i not in full)
    assert sorted(partial) == sorted(set(range(45)) - full) and set(partial.values()) == {1}
    assert set(Counter(i for b in batches for i in b if i in full).values()) <= {2, 3}  # 14 draws of 5: oversampled
    assert all(b[2] in full and b[6] in full for b in batches[:6])  # spread through the batch, not at one end
    assert training_batches(FLAGS, 8, 0.01, generator()).per_batch == 1  # at least one
    assert training_batches(FLAGS, 8, 0.99, generator()).per_batch == 7  # and one partial slice at least


def test_ranks_shares_add_up_to_one_process_batches():
    for steps in (None, 5):
        single = list(training_batches(FLAGS, 8, 0.25, generator(), steps=steps))
        shards = [list(training_batches(FLAGS, 8, 0.25, generator(), rank=r, world=3, steps=steps)) for r in range(3)]
        assert all(len(s) == len(single) for s in shards)
        assert [a + b + c for a, b, c in zip(*shards)] == single
        full = {i for i, f in enumerate(FLAGS) if f}
        assert all(any(i in full for i in s) for s in shards[0])  # rank 0's share holds a full slice too


def test_mixed_batches_are_seeded_and_resume_from_the_generator_state():
    a, b, c = (training_batches(FLAGS, 8, 0.25, generator(seed)) for seed in (3, 3, 4))
    assert list(a) == list(b) and list(a) != list(c)
    g = generator()
    sampler = training_batches(FLAGS, 8, 0.25, g, steps=4)
    list(sampler)  # epoch 1
    saved = g.get_state()  # as last.pt stores the run's shuffle generator
    second = list(sampler)
    g2 = torch.Generator()
    g2.set_state(saved)
    assert list(training_batches(FLAGS, 8, 0.25, g2, steps=4)) == second
    assert len(second) == 4 and all(len(x) == 8 for x in second)


def test_nothing_to_mix_samples_as_without_a_share_and_warns(caplog):
    caplog.set_level(logging.WARNING, logger="neoseg.train")
    for flags in ([True] * 20, [False] * 20):
        sampler = training_batches(flags, 8, 0.25, generator())
        assert type(sampler) is ShardedBatches
        assert list(sampler) == list(training_batches(flags, 8, 0.0, generator()))
    assert [r.message.split(":")[0] for r in caplog.records] == ["full_share 0.25"] * 2
    assert "all fully labelled" in caplog.records[0].message and "all partially" in caplog.records[1].message


def test_the_share_is_validated():
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            TrainConfig(full_share=bad)
    with pytest.raises(ValueError, match="batch size of at least 2"):
        TrainConfig(full_share=0.5, batch_size=1)
    result = runner.invoke(train_app, ["--show-config", "--full-share", "1"])
    assert result.exit_code == 2 and "full_share" in result.output and len(result.output.strip().splitlines()) == 1


def test_the_dataset_flags_the_slices_of_fully_labelled_stacks():
    from neoseg.train.volumes import SliceStack

    def stack(k):
        return SliceStack(None, np.zeros((k, 2, 2), np.float16), np.zeros((k, 2, 2), np.uint8), (1.0, 1.0, 1.0))

    dataset = SliceDataset([stack(2), stack(3), stack(1)], H, [True, False, True])
    assert dataset.full_slices == [False, False, True, True, True, False]


# ------------------------------------------------------------------------------ head conversion
def _decide(logits: np.ndarray) -> np.ndarray:
    return H.to_labels(logits, axis=1)


def test_head_conversion_keeps_the_decision_of_clear_voxels():
    z = np.full((4, len(H)), -6.0)  # sigmoid channel logits of four voxels: cgm, wm, dgm and csf
    for row, (child, parent) in enumerate(((CGM, TCV), (WM, TCV), (DGM, TCV), (CSF, None))):
        z[row, child] = 5.0
        if parent is not None:
            z[row, parent] = 7.0
    z[2, WM] = 2.0  # dgm's voxel has a less sure second child
    matrix, offset = head_conversion("sigmoid", "softmax", H)
    leaves = z @ matrix.T + offset
    channels = ChannelLogits(H)(torch.as_tensor(leaves, dtype=torch.float32)[:, :, None, None])[:, :, 0, 0].numpy()
    assert _decide(channels).tolist() == _decide(z).tolist() == [2, 3, 7, 1]
    assert np.argmax(leaves[2]) == H.leaves.index(DGM)
    # back: the softmax model's channel logits, linearised, decide as it does
    back, shift = head_conversion("softmax", "sigmoid", H)
    assert _decide(leaves @ back.T + shift).tolist() == [2, 3, 7, 1]
    assert (leaves @ back.T + shift)[:, TCV].tolist() > [0, 0, 0] and (leaves @ back.T + shift)[3, TCV] < 0
    eye, zero = head_conversion("sigmoid", "sigmoid", H)
    assert np.array_equal(eye, np.eye(len(H))) and not zero.any()


@pytest.fixture(scope="module")
def iuc_run(tiny_dataset, tmp_path_factory):
    """A short IUC run on the tiny dataset: the source model of the head-converting starts."""
    out = tmp_path_factory.mktemp("iuc") / "run"
    train(TrainConfig(data=str(tiny_dataset), slice_size=32, widths=[8, 16], epochs=3, batch_size=8,
                      full_fraction=0.25, device="cpu", lr=0.01, prior_bias=True), out, progress=False)
    return out


def _slices(run, config):
    cache = VolumeCache(run / "cache", config.axis, config.slice_size, H, config.spacing)
    stacks = [cache.get(s) for s in find_sessions(config.data)[:3]]
    return torch.from_numpy(np.concatenate([np.asarray(s.image, np.float32) for s in stacks])[:, None])


def _started(source: checkpoint.Loaded, path, loss: str) -> torch.nn.Module:
    config = TrainConfig(**{**json.loads(source.config.to_json()), "loss": loss, "init_from": str(path)})
    net = create_model(config.model, 1, output_channels(config.head, H), **config.model_kwargs())
    load_initial_weights(net, config, H)
    return channel_model(net, config.head, H).eval()


def test_an_iuc_model_starts_a_labelset_model_that_decides_as_it_did(iuc_run, tmp_path):
    source = checkpoint.load(iuc_run / "best.pt")
    x = _slices(iuc_run, source.config)
    with torch.no_grad():
        before = _decide(source.model(x).numpy())
        started = _started(source, iuc_run / "best.pt", "labelset")
        after = _decide(started(x).numpy())
    assert isinstance(started.net.head, torch.nn.Conv2d) and started.net.head.out_channels == len(H.leaves)
    for (name, a), b in zip(source.net.named_parameters(), started.net.parameters()):  # the body is copied
        if not name.startswith("head."):
            assert torch.equal(a, b), name
    # over csf and tcv's children, a conversion giving each leaf its own channel's logit agreed on only 0.84
    tissue = np.isin(before, (1, 2, 3, 7))
    agree = (before == after).mean(), (before[tissue] == after[tissue]).mean()
    assert agree[0] > 0.97 and agree[1] > 0.95, agree
    children = np.isin(before, (2, 3, 7)) & np.isin(after, (2, 3, 7))
    assert children.any() and np.array_equal(before[children], after[children])  # the children, exactly
    # and back: a label-set checkpoint starts an IUC model that decides as it does
    labelset = checkpoint.load(iuc_run / "best.pt")
    labelset.config.loss = "labelset"
    path = tmp_path / "labelset.pt"
    checkpoint.save(path, started.net, labelset.config, H, labelset.spacing)
    with torch.no_grad():
        back = _decide(_started(checkpoint.load(path), path, "iuc")(x).numpy())
    assert (back == after).mean() > 0.97


def test_init_from_a_different_network_is_a_clear_error(iuc_run, tiny_dataset, tmp_path):
    config = TrainConfig(data=str(tiny_dataset), slice_size=32, widths=[8, 16, 32], epochs=1, batch_size=8,
                         device="cpu", loss="labelset", init_from=str(iuc_run / "best.pt"))
    with pytest.raises(ValueError, match=r"networks must match \(only the head may differ\)"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ end to end, and the criterion
def test_early_stopping_names_its_criterion(caplog):
    caplog.set_level(logging.INFO, logger="neoseg.train")
    schedule = Schedule(patience=1, select="child-dice")
    schedule.after_epoch(1, 0.5, 1.0)
    schedule.after_epoch(2, 0.6, 1.0)
    assert schedule.before_epoch(3) is Step.STOP
    assert "no improvement of the validation child Dice (--select child-dice)" in caplog.text


def test_a_labelset_run_with_a_share_starts_from_an_iuc_model(iuc_run, tiny_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="neoseg.train")
    out = tmp_path / "ls"
    result = runner.invoke(train_app, [
        "--out", str(out), "--data", str(tiny_dataset), "--slice-size", "32", "--widths", "8,16", "--epochs", "1",
        "--batch-size", "8", "--quiet", "--device", "cpu", "--full-fraction", "0.25", "--loss", "labelset",
        "--full-share", "0.25", "--init-from", str(iuc_run / "best.pt"), "--select", "child-dice", "--members", "1"])
    assert result.exit_code == 0, result.output
    assert "best epoch 1 by child-dice" in result.output
    assert "full_share 0.25: 2 of every 8 slices" in caplog.text
    stored = TrainConfig.from_json((out / "config.json").read_text())
    assert (stored.full_share, stored.loss, stored.init_from) == (0.25, "labelset", str(iuc_run / "best.pt"))
    assert checkpoint.load(out / "best.pt").config.head == "softmax"
