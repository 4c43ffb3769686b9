"""The scans neoseg-export verifies and gates on (the run's held-out sessions) and calibrates INT8 on
(its training sessions), and what it says where no split is known."""

from __future__ import annotations

import json
import shutil

import pytest

from neoseg.export.scans import calibration_sessions, verification_sessions
from neoseg.train import checkpoint

HELD_OUT = ["sub-T05_ses-1", "sub-T04_ses-1"]  # toy_run's test, then validation session
TRAINING = ["sub-T00_ses-1", "sub-T01_ses-1", "sub-T02_ses-1", "sub-T03_ses-1"]


def keys(sessions) -> list[str]:
    return [s.key for s in sessions]


def test_the_gate_takes_the_runs_held_out_sessions_and_calibration_its_training_ones(toy_run, tiny_dataset):
    ckpt = toy_run / "best.pt"
    config = checkpoint.load(ckpt).config
    verify, source = verification_sessions(ckpt, config, None, 4)
    assert keys(verify) == HELD_OUT and source == "held out: the test and validation sessions of the run's split " \
                                                  "(split.json)"
    calibrate, source = calibration_sessions(ckpt, config, None, 4, verify)
    assert keys(calibrate) == TRAINING and source == "training sessions of the run's split (split.json)"
    # --data naming the run's own data keeps the split; one scan is the test session alone
    verify, source = verification_sessions(ckpt, config, tiny_dataset, 1)
    assert keys(verify) == HELD_OUT[:1] and source.startswith("held out: the test sessions")
    assert keys(calibration_sessions(ckpt, config, tiny_dataset, 2, verify)[0]) == TRAINING[:2]


def test_without_a_known_split_the_first_scans_are_used_and_named_as_such(toy_run, tiny_dataset, tmp_path):
    config = checkpoint.load(toy_run / "best.pt").config
    (tmp_path / "moved").mkdir()
    moved = shutil.copy(toy_run / "best.pt", tmp_path / "moved" / "best.pt")  # without its run folder
    verify, source = verification_sessions(moved, config, None, 2)
    assert keys(verify) == TRAINING[:2]
    assert source == ("the first scans of the checkpoint's training data; no split known (no split.json beside "
                      "best.pt): they may include training scans")
    calibrate, source = calibration_sessions(moved, config, None, 4, verify)
    assert keys(calibrate) == TRAINING[2:] + HELD_OUT[::-1] and "no split known" in source
    other = shutil.copytree(tiny_dataset, tmp_path / "other")  # not the run's data: its split does not apply
    verify, source = verification_sessions(toy_run / "best.pt", config, other, 2)
    assert keys(verify) == TRAINING[:2] and f"no split known ({other} is not the run's data)" in source
    # a copy of a scan gated on is no calibration scan either (same session key)
    calibrate, _ = calibration_sessions(toy_run / "best.pt", config, other, 4, verify)
    assert keys(calibrate) == TRAINING[2:] + HELD_OUT[::-1]


def test_a_split_that_is_not_the_checkpoints_is_refused(toy_run, tmp_path):
    config = checkpoint.load(toy_run / "best.pt").config
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(toy_run / "best.pt", run / "best.pt")
    split = json.loads((toy_run / "split.json").read_text())
    (run / "split.json").write_text(json.dumps({**split, "test": ["X99"]}))
    with pytest.raises(ValueError, match=r"names test subjects that the checkpoint's data lacks \(X99\)"):
        verification_sessions(run / "best.pt", config, None, 2)
    (run / "split.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a neoseg run's split"):
        verification_sessions(run / "best.pt", config, None, 2)
