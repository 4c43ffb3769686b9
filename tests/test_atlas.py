"""The atlas recipes (train/atlas.py): propagation inside the known parent, atlas-to-scan pairs,
the registration cache, and a short training run with --atlas."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.core import registration
from neoseg.core.atlas_fusion import leaf_values, propagate
from neoseg.core.hierarchy import builtin
from neoseg.train.atlas import ATLAS_VERSION, PARAMS, with_atlas
from neoseg.train.atlas_pairs import match_intensities
from neoseg.train.atlas_plan import plan_pairs
from neoseg.train.config import TrainConfig
from neoseg.train.recipes import dataset_split, training_sessions

H = builtin()
TCV, CGM, WM, DGM, CSF = 10, 2, 3, 7, 1


def config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=1, batch_size=8, full_fraction=0.25,
                device="cpu", atlas="both")
    return TrainConfig(**{**base, **kw})


def run_atlas(cfg, out, workers=1):
    split = dataset_split(cfg)
    sessions, partial = training_sessions(cfg, split)
    out.mkdir(exist_ok=True)
    new, flags = with_atlas(cfg, split, sessions, partial, out / "cache", out, H, workers=workers)
    return split, sessions, new, flags, json.loads((out / "atlas.json").read_text())


@pytest.fixture(scope="module")
def atlas_run(tiny_dataset, tmp_path_factory):
    """--atlas both on the tiny phantoms: 1 fully labelled training subject, 3 partially labelled."""
    return run_atlas(config(tiny_dataset), tmp_path_factory.mktemp("atlas") / "run")


def test_propagation_writes_a_child_only_inside_the_parent_and_only_where_confident():
    partial = np.array([TCV, TCV, TCV, TCV, CSF, CGM], np.uint8)
    leaves = leaf_values(H)
    fused = np.zeros((len(leaves), 6), np.float32)
    at = {v: i for i, v in enumerate(leaves)}
    fused[at[WM], 0] = 0.9  # sure WM
    fused[at[CGM], 0] = 0.1
    fused[at[DGM], 1], fused[at[WM], 1] = 0.6, 0.4  # DGM, but only 0.6 of the parent: unsure at 0.7
    fused[at[CSF], 2], fused[at[CGM], 2] = 0.9, 0.05  # mostly CSF: of the parent's share, all CGM
    # voxel 3: no atlas child reaches it: stays unknown
    fused[at[WM], 4] = 1.0  # a child where the scan says CSF: never written
    fused[at[WM], 5] = 1.0  # a known leaf never changes
    labels, undecided = propagate(partial, fused, leaves, H, confidence=0.7)
    assert labels.tolist() == [WM, TCV, CGM, TCV, CSF, CGM]
    assert undecided.tolist() == [False, True, False, True, False, False]
    assert propagate(partial, fused, leaves, H, confidence=0.55)[0].tolist() == [WM, DGM, CGM, TCV, CSF, CGM]


def test_propagated_maps_keep_children_inside_the_known_parent(atlas_run):
    split, sessions, new, flags, report = atlas_run
    targets = [s for s in sessions if not split.is_full(s)]
    replaced = {s.key: s for s in new}
    assert len(targets) == 3
    for target in targets:
        truth = np.asarray(nib.load(target.labels).dataobj)
        known = H.coarsen(truth)  # what the run knows of the simulated partial session
        got = np.asarray(nib.load(replaced[target.key].labels).dataobj)
        assert replaced[target.key].labels != target.labels
        inside = known == TCV
        assert np.array_equal(got[~inside], known[~inside])  # nothing outside the parent changes
        assert set(np.unique(got[inside]).tolist()) <= {TCV, CGM, WM, DGM}
        assert (got[inside] != TCV).any()  # some children were filled in
    assert 0 <= report["unknown_share"] < 1
    assert set(report["dice"]["warped"]) == {"cgm", "wm", "dgm"}
    assert report["dice"]["propagated"]["wm"] > 0.5  # the phantoms register well


def test_pairs_lie_on_the_target_grid_with_full_labels(atlas_run):
    split, sessions, new, flags, report = atlas_run
    pairs = new[len(sessions):]
    targets = {s.subject: s for s in sessions if not split.is_full(s)}
    assert len(pairs) == len(targets) == report["pairs"] and flags[len(sessions):] == [False] * len(pairs)
    assert flags[:len(sessions)] == [False] * len(sessions)  # propagated maps are read as the partial maps they are
    for pair in pairs:
        target = targets[pair.subject.split("to")[1]]
        t2, labels, ref = (nib.load(p) for p in (pair.t2, pair.labels, target.t2))
        assert t2.shape == labels.shape == ref.shape and np.allclose(t2.affine, ref.affine)
        values = set(np.unique(np.asarray(labels.dataobj)).tolist())
        assert TCV not in values and {CGM, WM, DGM} <= values  # fully labelled
        ref_data = np.asarray(ref.dataobj)
        image = np.asarray(t2.dataobj)
        assert abs(np.median(image) - np.median(ref_data)) < 0.2 * np.ptp(ref_data)  # the target's intensities


def test_each_warp_registers_every_pair_once_and_all_are_fused(tiny_dataset, atlas_run, tmp_path, monkeypatch):
    params = []
    real = registration.warp_atlas
    monkeypatch.setattr(registration, "warp_atlas", lambda *a, **k: params.append(a[7]) or real(*a, **k))
    cfg = config(tiny_dataset, atlas_warps=["regular", "flexible"])
    split, sessions, new, flags, report = run_atlas(cfg, tmp_path / "two")
    assert report["pairs"] == 2 * atlas_run[4]["pairs"] == 6 and report["registered"] == 6
    assert sorted(p.smoothing for p in params) == sorted([registration.WARPS["regular"].smoothing] * 3
                                                         + [registration.WARPS["flexible"].smoothing] * 3)
    assert set(report["params"]) == {"regular", "flexible"}
    names = [s.key for s in new[len(sessions):]]  # a synthesised pair per registration, each its own session
    assert len(names) == len(set(names)) == 6 and sum(n.endswith("flexible") for n in names) == 3
    assert report["dice"]["propagated"]["wm"] > 0.5
    regular = sorted(p.name for p in (tmp_path / "two" / "cache" / "atlas" / "registrations").glob("*.npz"))
    *_, alone = run_atlas(config(tiny_dataset), tmp_path / "two")  # the regular ones are the cache of a plain run
    assert alone["registered"] == 0 and len(regular) == 6


def test_atlas_warps_are_checked_and_old_configs_keep_the_regular_one():
    for bad in (["regular", "regular"], ["tight"], [], [["regular"]]):
        with pytest.raises(ValueError, match="--atlas-warps is one or more of regular, flexible"):
            TrainConfig(atlas="propagate", atlas_warps=bad)
    for given in ("flexible", ("flexible", "regular"), ["regular", "flexible"]):  # one setting per set, as a list
        assert TrainConfig(atlas_warps=given).atlas_warps == [w for w in ("regular", "flexible") if w in given]
    old = json.loads(TrainConfig().to_json())
    del old["atlas_warps"]
    assert TrainConfig.from_json(json.dumps(old)).atlas_warps == ["regular"]


def test_intensity_matching_maps_each_region_onto_the_target():
    rng = np.random.default_rng(0)
    regions = np.repeat([1, 2], 500)
    image = np.where(regions == 1, rng.normal(10, 1, 1000), rng.normal(50, 2, 1000)).astype(np.float32)
    target = np.where(regions == 1, rng.normal(300, 5, 1000), rng.normal(100, 5, 1000)).astype(np.float32)
    out = match_intensities(image, regions, target, regions)
    assert abs(out[regions == 1].mean() - 300) < 2 and abs(out[regions == 2].mean() - 100) < 2


def test_the_cache_stores_images_at_half_precision_and_reads_older_float32_ones(atlas_run, tmp_path):
    from neoseg.train.atlas import _load_warped

    split, sessions, new, flags, report = atlas_run
    pair = new[len(sessions)]
    assert nib.load(pair.t2).get_data_dtype() == np.int16  # scaled by the header, as scanners store T2s
    cached = sorted(Path(pair.t2).parents[4].glob("registrations/*.npz"))[0]
    with np.load(cached) as stored:
        assert stored["image"].dtype == np.float16 and np.abs(stored["image"]).max() == 1
        image, scale = stored["image"].astype(np.float32), float(stored["scale"])
        legacy = dict(stored, image=image * scale)
        del legacy["scale"]
    np.savez_compressed(tmp_path / "old.npz", **legacy)  # as written before: float32, no scale
    got = [_load_warped([type("P", (), {"path": p})()])[1][0] for p in (cached, tmp_path / "old.npz")]
    np.testing.assert_allclose(got[0], got[1], rtol=1e-6)
    assert got[0].dtype == np.float32 and got[0].max() == pytest.approx(scale)


def test_cached_registrations_are_reused_not_repeated(tiny_dataset, tmp_path, monkeypatch):
    calls = []
    real = registration.warp_atlas
    monkeypatch.setattr(registration, "warp_atlas", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = config(tiny_dataset, atlas="propagate")
    *_, first = run_atlas(cfg, tmp_path / "a")
    cached = sorted((tmp_path / "a" / "cache" / "atlas" / "registrations").glob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert len(calls) == first["registered"] == first["pairs"] == len(cached) == 3
    *_, again = run_atlas(cfg, tmp_path / "a")  # a resumed run: same cache
    assert len(calls) == 3 and again["registered"] == 0 and again["cached"] == 3
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert again["seconds"] == first["seconds"] > 0  # the registrations' time, as first spent
    cached[0].unlink()  # an interrupted run: the missing pair alone is registered
    *_, resumed = run_atlas(cfg, tmp_path / "a")
    assert len(calls) == 4 and resumed["registered"] == 1


def test_really_partial_label_maps_are_propagated(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for path in sorted(data.glob("sub-T0[2-5]/ses-1/anat/*_dseg.nii.gz")):  # 4 subjects partial in their files
        img = nib.load(path)
        nib.save(nib.Nifti1Image(H.coarsen(np.asarray(img.dataobj)), img.affine), path)
    split, sessions, new, flags, report = run_atlas(config(data, atlas="propagate"), tmp_path / "run")
    assert split.partial_sessions and report["targets"] == len([s for s in sessions if not split.is_full(s)])
    assert "dice" not in report  # no hidden truth to score against
    for old, s in zip(sessions, new):
        got = np.asarray(nib.load(s.labels).dataobj)
        known = np.asarray(nib.load(old.labels).dataobj)
        assert np.array_equal(got[known != TCV], known[known != TCV])


def test_sessions_annotated_by_masks_give_pairs_but_keep_their_own_annotation(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for path in sorted(data.glob("sub-T0[2-5]/ses-1/anat/*_dseg.nii.gz")):  # 4 subjects: a TCV outline only
        img = nib.load(path)
        tcv = np.isin(np.asarray(img.dataobj), [CGM, WM, DGM]).astype(np.uint8)
        nib.save(nib.Nifti1Image(tcv, img.affine), str(path).replace("desc-drawem9_dseg", "desc-tcv_mask"))
        path.unlink()
    split, sessions, new, flags, report = run_atlas(config(data), tmp_path / "run")
    masked = sorted(s.key for s in sessions if s.labels is None)
    assert masked and sorted(report["not_propagated"]) == masked
    assert new[:len(sessions)] == sessions  # kept as they were
    pairs = new[len(sessions):]
    assert len(pairs) == report["pairs"] == len(masked) * len(report["atlases"])
    assert all(nib.load(p.labels).shape == (24, 24, 24) for p in pairs)


def test_atlas_options_are_checked(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown --atlas"):
        TrainConfig(atlas="everything")
    with pytest.raises(ValueError, match="atlas-confidence"):
        TrainConfig(atlas="propagate", atlas_confidence=0.3)
    with pytest.raises(ValueError, match="partial-label loss"):
        TrainConfig(atlas="propagate", loss="bce")
    with pytest.raises(ValueError, match="at least one fully labelled and one partially labelled"):
        run_atlas(config(tiny_dataset, full_fraction=1.0), tmp_path / "full")


@pytest.mark.slow
def test_neoseg_train_with_atlas_propagate_finishes(tiny_dataset, tmp_path):
    from neoseg.cli.train import app

    out = tmp_path / "run"
    args = ["--data", str(tiny_dataset), "--out", str(out), "--atlas", "propagate", "--atlas-confidence", "0.6",
            "--members", "1",  # one model: its --resume below trains on (a run of several reopens no finished one)
            "--epochs", "1", "--slice-size", "32", "--widths", "8,16", "--batch-size", "8", "--full-fraction",
            "0.25", "--device", "cpu", "--augment", "none", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "atlas.json").read_text())
    assert report["pairs"] == 3 and report["seconds"] > 0 and report["confidence"] == 0.6
    assert json.loads((out / "config.json").read_text())["atlas"] == "propagate"
    assert "--atlas run` scores the test scans" in result.output  # how to measure atlas fusion
    cfg = json.loads((out / "config.json").read_text())
    cfg["epochs"] = 2
    (out / "config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, ["--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "atlas.json").read_text())["registered"] == 0  # --resume reuses the registrations


def test_each_target_gets_its_nearest_atlases_and_atlas_json_says_so(tiny_dataset, tmp_path):
    cfg = config(tiny_dataset, atlas="propagate", full_fraction=0.5, atlas_per_target=1)
    split, sessions, new, flags, report = run_atlas(cfg, tmp_path / "run")
    atlases = [s for s in sessions if split.is_full(s)]
    assert len(atlases) == 2 and report["atlas_per_target"] == 1
    assert report["pairs"] == report["targets"] == len(sessions) - len(atlases)
    names = sorted(p.name for p in (tmp_path / "run" / "cache" / "atlas" / "registrations").glob("*.npz"))
    for target in (s for s in sessions if not split.is_full(s)):
        nearest = min(atlases, key=lambda a: abs(a.scan_age - target.scan_age))
        assert [n for n in names if f"--{target.key}-" in n][0].startswith(f"{nearest.key}--")


def test_registrations_in_two_worker_processes(tiny_dataset, tmp_path, caplog):
    cfg = config(tiny_dataset, atlas="pairs")
    with caplog.at_level("INFO", logger="neoseg.train"):
        split, sessions, new, flags, report = run_atlas(cfg, tmp_path / "run", workers=2)
    assert report["registered"] == report["pairs"] == len(new) - len(sessions) == 3
    # said before the work and as it goes, for a log file or a batch job (no progress bar there)
    assert "atlas: registering 3 of 3 pairs (0 cached), 2 at once" in caplog.text
    assert "atlas: 3 of 3 registered (" in caplog.text
    cached = sorted((tmp_path / "run" / "cache" / "atlas" / "registrations").glob("*.npz"))
    assert len(cached) == 3 and not list(cached[0].parent.glob(".*"))  # no temporary files left
    for path in cached:
        with np.load(path) as result:
            assert result["soft"].shape == (len(leaf_values(H)), 24, 24, 24) and result["seconds"] > 0
            sums = result["soft"].astype(int).sum(axis=0)
            covered = sums[sums > 0]  # the warped field of view; its edge voxels are only partly covered
            assert abs(np.median(covered) - 255) <= 2  # one leaf per voxel (probabilities in 1/255)
            assert covered.max() <= 255 + len(leaf_values(H))  # at most each leaf's rounding above
    *_, again = run_atlas(cfg, tmp_path / "run", workers=2)
    assert again["registered"] == 0


def test_a_failing_registration_stops_with_one_line_naming_the_pair(tiny_dataset, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    cfg = config(data, atlas="pairs")
    split = dataset_split(cfg)
    atlas = next(s for s in split.train if split.is_full(s))
    atlas.t2.write_bytes(b"not a NIfTI file")  # every pair of this atlas fails, in a worker process
    with pytest.raises(ValueError, match=rf"^atlas registration of {atlas.key} to sub-T0\d_ses-1 failed: ") as e:
        run_atlas(cfg, tmp_path / "two", workers=2)
    assert "\n" not in str(e.value)

    def fail(*args, **kwargs):
        raise RuntimeError("Greedy: the images do not overlap\n  (at iteration 3)")

    monkeypatch.setattr(registration, "warp_atlas", fail)
    with pytest.raises(ValueError, match=r"^atlas registration of sub-T\d\d_ses-1 to sub-T\d\d_ses-1 failed: Greedy: "
                                         r"the images do not overlap$"):
        run_atlas(config(tiny_dataset, atlas="pairs"), tmp_path / "one")
    assert not list((tmp_path / "one" / "cache" / "atlas" / "registrations").glob("*.npz"))


def test_a_training_script_without_a_main_guard_is_told_what_registration_processes_need(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "train.py"  # its top level runs again in every spawned registration process
    script.write_text(
        "from pathlib import Path\nfrom types import SimpleNamespace as N\n"
        "from neoseg.train.atlas import register_pairs\n"
        "pairs = [N(path=Path('missing.npz'), atlas=N(key=f'a{i}'), target=N(key='t'), coarsen=1) for i in range(2)]\n"
        "register_pairs(pairs, None, workers=2)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r"ValueError: atlas registration of a\d to t failed: a registration process ended abruptly", last)
    assert "if __name__ == '__main__':" in last


def _fixture_cache(atlas_run):
    split, sessions, new, *_ = atlas_run
    pair = new[len(sessions)]  # <out>/cache/atlas/pairs-<hash>/sub-.../ses-.../anat/<file>
    return pair.labels.parents[4] / "registrations"


def sessions_of(cfg):
    return training_sessions(cfg, dataset_split(cfg))[0]


def test_propagation_never_reads_the_hidden_truth(atlas_run, tiny_dataset, tmp_path):
    """The simulated partial sessions' children shuffled (CGM -> WM -> DGM -> CGM): the propagated
    maps stay the same, only atlas.json's quality report against that truth changes."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    split, sessions, new, flags, report = atlas_run
    targets = [s for s in sessions if not split.is_full(s)]
    for target in targets:
        path = data / target.labels.relative_to(tiny_dataset)
        img = nib.load(path)
        truth = np.asarray(img.dataobj)
        children = [truth == CGM, truth == WM, truth == DGM]
        shuffled = np.select(children, [WM, DGM, CGM], truth.astype(int)).astype(truth.dtype)
        nib.save(nib.Nifti1Image(shuffled, img.affine), path)
    # the same registrations (Greedy's result varies a little from run to run), under the new files' names
    theirs = _fixture_cache(atlas_run)
    cfg, root = config(data), tmp_path / "run" / "cache" / "atlas"
    for pair in plan_pairs(dataset_split(cfg), sessions_of(cfg), cfg.atlas_per_target, root,
                           [ATLAS_VERSION, PARAMS.key(), H.to_json()]):
        pair.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(next(theirs.glob(f"{pair.atlas.key}--{pair.target.key}-*.npz")), pair.path)
    _, sessions2, new2, _, report2 = run_atlas(cfg, tmp_path / "run")
    assert report2["registered"] == 0
    before = {s.key: np.asarray(nib.load(s.labels).dataobj) for s in new[:len(sessions)]}
    after = {s.key: np.asarray(nib.load(s.labels).dataobj) for s in new2[:len(sessions2)]}
    for target in targets:
        assert np.array_equal(before[target.key], after[target.key])
    assert report2["unknown_share"] == report["unknown_share"]
    assert report2["dice"]["propagated"]["wm"] < 0.5 < report["dice"]["propagated"]["wm"]


