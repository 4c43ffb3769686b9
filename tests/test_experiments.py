import csv
import dataclasses
import json
import shutil
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import torch

from neoseg.reproduce import stats
from neoseg.reproduce.calibrate import calibrate, slice_passes
from neoseg.reproduce.cli import app
from neoseg.reproduce.experiment import run_all
from neoseg.reproduce.grid import RunSpec, plan
from neoseg.reproduce.prepare import prepare_data
from neoseg.reproduce.profiles import PROFILES
from neoseg.reproduce.results import RESULT_FIELDS
from neoseg.core.hierarchy import builtin
from neoseg.data.dhcp import find_sessions
from neoseg.data.splits import make_split
from neoseg.train import checkpoint
from neoseg.train.baselines import correct_with_parent, write_pseudo_labels
from neoseg.train.config import TrainConfig
from neoseg.train.loop import train
from neoseg.train.recipes import pseudo_label_path
from neoseg.train.sampling import ShardedBatches

H = builtin()
CGM, WM, DGM, TCV = (H.index(n) for n in ("cgm", "wm", "dgm", "tcv"))


def tiny_config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=1, batch_size=8, full_fraction=0.25,
                device="cpu")
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ semi-supervised baseline
def test_correction_keeps_known_labels_and_picks_one_child_inside_the_parent():
    partial = np.array([10, 10, 10, 1, 4, 5])  # three TCV voxels, then csf, background, ventricles
    probs = np.full((len(H), 6), 0.1, np.float32)
    probs[CGM, 0], probs[WM, 1], probs[DGM, 2] = 0.9, 0.6, 0.3  # the most probable child of each TCV voxel
    probs[DGM, 3:] = 0.99  # a confident child outside TCV must not be placed there
    assert correct_with_parent(probs, partial, H).tolist() == [2, 3, 7, 1, 4, 5]


def test_correction_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        correct_with_parent(np.zeros((3, 4)), np.zeros(4, int), H)


def test_pseudo_labels_are_written_and_used_for_fine_tuning(tiny_dataset, tmp_path):
    sessions = find_sessions(tiny_dataset)
    split = make_split(sessions, 0.25, seed=0)
    supervised = train(tiny_config(tiny_dataset, loss="bce", train_subjects=sorted(split.fully_labelled)),
                       tmp_path / "sup", progress=False)
    partial = [s for s in split.train if not split.is_full(s)]
    root = write_pseudo_labels(supervised.out / "best.pt", partial, tmp_path / "pseudo")
    for s in partial:
        truth = np.asarray(nib.load(s.labels).dataobj)
        pseudo = np.asarray(nib.load(pseudo_label_path(root, s)).dataobj)
        inside = np.isin(truth, (2, 3, 7))
        assert np.array_equal(pseudo[~inside], truth[~inside])  # the known labels outside TCV
        assert np.isin(pseudo[inside], (2, 3, 7)).all()  # one child of TCV inside it
    # fine-tuning starts from the supervised weights: with lr 0 the parameters stay as they were
    tuned = train(tiny_config(tiny_dataset, loss="bce", lr=0.0, init_from=str(supervised.out / "best.pt"),
                              pseudo_labels=str(root)), tmp_path / "semi", progress=False)
    before = checkpoint.load(supervised.out / "best.pt").model
    after = checkpoint.load(tuned.out / "best.pt").model
    for (name, a), b in zip(before.named_parameters(), after.parameters()):
        assert torch.equal(a, b), name


def test_missing_pseudo_labels_and_mismatched_init_are_clear_errors(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="has no label map"):
        train(tiny_config(tiny_dataset, pseudo_labels=str(tmp_path / "nothing")), tmp_path / "a", progress=False)
    first = train(tiny_config(tiny_dataset), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="must match"):
        train(tiny_config(tiny_dataset, widths=[8, 16, 32], init_from=str(first.out / "best.pt")), tmp_path / "c",
              progress=False)


