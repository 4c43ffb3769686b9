"""metrics.csv keeps one row per finished epoch whenever a run stops and is resumed."""

from __future__ import annotations

import csv

import pytest

from neoseg.train import checkpoint, loop
from neoseg.train.config import TrainConfig


def config(data, epochs: int) -> TrainConfig:
    return TrainConfig(data=str(data), slice_size=32, widths=[8, 16], epochs=epochs, batch_size=8, full_fraction=0.25,
                       device="cpu")


def epochs_logged(out) -> list[int]:
    with (out / "metrics.csv").open(newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


class Stop(Exception):
    """Stands in for a kill at a chosen point of the epoch loop."""


@pytest.mark.slow
@pytest.mark.parametrize("written", [False, True])
def test_a_stop_around_last_pt_loses_no_row_and_repeats_none(tiny_dataset, tmp_path, monkeypatch, written):
    """Killed while epoch 2's last.pt is written (``written`` False) or just after: the row of
    epoch 2 is already in metrics.csv, and the resumed run ends with one row per epoch."""
    out = tmp_path / "run"
    save = checkpoint.save

    def killed_at_last_pt_of_epoch_2(path, *args, **state):
        if path.name == "last.pt" and state["epoch"] == 2:
            if written:
                save(path, *args, **state)
            raise Stop
        save(path, *args, **state)

    monkeypatch.setattr(checkpoint, "save", killed_at_last_pt_of_epoch_2)
    with pytest.raises(Stop):
        loop.train(config(tiny_dataset, 3), out, progress=False)
    monkeypatch.undo()
    assert epochs_logged(out) == [1, 2]
    assert checkpoint.load(out / "last.pt").state["epoch"] == (2 if written else 1)
    loop.train(config(tiny_dataset, 3), out, resume=True, progress=False)
    assert epochs_logged(out) == [1, 2, 3]  # a rerun epoch replaces its row