def test_a_rerun_reads_each_targets_figures_instead_of_fusing_again(tiny_dataset, tmp_path, monkeypatch):
    from neoseg.train import atlas

    calls = []
    real = atlas.fuse
    monkeypatch.setattr(atlas, "fuse", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = config(tiny_dataset, atlas="propagate")
    *_, first = run_atlas(cfg, tmp_path / "a")
    assert len(calls) == 3
    figures = sorted((tmp_path / "a" / "cache" / "atlas").glob(f"propagate-*/sub-*/ses-*/anat/*{atlas.FIGURES_SUFFIX}"))
    assert len(figures) == 3 and all(set(json.loads(f.read_text())) == {"unknown", "open", "dice"} for f in figures)
    *_, again = run_atlas(cfg, tmp_path / "a")
    assert len(calls) == 3
    assert {k: again[k] for k in ("unknown_share", "dice")} == {k: first[k] for k in ("unknown_share", "dice")}
    figures[0].unlink()  # a cache written before the figures were kept: that target is fused again
    *_, third = run_atlas(cfg, tmp_path / "a")
    assert len(calls) == 4 and third["dice"] == first["dice"] and figures[0].is_file()


def test_a_run_sharing_the_cache_that_writes_the_same_files_meanwhile_is_no_error(tiny_dataset, tmp_path, monkeypatch):
    """Each propagated map and pair file appears (written by "another run") while this run writes
    it: the files are content-keyed, so the one there is kept, and this run goes on."""
    import re

    from neoseg.core.io import write_nifti
    from neoseg.train import atlas

    theirs = []

    def another_run_first(img, tmp):
        final = Path(tmp).parent / re.match(r"^\.(.*)\.[^.]+\.part", Path(tmp).name).group(1)
        write_nifti(img, final)
        theirs.append(final)
        write_nifti(img, tmp)

    monkeypatch.setattr(atlas, "write_nifti", another_run_first)
    split, sessions, new, flags, report = run_atlas(config(tiny_dataset), tmp_path / "run")
    assert len(theirs) == 3 + 2 * 3  # 3 propagated maps, 3 pairs of 2 files
    assert all(p.is_file() for p in theirs) and {s.labels for s in new if s.labels in theirs}
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary file left


def test_scans_finer_than_the_atlas_resolution_register_on_a_coarser_level(tmp_path):
    """0.5 mm phantoms with the default --atlas-resolution 1: the pyramid's finest level is skipped,
    the warped maps still lie on the scan's own grid and register it as the full-resolution run does."""
    from conftest import write_dataset

    data = write_dataset(tmp_path / "fine", n_subjects=4, spacing=0.5)
    fast = config(data, atlas="propagate", full_fraction=0.25)
    *_, report = run_atlas(fast, tmp_path / "fast")
    *_, full = run_atlas(dataclasses.replace(fast, atlas_resolution=0.5), tmp_path / "full")
    assert report["resolution_mm"] == 1.0 and report["skipped_levels"] == [1] and full["skipped_levels"] == [0]
    for path in (tmp_path / "fast" / "cache" / "atlas" / "registrations").glob("*.npz"):
        with np.load(path) as result:
            assert result["soft"].shape == (len(leaf_values(H)), 24, 24, 24)
    for child in ("cgm", "wm"):
        assert report["dice"]["warped"][child] > 0.5
        assert abs(report["dice"]["warped"][child] - full["dice"]["warped"][child]) < 0.15
    with pytest.raises(ValueError, match="--atlas-resolution"):
        TrainConfig(atlas="propagate", atlas_resolution=0)


def test_the_atlas_resolution_benchmark_scores_each_resolution(tmp_path, monkeypatch):
    from neoseg.benchmarks import atlas_resolution

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # its generated cohort
    atlas_resolution.main(["--pairs", "1", "--grid", "32", "--resolutions", "4", "8", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "atlas-resolution.json").read_text())
    assert [r["resolution_mm"] for r in result["pairs"]] == [4.0, 8.0]  # 4 mm voxels: full, then one level skipped
    for r in result["pairs"]:
        assert r["seconds"] > 0 and set(r["dice"]) == set(r["dice_at_2mm"]) == {"cgm", "wm", "dgm"}
        assert all(0 <= d <= 1 for d in (*r["dice"].values(), *r["dice_at_2mm"].values()))
    assert result["pairs"][0]["dice"]["wm"] > 0.5  # the registration itself worked
    assert "resolution (mm)" in (tmp_path / "out" / "atlas-resolution.md").read_text()


def test_a_registration_on_one_thread_is_the_same_every_time(tiny_dataset):
    """Greedy's random generator is seeded (RegistrationParams.seed): unseeded, the affine stage's
    jittered samples made two registrations of the same pair differ."""
    sessions = sorted(tiny_dataset.glob("sub-*/ses-1/anat/*_T2w.nii.gz"))
    (t, tl), (a, al) = [(np.asarray(nib.load(p).dataobj, np.float32),
                         np.asarray(nib.load(str(p).replace("restore_T2w", "drawem9_dseg")).dataobj))
                        for p in (sessions[5], sessions[0])]
    inside = lambda labels: np.isin(labels, (CGM, WM, DGM))  # noqa: E731
    runs = [registration.warp_atlas(t, inside(tl), a, inside(al), [a, (al == DGM).astype(np.float32)],
                                    (2.0,) * 3, (2.0,) * 3, threads=1) for _ in range(2)]
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)
