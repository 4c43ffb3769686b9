"""Atlas planning (train/atlas_plan.py): which atlases each target gets, and the write-once rule of
the atlas cache; no registration is run here."""

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.data.dhcp import Session
from neoseg.data.splits import Split
from neoseg.train.atlas_pairs import hard_labels
from neoseg.train.atlas_plan import nearest_atlases, plan_pairs
from neoseg.train.config import TrainConfig


def session(folder: Path, subject: str, age: float) -> Session:
    anat = folder / subject
    anat.mkdir(parents=True, exist_ok=True)
    t2, labels = anat / "t2.nii.gz", anat / "dseg.nii.gz"
    t2.write_bytes(b"t2")
    labels.write_bytes(b"labels")
    return Session(subject, "1", t2, labels, age)


def test_each_target_gets_the_atlases_nearest_in_scan_age(tmp_path):
    atlases = [session(tmp_path, name, age) for name, age in
               [("A30", 30.0), ("A36", 36.0), ("A40", 40.0), ("Anan", math.nan), ("B40", 40.0), ("A44", 44.0)]]
    keys = lambda chosen: [a.subject for a in chosen]  # noqa: E731
    assert keys(nearest_atlases(session(tmp_path, "T", 37.0), atlases, 3)) == ["A36", "A40", "B40"]
    assert keys(nearest_atlases(session(tmp_path, "T", 42.0), atlases, 2)) == ["A40", "A44"]  # 2 weeks each: by key
    assert keys(nearest_atlases(session(tmp_path, "T", 29.0), atlases, 1)) == ["A30"]
    assert keys(nearest_atlases(session(tmp_path, "T", 44.0), atlases, 6))[-1] == "Anan"  # unknown age: last
    assert keys(nearest_atlases(session(tmp_path, "T", math.nan), atlases, 2)) == ["A30", "A36"]  # all unknown: keys
    assert len(nearest_atlases(session(tmp_path, "T", 37.0), atlases, 10)) == 6  # K above the atlases: all


def test_pairs_are_k_per_target_among_the_sessions_the_run_trains_on(tmp_path):
    atlases = [session(tmp_path, f"F{i}", 30.0 + 3 * i) for i in range(5)]  # 30, 33, ..., 42 weeks
    targets = [session(tmp_path, f"P{i}", 31.0 + 4 * i) for i in range(4)]  # 31, 35, 39, 43
    split = Split(tuple(atlases + targets), (), (), frozenset(a.subject for a in atlases))
    pairs = plan_pairs(split, atlases + targets, 2, tmp_path / "cache", ["key"])
    assert len(pairs) == 2 * len(targets)
    assert [(p.atlas.subject, p.target.subject) for p in pairs[:4]] == [("F0", "P0"), ("F1", "P0"),
                                                                         ("F2", "P1"), ("F1", "P1")]
    assert all(p.coarsen and p.path.parent == tmp_path / "cache" / "registrations" for p in pairs)
    assert len({p.path for p in pairs}) == len(pairs)
    # no more atlases than K: every atlas, every target (what the 2 % runs always had)
    few = plan_pairs(split, atlases[:2] + targets, 3, tmp_path / "cache", ["key"])
    assert {(p.atlas.key, p.target.key) for p in few} == {(a.key, t.key) for a in atlases[:2] for t in targets}
    # the run's own sessions only (--train-subjects): a session it does not train on is neither
    trained = [atlases[0], atlases[4], targets[0], targets[3]]
    chosen = plan_pairs(split, trained, 1, tmp_path / "cache", ["key"])
    assert [(p.atlas.subject, p.target.subject) for p in chosen] == [("F0", "P0"), ("F4", "P3")]
    with pytest.raises(ValueError, match="at least one fully labelled and one partially labelled"):
        plan_pairs(split, targets, 3, tmp_path / "cache", ["key"])


def test_atlas_per_target_must_be_at_least_one(tmp_path):
    from neoseg.cli.train import app

    assert TrainConfig(atlas_per_target=1).atlas_per_target == 1
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="--atlas-per-target .* at least 1"):
            TrainConfig(atlas="propagate", atlas_per_target=bad)
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "run"), "--atlas", "pairs", "--atlas-per-target", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "neoseg-train: error: --atlas-per-target" in result.output
    result = CliRunner().invoke(app, ["--atlas-per-target", "5", "--show-config"])
    assert result.exit_code == 0 and '"atlas_per_target": 5' in result.output



def test_hard_labels_outside_the_warped_field_of_view_are_outside():
    values = [1, 2, 3]  # a label tree whose first leaf is a tissue
    soft = np.zeros((3, 4), np.float32)
    soft[:, 0] = [0.1, 0.7, 0.2]  # inside: its most likely value
    soft[:, 1] = [0.0, 0.0, 0.0]  # beyond the warped atlas: outside, not the first leaf
    soft[:, 2] = [0.2, 0.1, 0.0]  # mostly beyond it (its edge): outside
    soft[:, 3] = [0.5, 0.1, 0.0]  # mostly inside
    assert hard_labels(soft, values, np.uint8, outside=0).tolist() == [2, 0, 0, 1]


def test_scans_finer_than_the_registration_resolution_skip_the_finest_levels(tmp_path):
    import nibabel as nib

    from neoseg.core.registration import skipped_levels

    assert [skipped_levels((s,) * 3, 1.0) for s in (2.0, 1.0, 0.8, 0.5, 0.25)] == [0, 0, 0, 1, 2]
    assert skipped_levels((0.5, 0.5, 2.0), 1.0) == 1  # by the finest axis
    assert skipped_levels((0.5,) * 3, 0.5) == skipped_levels((0.5,) * 3, 0.4) == 0  # at or below: full resolution

    def scan(subject: str, age: float, mm: float) -> Session:
        s = session(tmp_path, subject, age)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([mm, mm, mm, 1.0])), s.t2)
        return s

    atlas, coarse, fine = scan("F", 40.0, 0.5), scan("P2", 40.0, 2.0), scan("P05", 40.0, 0.5)
    split = Split((atlas, coarse, fine), (), (), frozenset({"F"}))
    plain = {p.target.subject: p for p in plan_pairs(split, [atlas, coarse, fine], 1, tmp_path / "c", ["key"])}
    at_1mm = {p.target.subject: p for p in plan_pairs(split, [atlas, coarse, fine], 1, tmp_path / "c", ["key"], 1.0)}
    assert (at_1mm["P2"].skipped, at_1mm["P05"].skipped) == (0, 1) and plain["P05"].skipped == 0
    assert at_1mm["P2"].path == plain["P2"].path  # nothing skipped: the cache name it always had
    assert at_1mm["P05"].path != plain["P05"].path  # another registration: another cached result


def test_skipped_levels_are_appended_and_the_coarsest_kept_large_enough():
    from neoseg.core.registration import pyramid

    assert pyramid("100x50x20", 0, 8) == "100x50x20"  # nothing skipped: as configured, whatever the size
    assert pyramid("100x50x20", 1, 256) == "100x50x20x0"  # 0.5 mm at 1 mm: 4, 2, 1 mm computed, 0.5 mm not
    assert pyramid("100x50x20", 2, 256) == "100x50x20x0x0"
    assert pyramid("100x50x20", 1, 24) == "50x20x0"  # 24 voxels: the coarsest (3 a side) dropped
    assert pyramid("100x50x20", 2, 24) == "20x0x0"  # at most as many dropped as appended
