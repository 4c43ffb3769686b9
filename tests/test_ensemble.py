"""Ensembles: several checkpoints as one model (the mean of their probabilities), evaluated and
exported as one; --split-seed keeps the members' held-out scans the same."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neoseg.cli.evaluate import app as eval_app
from neoseg.cli.export import app as export_app
from neoseg.data.dhcp import find_sessions
from neoseg.data.splits import Split
from neoseg.export.onnx_export import torch_logits, verification_slices
from neoseg.runtime.backends import OrtBackend
from neoseg.runtime.model import info_from_checkpoint
from neoseg.train import checkpoint
from neoseg.train.config import TrainConfig
from neoseg.train.ensemble import Ensemble, load_models
from neoseg.train.recipes import dataset_split
from neoseg.train.rundir import write_split
from neoseg.train.volumes import load_canonical

runner = CliRunner()


def _run(folder, tiny_dataset, seed: int, slice_size: int = 32, held_out: int = 4):
    """A run folder as neoseg-train leaves it: best.pt of a toy U-Net (trained with ``seed``) and
    split.json holding out the sessions ``held_out`` (validation) and the next (test)."""
    from neoseg.benchmarks.toy import train_toy

    folder.mkdir()
    sessions = find_sessions(tiny_dataset)
    train = [s for i, s in enumerate(sessions) if i not in (held_out, held_out + 1)]
    toy = train_toy(folder / "toy.pt", train[:4], slice_size, widths=(8, 16), steps=25, seed=seed)
    payload = torch.load(toy, weights_only=True)
    payload["config"] = dataclasses.replace(checkpoint.load(toy).config, data=str(tiny_dataset)).to_json()
    torch.save(payload, folder / "best.pt")
    toy.unlink()
    write_split(folder / "split.json", Split(tuple(train), (sessions[held_out],), (sessions[held_out + 1],),
                                             frozenset(s.subject for s in train)), train)
    return folder / "best.pt"


@pytest.fixture(scope="module")
def members(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return [_run(root / f"seed{seed}", tiny_dataset, seed) for seed in (0, 1)]


class _Constant(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_the_ensemble_averages_probabilities_not_logits():
    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(1, 3, 1), torch.nn.Conv2d(1, 3, 1)
    x = torch.randn(2, 1, 4, 4)
    got = Ensemble([a, b])(x)
    want = torch.logit((torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, (a(x) + b(x)) / 2, atol=1e-3)  # not the mean logit
    torch.testing.assert_close(Ensemble([a])(x), a(x), atol=1e-4, rtol=1e-4)  # one member: itself
    # saturated members (sigmoid 0 or 1 in float32) still give finite, exact logits
    big = torch.tensor([[[[200.0, -200.0, 40.0]]]])
    plus, minus = _Constant(big), _Constant(-big)
    torch.testing.assert_close(Ensemble([plus, plus])(x), big)
    torch.testing.assert_close(Ensemble([plus, minus])(x), torch.zeros_like(big))


def test_members_load_as_one_model_with_its_own_identity(members):
    single = [checkpoint.load(p) for p in members]
    loaded = load_models(members)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        p = (torch.sigmoid(single[0].model(x)) + torch.sigmoid(single[1].model(x))) / 2
        torch.testing.assert_close(torch.sigmoid(loaded.model(x)), p, atol=1e-5, rtol=1e-4)
    info = info_from_checkpoint(loaded)
    assert info.architecture == "unet ensemble of 2"
    assert info.config_digest not in {m.config.digest() for m in single}  # not mistaken for one member
    alone = load_models(members[:1])  # one checkpoint: itself, as checkpoint.load reads it
    assert not isinstance(alone.model, Ensemble) and alone.config.digest() == single[0].config.digest()
    with torch.no_grad():
        torch.testing.assert_close(alone.model(x), single[0].model(x))


def test_members_that_segment_differently_are_refused(members, tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="named twice"):
        load_models([members[0], members[0]])
    other = _run(tmp_path / "s48", tiny_dataset, 0, slice_size=48)
    with pytest.raises(ValueError, match="differ in slice axis and size.*--slice-size"):
        load_models([members[0], other])


def test_neoseg_eval_scores_the_ensemble_and_refuses_mixed_held_out_scans(members, tiny_dataset, tmp_path):
    result = runner.invoke(eval_app, [*map(str, members), "--device", "cpu", "-q", "-o", str(tmp_path / "e.csv")])
    assert result.exit_code == 0, result.output
    assert "of the label map (`_dseg`" in result.output
    assert len((tmp_path / "e.csv").read_text().splitlines()) > 1
    other = _run(tmp_path / "other", tiny_dataset, 2, held_out=2)  # held out other sessions
    result = runner.invoke(eval_app, [str(members[0]), str(other), "--device", "cpu", "-q"])
    assert result.exit_code == 2 and "held out different scans" in result.output and "--split-seed" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "m.onnx").write_bytes(b"")  # an exported model is not a member
    result = runner.invoke(eval_app, [str(members[0]), str(tmp_path / "m.onnx"), "--device", "cpu", "-q"])
    assert result.exit_code == 2 and "an ensemble is made of best.pt checkpoints" in result.output
    # with --data the user names the scans: nothing to check
    result = runner.invoke(eval_app, [str(members[0]), str(other), "--device", "cpu", "-q", "--data",
                                      str(tiny_dataset)])
    assert result.exit_code == 0, result.output


def test_neoseg_export_writes_one_verified_model_of_the_ensemble(members, tiny_dataset, tmp_path):
    out = tmp_path / "ensemble.onnx"
    result = runner.invoke(export_app, [*map(str, members), "-o", str(out), "--no-int8", "--verify-scans", "1"])
    assert result.exit_code == 0, result.output
    assert "unet ensemble of 2" in result.output and "held out" in result.output
    ort = OrtBackend(out)
    assert ort.info.architecture == "unet ensemble of 2"
    image = load_canonical(find_sessions(tiny_dataset)[5].t2, np.float32)[0]
    x = verification_slices([image], ort.info)
    want = torch_logits(load_models(members).model, x)
    np.testing.assert_allclose(ort.run(x), want, atol=1e-3)


def test_split_seed_keeps_the_split_while_the_seed_changes(tiny_dataset):
    base = TrainConfig(data=str(tiny_dataset), full_fraction=0.5)
    names = lambda split: [tuple(s.key for s in part) for part in (split.train, split.val, split.test)]  # noqa: E731
    fixed = [names(dataset_split(dataclasses.replace(base, seed=s, split_seed=0))) for s in (0, 1, 2)]
    assert fixed[0] == fixed[1] == fixed[2] == names(dataset_split(base))
    moved = {json.dumps(names(dataset_split(dataclasses.replace(base, seed=s)))) for s in range(6)}
    assert len(moved) > 1  # without it, --seed also moves the split