# ------------------------------------------------------------------------------ prior bias
def test_prior_bias_estimates_hidden_children_through_their_parent():
    from neoseg.train.dataset import SliceDataset
    from neoseg.train.init import set_prior_bias
    from neoseg.train.models import create_model
    from neoseg.train.volumes import SliceStack

    image = np.zeros((1, 2, 2), np.float16)
    full = SliceStack(None, image, np.array([[[2, 3], [7, 4]]], np.uint8), (1.0, 1.0, 1.0))
    partial = SliceStack(None, image, np.array([[[2, 2], [0, 0]]], np.uint8), (1.0, 1.0, 1.0))  # -> tcv, tcv, 0, 0
    model = create_model("unet", 1, len(H), widths=[8, 16])
    set_prior_bias(model, SliceDataset([full, partial], H, [False, True]))
    p = torch.sigmoid(model.head.bias).detach().numpy()
    assert p[TCV] == pytest.approx(5 / 8)  # 3 of 4 full voxels, 2 of 4 partial ones
    for child in (CGM, WM, DGM):  # p(tcv) x p(child | tcv) on the full slices, not 1 of 6 observed entries
        assert p[child] == pytest.approx(5 / 8 / 3)
    assert p[H.index("unlabelled")] == pytest.approx(2 / 8) and p[H.index("background")] == pytest.approx(1 / 8)


