import csv
import json

import numpy as np
import pytest
import torch

from neoseg.train import checkpoint
from neoseg.train.config import TrainConfig
from neoseg.train.loop import train
from neoseg.train.rundir import RunExistsError


def tiny_config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=2, batch_size=8, full_fraction=0.25,
                device="cpu")
    return TrainConfig(**{**base, **kw})


def test_train_writes_the_run_and_evaluates(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(tiny_dataset), out, progress=False)
    for name in ("best.pt", "last.pt", "config.json", "metrics.csv", "split.json", "evaluation.csv", "evaluation.md"):
        assert (out / name).is_file(), name
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    split = json.loads((out / "split.json").read_text())
    assert len(split["fully_labelled"]) == 1 and set(split["fully_labelled"]) <= set(split["train"])
    assert {r["structure"] for r in result.rows} == set(checkpoint.load(out / "best.pt").hierarchy.names)
    assert len(result.rows) == 2 * 11 * len(split["test"])  # the label map and the masks
    assert "dice" in result.table.lower() or "Dice" in result.table
    loaded = checkpoint.load(out / "best.pt")
    assert loaded.config == TrainConfig.from_json((out / "config.json").read_text())
    assert loaded.spacing == (2.0, 2.0, 2.0)


def test_training_is_deterministic_by_seed(tiny_dataset, tmp_path):
    a = train(tiny_config(tiny_dataset, epochs=1), tmp_path / "a", progress=False)
    b = train(tiny_config(tiny_dataset, epochs=1), tmp_path / "b", progress=False)
    wa = checkpoint.load(a.out / "best.pt").model.state_dict()
    wb = checkpoint.load(b.out / "best.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_run_is_never_overwritten_and_resume_continues(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_dataset, epochs=1), out, progress=False)
    before = (out / "best.pt").read_bytes()
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_config(tiny_dataset, epochs=1), out, progress=False)
    assert (out / "best.pt").read_bytes() == before
    # resume: the stored config rules; raise its epoch budget as a user would by editing nothing
    cfg = json.loads((out / "config.json").read_text())
    cfg["epochs"] = 2
    (out / "config.json").write_text(json.dumps(cfg))
    train(tiny_config(tiny_dataset), out, resume=True, progress=False)
    with (out / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    # an uninterrupted 2-epoch run ends with the same weights as 1 epoch + resume
    straight = train(tiny_config(tiny_dataset, epochs=2), tmp_path / "straight", progress=False)
    wa = checkpoint.load(out / "last.pt").model.state_dict()
    wb = checkpoint.load(straight.out / "last.pt").model.state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float()) for k in wa)


def test_resume_refuses_data_that_now_splits_otherwise(tmp_path):
    """Subjects added to the data folder after a run began would change its split mid-run."""
    from conftest import write_dataset

    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(tiny_config(data, epochs=1), out, progress=False)
    for subject in sorted(write_dataset(tmp_path / "more", n_subjects=9).glob("sub-T0[678]")):
        subject.rename(data / subject.name)
    with pytest.raises(ValueError, match="split its subjects otherwise .train differs"):
        train(tiny_config(data, epochs=2), out, resume=True, progress=False)
    with (out / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]


def test_foreign_folder_is_refused(tiny_dataset, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="not empty"):
        train(tiny_config(tiny_dataset), tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_checkpoint_refuses_arbitrary_pickles(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "x": Evil()}, protocol=2))  # torch.save's protocol
    with pytest.raises(ValueError, match="not a loadable neoseg checkpoint"):
        checkpoint.load(path)


def test_bad_slice_size_is_a_clear_error(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="divisible by 16"):
        train(tiny_config(tiny_dataset, slice_size=40, widths=[8, 16, 32, 64, 128]), tmp_path / "r", progress=False)


def test_bce_with_partial_labels_is_the_supervised_baseline(tiny_dataset, tmp_path):
    """--loss bce --full-fraction F trains on the fully labelled subjects only, with the very split
    and draw of an IUC run of the same fraction, draw and seed."""
    sup = train(tiny_config(tiny_dataset, loss="bce", epochs=1, draw=1), tmp_path / "sup", progress=False)
    iuc = train(tiny_config(tiny_dataset, loss="iuc", epochs=1, draw=1), tmp_path / "iuc", progress=False)
    s_split, i_split = (json.loads((r.out / "split.json").read_text()) for r in (sup, iuc))
    assert s_split["fully_labelled"] == i_split["fully_labelled"] and s_split["test"] == i_split["test"]
    assert {k.split("_")[0] for k in s_split["trained_on"]} == {f"sub-{s}" for s in s_split["fully_labelled"]}
    assert len(i_split["trained_on"]) == len(i_split["train"]) > len(s_split["trained_on"])
    stored = TrainConfig.from_json((sup.out / "config.json").read_text())
    assert stored.train_subjects == s_split["fully_labelled"]
    assert [r["structure"] for r in sup.rows] == [r["structure"] for r in iuc.rows]  # same test evaluation


