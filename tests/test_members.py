"""Several models trained on one split and used as one (``neoseg-train --members``, train/members.py),
and ``--members auto``: three with one fully labelled subject, whose atlas recipe is then ``pairs``."""

import csv
import json
import logging
import shutil

import pytest
import torch
from typer.testing import CliRunner

from neoseg.train.config import TrainConfig
from neoseg.train.members import member_config, run_checkpoints
from neoseg.train.recipes import dataset_split, resolve_recipe


def config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=1, batch_size=8, full_fraction=0.25,
                device="cpu", atlas="auto", members="auto")
    return TrainConfig(**{**base, **kw})


def test_the_cpu_profile_defaults_to_auto_and_the_paper_profile_to_one():
    assert TrainConfig.profile("cpu").members == "auto"
    assert TrainConfig.profile("paper").members == 1  # the paper's protocol: one model
    assert TrainConfig().members == 1


@pytest.mark.parametrize("kw, members, atlas", [
    ({}, 3, "pairs"),  # IUC, 1 fully labelled and 3 partially labelled training subjects: three pairs models
    ({"members": 1}, 1, "propagate"),  # one model: propagation, as before
    ({"atlas": "propagate"}, 3, "propagate"),  # an explicit recipe is kept
    ({"full_fraction": 0.5}, 1, "pairs"),  # two fully labelled subjects: one model did
    ({"loss": "bce"}, 1, "none"),  # the supervised baseline
    ({"full_fraction": 1.0}, 1, "none"),  # nothing partial
    ({"members": 2, "full_fraction": 0.5}, 2, "pairs"),
])
def test_auto_resolves_by_the_fully_labelled_subjects(tiny_dataset, kw, members, atlas):
    cfg = config(tiny_dataset, **kw)
    resolved = resolve_recipe(cfg, dataset_split(cfg))
    assert (resolved.members, resolved.atlas) == (members, atlas)


@pytest.mark.parametrize("bad", [0, 17, "3", True, 1.5])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(ValueError, match="--members"):
        TrainConfig(members=bad)


def test_a_member_differs_from_the_first_in_its_seed_alone(tmp_path):
    first = TrainConfig(seed=4, members=3, atlas="pairs")
    second = member_config(first, tmp_path, 2)
    assert (second.seed, second.split_seed, second.members, second.cache) == (6, 4, 1, str(tmp_path / "cache"))
    assert second.split_seed_used == first.split_seed_used
    same = {k: v for k, v in vars(second).items() if k not in ("seed", "split_seed", "members", "cache")}
    assert same == {k: v for k, v in vars(first).items() if k in same}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_neoseg_train_members_trains_each_on_one_split_and_scores_them_as_one(tiny_dataset, tmp_path, caplog):
    from neoseg.cli.train import app
    from neoseg.train.evaluate import checkpoint_segmenter, evaluate_sessions

    out = tmp_path / "run"
    args = ["--data", str(tiny_dataset), "--out", str(out), "--members", "2", "--atlas", "none", "--epochs", "1",
            "--slice-size", "32", "--widths", "8,16", "--batch-size", "8", "--full-fraction", "0.25",
            "--device", "cpu", "--augment", "none", "--seed", "5", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    second = out / "member-1"
    configs = [json.loads((d / "config.json").read_text()) for d in (out, second)]
    assert [(c["seed"], c["split_seed"], c["members"]) for c in configs] == [(5, None, 2), (6, 5, 1)]
    splits = [json.loads((d / "split.json").read_text()) for d in (out, second)]
    assert (splits[0]["val"], splits[0]["test"]) == (splits[1]["val"], splits[1]["test"])
    weights = [torch.load(d / "best.pt", weights_only=False)["model_state"] for d in (out, second)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # other seeds, other models
    assert "2 members as one model" in result.output and f"neoseg-export {out} -o model.onnx" in result.output
    assert run_checkpoints([out]) == [out / "best.pt", second / "best.pt"]  # a run's folder names its members
    assert run_checkpoints([out / "best.pt"]) == [out / "best.pt"]  # a file is itself
    # neoseg-infer on the first member's checkpoint segments with it alone, and says so
    from neoseg.cli.infer import app as infer

    caplog.set_level(logging.WARNING, logger="neoseg.train")
    scan = sorted(tiny_dataset.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))[0]
    result = CliRunner().invoke(infer, [str(scan), "-m", str(out / "best.pt"), "-o", str(tmp_path / "seg")])
    assert result.exit_code == 0, result.output
    assert "first of the 2 members" in caplog.text and f"neoseg-export {out}` makes one model" in caplog.text
    # the ensemble's evaluation is the two checkpoints' mean probability on the test scans
    segmenter, cfg = checkpoint_segmenter([out / "best.pt", second / "best.pt"], "cpu", own_split=True)
    expected = evaluate_sessions(segmenter, list(dataset_split(cfg).test))
    written = rows(out / "ensemble-evaluation.csv")
    assert written and [r["dice"] for r in written] == [str(r["dice"]) for r in expected]

    # a member lost is trained again on --resume, as it was; finished members are not opened again
    first_files = {f: (out / f).stat().st_mtime_ns for f in ("best.pt", "metrics.csv", "evaluation.csv")}
    before = torch.load(second / "best.pt", weights_only=False)["model_state"]
    shutil.rmtree(second)
    with pytest.raises(ValueError, match="has not finished training.*--resume"):
        run_checkpoints([out])
    result = CliRunner().invoke(app, ["--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    after = torch.load(second / "best.pt", weights_only=False)["model_state"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {f: (out / f).stat().st_mtime_ns for f in first_files} == first_files
    assert f"{out} (finished before)" in result.output
    # a member stopped before its evaluation (best.pt written, evaluation.csv not) counts as unfinished
    (second / "evaluation.csv").unlink()
    with pytest.raises(ValueError, match=f"{second} has not finished training"):
        run_checkpoints([out])
    result = CliRunner().invoke(app, ["--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (second / "evaluation.csv").is_file() and run_checkpoints([out]) == [out / "best.pt", second / "best.pt"]


def test_a_folder_that_is_not_a_run_is_refused_and_a_lone_first_member_is_named_as_such(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="neoseg.train")
    with pytest.raises(ValueError, match="not a neoseg-train run"):
        run_checkpoints([tmp_path])
    (tmp_path / "config.json").write_text(TrainConfig(members=3).to_json())
    (tmp_path / "best.pt").write_bytes(b"")
    assert run_checkpoints([tmp_path / "best.pt"]) == [tmp_path / "best.pt"]
    assert "the first of the 3 members" in caplog.text