# ------------------------------------------------------------------------------ sampler
def test_sharded_batches_split_the_single_process_batches():
    single = list(ShardedBatches(21, 8, torch.Generator().manual_seed(3)))
    assert [len(b) for b in single] == [8, 8, 5] and sorted(sum(single, [])) == list(range(21))
    shards = [list(ShardedBatches(21, 8, torch.Generator().manual_seed(3), rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*shards)] == single
    assert [len(b) for b in shards[0]] == [4, 4, 3] and [len(b) for b in shards[1]] == [4, 4, 2]
    fixed = ShardedBatches(21, 8, torch.Generator().manual_seed(3), steps=5)
    batches = list(fixed)
    assert len(fixed) == 5 and len(batches) == 5 and all(len(b) == 8 for b in batches)
    assert Counter(sum(batches, [])).most_common(1)[0][1] == 2  # 40 draws of 21 slices: fresh shuffles


# ------------------------------------------------------------------------------ the grid and the report
def test_headline_plan_is_two_percent_the_reference_and_the_recipes_beyond():
    runs = plan(PROFILES["equal-epochs"])
    count = Counter((r.kind, r.recipe, r.fraction) for r in runs)
    assert count == {("supervised", "bce", 1.0): 1, ("supervised", "bce", 0.02): 3, ("partial", "iuc", 0.02): 3,
                     ("semi", "bce", 0.02): 3, ("partial", "labelset", 0.02): 3, ("partial", "labelset+st", 0.02): 3,
                     ("partial", "labelset+st5", 0.02): 3,
                     ("partial", "labelset+st", 0.05): 3, ("partial", "iuc", 0.05): 3, ("supervised", "bce", 0.05): 3}
    assert all(r.select == "val-loss" for r in runs)  # the paper's selection, for every row
    names = [r.name for r in runs]
    assert all(names.index(n) < names.index(r.name) for r in runs for n in r.needs)
    full = plan(dataclasses.replace(PROFILES["equal-epochs"], grid="full"))
    assert set(names) < {r.name for r in full}  # the headline runs are the full grid's, so a folder can grow


def test_equal_epoch_protocol_has_no_step_budget_or_time_guard():
    cpu = PROFILES["equal-epochs"]
    assert cpu.steps_per_epoch is None and cpu.max_minutes is None and cpu.deadline_minutes is None
    assert cpu.cohort_grid == 64 and cpu.slice_size["unet"] == 64 and cpu.patience < cpu.epochs["unet"]


def test_plan_is_the_papers_grid():
    runs = plan(PROFILES["equal-steps"])
    count = Counter((r.model, r.kind, r.loss, r.reduction) for r in runs if r.budget == 1)
    assert count[("unet", "supervised", "bce", "mean")] == 16  # 3 fractions x 5 draws + the 100 % reference
    assert count[("unet", "semi", "bce", "mean")] == 15
    assert count[("unet", "partial", "iuc", "mean")] == 15
    for loss in ("huc", "weight", "wnorm"):
        assert count[("unet", "partial", loss, "mean")] == 10  # 2 % and 5 %
    for kind, loss in (("supervised", "bce"), ("semi", "bce"), ("partial", "iuc")):
        assert count[("segformer", kind, loss, "mean")] == 6  # 2 % and 5 %, 3 draws in the CPU profile
    assert count[("unet", "partial", "iuc", "observed")] == 5
    assert sum(r.budget > 1 for r in runs) == 3  # IUC at 2 % with a larger step budget, beyond the paper
    beyond = Counter(r.recipe for r in runs if r.loss == "labelset")
    assert beyond == {"labelset": 10, "labelset+st": 10, "labelset+st5": 10}  # beyond the paper: 2 % and 5 %
    assert len({r.name for r in runs}) == len(runs) == 132
    paper = plan(PROFILES["paper"])
    assert sum(r.model == "segformer" for r in paper) == 30 and len(paper) == 141
    names = [r.name for r in runs]
    assert all(names.index(n) < names.index(r.name) for r in runs for n in r.needs)


def test_anova_and_marks_follow_the_paper():
    rows = []
    for kind, loss, base in (("supervised", "bce", 0.5), ("semi", "bce", 0.52), ("partial", "iuc", 0.9)):
        for i in range(6):
            rows.append({"model": "unet", "kind": kind, "loss": loss, "reduction": "mean", "fraction": 0.02,
                         "age_group": "preterm", "structure": "dgm", "dice": base + 0.01 * i, "truth_empty": False, "budget": 1})
    assert stats.anova(stats.values(rows, "unet", stats.IUC, 0.02, "preterm", "dgm"),
                        stats.values(rows, "unet", stats.SUPERVISED, 0.02, "preterm", "dgm")) < 1e-6
    assert stats.marks(rows, "unet", stats.IUC, 0.02, "preterm", "dgm") == "*^"
    assert stats.marks(rows, "unet", stats.SEMI, 0.02, "preterm", "dgm") == ""
    assert np.isnan(stats.anova(np.array([0.5]), np.array([0.4, 0.6])))


def test_runner_end_to_end_is_resumable(tiny_dataset, tmp_path):
    profile = dataclasses.replace(
        PROFILES["equal-steps"], name="tiny", slice_size={"unet": 32, "segformer": 32}, widths=[8, 16],
        batch_size=8, epochs={"unet": 1, "segformer": 1}, steps_per_epoch=2, patience=1, fractions=(0.05,), draws=1, workers=1,
        threads=1, extra_budget=2, fewer_draws={}, deadline_minutes=None)
    out = tmp_path / "exp"
    run_all(profile, out, data=tiny_dataset, device="cpu", progress=False)
    planned = plan(profile)
    assert len(planned) == 15
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RESULT_FIELDS
    assert {r["run"] for r in rows} == {r.name for r in planned}
    text = (out / "REPORT.md").read_text()
    for needle in ("Table 1", "Table 3", "Appendix A", "figure4.png", "Wall time", "Ours: IUC", "Semi-supervised",
                   "Beyond the paper", "Label-set loss + self-training"):
        assert needle in text, needle
    assert (out / "figure4.png").stat().st_size > 1000
    # semi-supervised runs start from their supervised run and train on pseudo labels
    semi = json.loads((out / "runs" / "unet-semi-bce-f005-d0" / "config.json").read_text())
    assert semi["init_from"].endswith("unet-supervised-bce-f005-d0/best.pt") and semi["pseudo_labels"]
    # finished runs are not redone; a run without its marker is resumed
    stamp = (out / "runs" / "unet-partial-iuc-f005-d0" / "best.pt").stat().st_mtime_ns
    (out / "runs" / "unet-partial-huc-f005-d0" / "done.json").unlink()
    metrics = out / "runs" / "unet-partial-huc-f005-d0" / "metrics.csv"
    with metrics.open(newline="") as f:
        epochs = list(csv.DictReader(f))
    with metrics.open("w", newline="") as f:  # the interrupted invocation's epochs took 7.5 s each
        writer = csv.DictWriter(f, fieldnames=list(epochs[0]))
        writer.writeheader()
        writer.writerows({**row, "seconds": "7.5"} for row in epochs)
    meta = run_all(profile, out, data=tiny_dataset, device="cpu", progress=False)
    assert (out / "runs" / "unet-partial-iuc-f005-d0" / "best.pt").stat().st_mtime_ns == stamp
    resumed = json.loads((out / "runs" / "unet-partial-huc-f005-d0" / "done.json").read_text())
    assert resumed["earlier_seconds"] == 7.5 * len(epochs) < resumed["seconds"]  # both invocations
    assert len(meta["invocations"]) == 2 and not meta["invocations"][-1]["failed"]
    # --report-only starts nothing: an unfinished run stays unfinished and out of the results
    (out / "runs" / "unet-partial-huc-f005-d0" / "done.json").unlink()
    run_all(profile, out, data=tiny_dataset, device="cpu", progress=False, start_runs=False)
    assert not (out / "runs" / "unet-partial-huc-f005-d0" / "done.json").is_file()
    with (out / "results.csv").open() as f:
        assert "unet-partial-huc-f005-d0" not in {r["run"] for r in csv.DictReader(f)}
    assert "Not (yet) run: 1 run(s)" in (out / "REPORT.md").read_text()


def test_a_profile_name_shared_with_neoseg_train_means_the_same_settings(tiny_dataset, tmp_path):
    from neoseg.reproduce.training import run_config
    from neoseg.train.config import PROFILES as TRAIN_PROFILES, TrainConfig

    assert set(PROFILES) & set(TRAIN_PROFILES) == {"paper"}
    runner, train = PROFILES["paper"], TrainConfig.profile("paper")
    assert (runner.cohort_subjects, runner.cohort_grid, runner.cohort_anatomy) == \
        (train.cohort_subjects, train.cohort_grid, train.cohort_anatomy)
    ours = next(r for r in plan(runner) if r.loss == "iuc" and r.model == "unet" and r.budget == 1)
    config = run_config(ours, runner, tiny_dataset, tmp_path, "cpu")
    for key in ("slice_size", "widths", "batch_size", "epochs", "patience", "lr", "prior_bias", "augment",
                "max_minutes", "spacing", "precision", "steps_per_epoch", "reduction", "select"):
        assert getattr(config, key) == getattr(train, key), key
    assert train.augment == "none" and train.cohort_subjects == 250  # the paper: no augmentation, 250 subjects


def test_command_line_lists_the_profiles():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "paper" in result.output and "--only" in result.output
    result = CliRunner().invoke(app, ["--out", "x", "--profile", "gpu"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["--out", "x", "--profile", "cpu"])
    assert result.exit_code == 2 and "now called 'equal-epochs'" in result.output


def test_an_experiment_folder_of_the_old_profile_name_is_continued(tmp_path):
    from neoseg.reproduce import metadata

    (tmp_path / "experiment.json").write_text(json.dumps({"profile": "cpu", "invocations": []}))
    assert metadata.load(tmp_path, PROFILES["equal-epochs"])["profile"] == "equal-epochs"


def test_headline_runner_on_the_equal_epoch_protocol(tiny_dataset, tmp_path):
    profile = dataclasses.replace(
        PROFILES["equal-epochs"], name="tiny", slice_size={"unet": 32, "segformer": 32}, widths=[8, 16],
        batch_size=8, epochs={"unet": 2, "segformer": 2}, patience=1, fractions=(0.25,), draws=1, workers=1)
    out = tmp_path / "exp"
    run_all(profile, out, data=tiny_dataset, device="cpu", progress=False)
    runs = out / "runs"
    assert {p.name for p in runs.iterdir()} == {r.name for r in plan(profile)}
    sup = json.loads((runs / "unet-supervised-bce-f025-d0" / "split.json").read_text())
    iuc = json.loads((runs / "unet-partial-iuc-f025-d0" / "split.json").read_text())
    assert sup["fully_labelled"] == iuc["fully_labelled"] and sup["test"] == iuc["test"]
    assert {k.split("_")[0] for k in sup["trained_on"]} == {f"sub-{s}" for s in sup["fully_labelled"]}
    assert len(iuc["trained_on"]) > len(sup["trained_on"])
    for record in map(json.loads, (p.read_text() for p in runs.glob("*/done.json"))):
        assert record["stopped_by"] in ("early stopping", "epoch cap") and record["epochs"] <= 2
    text = (out / "REPORT.md").read_text()
    assert "equal epochs" in text and "How the runs ended" in text and "Table 3" not in text


def test_slice_passes_count_each_runs_own_training_set(tiny_dataset, tmp_path):
    profile = dataclasses.replace(PROFILES["equal-epochs"], slice_size={"unet": 32}, epochs={"unet": 2})
    sessions = find_sessions(tiny_dataset)
    prepare_data(dataclasses.replace(profile, slice_size={"unet": 32}), tmp_path, tiny_dataset, False)
    sup, iuc = (slice_passes(RunSpec("unet", kind, loss, 0.25, 0), profile, sessions,
                                         tmp_path / "cache") for kind, loss in (("supervised", "bce"), ("partial", "iuc")))
    assert 0 < sup < iuc
    fused = RunSpec("unet", "partial", "iuc", 0.25, 0, atlas="propagate", fusion=("regular",))
    assert slice_passes(fused, profile, sessions, tmp_path / "cache") == 0  # evaluated, not trained
    assert calibrate(dataclasses.replace(profile, widths=[8, 16], batch_size=2), "cpu", steps=1) > 0


def test_a_subset_of_the_grid_trains_and_reports(tiny_dataset, tmp_path):
    profile = dataclasses.replace(
        PROFILES["equal-epochs"], name="tiny", slice_size={"unet": 32, "segformer": 32}, widths=[8, 16],
        batch_size=8, epochs={"unet": 1, "segformer": 1}, patience=1, fractions=(0.25,), draws=1, workers=1,
        grid="atlas")
    out = tmp_path / "exp"
    run_all(profile, out, data=tiny_dataset, device="cpu", only="f100", progress=False)  # once exited 2 here
    assert [p.name for p in (out / "runs").iterdir()] == ["unet-supervised-bce-f100-d0"]
    text = (out / "REPORT.md").read_text()
    assert "Runs finished: 1 of 23 planned" in text and "No finished runs yet" in text
    assert "| unet | supervised, 100 % | bce |" in text and not (out / "figure4.png").exists()
    # a fusion run: the propagation run trained, then its best weights evaluated with atlas fusion
    run_all(profile, out, data=tiny_dataset, device="cpu", only="atlas-propagate-fusion-f025-d0", progress=False)
    runs = out / "runs"
    trained = json.loads((runs / "unet-partial-iuc-atlas-propagate-f025-d0" / "done.json").read_text())
    fused = json.loads((runs / "unet-partial-iuc-atlas-propagate-fusion-f025-d0" / "done.json").read_text())
    assert fused["best_epoch"] == trained["best_epoch"] and fused["fusion"] == ["regular"]
    assert not (runs / "unet-partial-iuc-atlas-propagate-fusion-f025-d0" / "best.pt").exists()
    with (out / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["run"].endswith("fusion-f025-d0")]
    assert rows and {r["output"] for r in rows} == {"mask", "dseg"}
    assert "Atlas propagation + IUC, atlas fusion at inference" in (out / "REPORT.md").read_text()
    # an ensemble row: the pairs run trained with seeds 0, 1 and 2 on the draw's split, the three averaged
    run_all(profile, out, data=tiny_dataset, device="cpu", only="atlas-pairs-ens3-f025-d0", progress=False)
    configs = [json.loads((runs / f"unet-partial-iuc-atlas-pairs{s}-f025-d0" / "config.json").read_text())
               for s in ("", "-seed1", "-seed2")]
    assert [(c["seed"], c.get("split_seed")) for c in configs] == [(0, None), (1, 0), (2, 0)]
    splits = {(runs / f"unet-partial-iuc-atlas-pairs{s}-f025-d0" / "split.json").read_text() for s in ("", "-seed1")}
    assert len(splits) == 1
    with (out / "results.csv").open() as f:
        assert any(r["run"] == "unet-partial-iuc-atlas-pairs-ens3-f025-d0" for r in csv.DictReader(f))
    assert "Atlas-to-scan pairs + IUC, 3 seeds averaged" in (out / "REPORT.md").read_text()


@pytest.mark.slow
def test_a_grid_is_completed_from_an_earlier_experiments_report(tiny_dataset, tmp_path):
    """A grid too long for one session: the runs of an earlier session's committed report folder
    (REPORT.md, results.csv, runs.json, experiment.json; no weights) count as finished, and a run
    trained here again for its weights matches the adopted rows exactly."""
    profile = dataclasses.replace(
        PROFILES["equal-epochs"], name="tiny", slice_size={"unet": 32, "segformer": 32}, widths=[8, 16],
        batch_size=8, epochs={"unet": 2, "segformer": 1}, patience=1, fractions=(0.25,), draws=1, workers=1,
        grid="atlas")
    earlier, committed, here = tmp_path / "earlier", tmp_path / "committed", tmp_path / "here"
    run_all(profile, earlier, data=tiny_dataset, device="cpu", only="unet-partial-iuc-f025-d0,f100", progress=False)
    committed.mkdir()
    for name in ("REPORT.md", "results.csv", "runs.json", "experiment.json"):
        shutil.copy(earlier / name, committed / name)
    run_all(profile, here, data=tiny_dataset, device="cpu", only="f100", progress=False, adopt=committed)
    assert not (here / "runs").exists() or not any((here / "runs").iterdir())  # adopted: nothing trained
    # a run that starts from the adopted IUC run: the IUC run is trained again here, for its weights
    run_all(profile, here, data=tiny_dataset, device="cpu", only="labelset-st-from-iuc-f025-d0", progress=False)
    assert sorted(p.name for p in (here / "runs").iterdir()) == [
        "unet-partial-iuc-f025-d0", "unet-partial-labelset-st-from-iuc-f025-d0"]
    text = (here / "REPORT.md").read_text()
    assert "Runs finished: 3 of 23 planned" in text and "1 of them with their run records" in text
    assert "compared row by row: `unet-partial-iuc-f025-d0`, largest Dice difference 0.0000 (identical)." in text
    assert "| unet | supervised, 100 % | bce |" in text  # the adopted reference, with its record