def test_early_stopping_keeps_the_best_epoch_and_resume_gives_the_same_run(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, epochs=12, patience=1, lr=0.02)
    straight = train(config, tmp_path / "straight", progress=False)
    with (straight.out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["val_loss"]) for r in rows]
    best = losses.index(min(losses)) + 1
    assert straight.stopped_by == "early stopping" and len(rows) == best + config.patience < config.epochs
    assert straight.best_epoch == best == checkpoint.load(straight.out / "best.pt").state["epoch"]
    # the same run interrupted after 2 epochs and resumed ends identically
    out = tmp_path / "interrupted"
    train(tiny_config(tiny_dataset, epochs=2, patience=1, lr=0.02), out, progress=False)
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**stored, "epochs": 12}))
    resumed = train(config, out, resume=True, progress=False)
    assert (resumed.best_epoch, resumed.stopped_by) == (straight.best_epoch, straight.stopped_by)
    wa = checkpoint.load(out / "best.pt").model.state_dict()
    wb = checkpoint.load(straight.out / "best.pt").model.state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float()) for k in wa)
    assert [r["dice"] for r in resumed.rows] == [r["dice"] for r in straight.rows]


def test_weight_ema_validates_and_saves_the_average_and_resumes_it(tiny_dataset, tmp_path):
    from neoseg.train.selftrain import EmaTeacher

    net = torch.nn.Linear(2, 1)
    average = EmaTeacher(net, 0.99, ramp=True)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.fill_(1.0)
    average.update(net)  # the first update keeps (1 + 0) / (10 + 0) = 0.1 of the average, not 0.99
    assert torch.allclose(average.model.weight, 0.1 * start + 0.9) and average.updates == 1
    config = tiny_config(tiny_dataset, epochs=2, weight_ema=0.9)
    straight = train(config, tmp_path / "straight", progress=False)
    best, last = checkpoint.load(straight.out / "best.pt"), checkpoint.load(straight.out / "last.pt")
    wb, wl = best.model.state_dict(), last.model.state_dict()
    assert any(not torch.equal(wb[k], wl[k]) for k in wb if wb[k].is_floating_point())  # best.pt: the average
    # interrupted after 1 epoch (its best.pt: the average then) and resumed: the same average as straight through
    out = tmp_path / "resumed"
    train(tiny_config(tiny_dataset, epochs=1, weight_ema=0.9), out, progress=False)
    first, after_one = checkpoint.load(out / "best.pt").model.state_dict(), checkpoint.load(out / "last.pt").state
    assert all(torch.equal(first[k], after_one["average_state"][k]) for k in first)
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**stored, "epochs": 2}))
    train(config, out, resume=True, progress=False)
    ra = checkpoint.load(out / "last.pt").state["average_state"]
    sa = last.state["average_state"]
    assert all(torch.allclose(ra[k].float(), sa[k].float()) for k in sa)
    with pytest.raises(ValueError, match="--weight-ema is the average's decay"):
        TrainConfig(weight_ema=1.0)


def test_a_resumed_run_counts_the_time_it_trained_before_against_its_budget(tiny_dataset, tmp_path):
    """--max-minutes is the run's budget, not each invocation's: an interrupted run does not train longer."""
    out = tmp_path / "run"
    train(tiny_config(tiny_dataset, epochs=1, max_minutes=1.0), out, progress=False)
    stored = json.loads((out / "config.json").read_text())
    stored["epochs"] = 3  # as if interrupted after epoch 1 of 3
    (out / "config.json").write_text(json.dumps(stored))
    text = (out / "metrics.csv").read_text().splitlines()
    first = text[1].split(",")
    first[-1] = "61.0"  # epoch 1 took 61 s: the 1 minute is spent
    (out / "metrics.csv").write_text("\r\n".join([text[0], ",".join(first)]) + "\r\n")
    result = train(tiny_config(tiny_dataset, epochs=3, max_minutes=1.0), out, resume=True, progress=False)
    assert result.stopped_by == "time budget"
    with (out / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]  # no epoch trained after the budget
