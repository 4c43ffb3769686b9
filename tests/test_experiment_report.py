"""The experiment report from stand-in run folders (no training): any subset of the grid, per-draw
tables and the worst draw, the target check, runs cut by a cap, and each recipe's time."""

import csv
import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

from neoseg.reproduce import adopt as adoption
from neoseg.reproduce import metadata
from neoseg.reproduce.cli import app
from neoseg.reproduce.draws import per_draw_table, target_row
from neoseg.reproduce.grid import RunSpec, plan, select
from neoseg.reproduce.profiles import PROFILES
from neoseg.reproduce.records import finished_records, spec_of
from neoseg.reproduce.report import write_report
from neoseg.reproduce.results import EVALUATION_FIELDS, collect_results
from neoseg.reproduce.stats import LABELSET_ST, SUPERVISED

PROFILE = dataclasses.replace(PROFILES["equal-epochs"], grid="atlas", fractions=(0.02,), cohort_anatomy="v2")
REFERENCE = {"dgm": 0.80, "wm": 0.90, "cgm": 0.90}  # the 100 % model's Dice in both age groups


def stand_in(out, spec: RunSpec, dice: dict, seconds=60.0, stopped_by="early stopping", best=(1, 1, 0, 0, 0),
             registration=None, label_map: dict | None = None):
    """A finished run folder as the runner leaves it: done.json, metrics.csv, evaluation.csv (one
    preterm and one term test volume with the Dice of ``dice`` per structure for the masks, and of
    ``label_map`` for the label map where given)."""
    run = out / "runs" / spec.name
    run.mkdir(parents=True)
    record = {"run": spec.name, "seconds": seconds, "best_epoch": max(i + 1 for i, b in enumerate(best) if b),
              "epochs": len(best), "stopped_by": stopped_by, "best_val_loss": 0.1, "self_train_began": None,
              "recipe": spec.recipe, "patience": 4, "epoch_cap": 150, **dataclasses.asdict(spec)}
    (run / "done.json").write_text(json.dumps(record))
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "val_loss", "best"])
        writer.writeheader()
        writer.writerows({"epoch": i + 1, "val_loss": 1 - i / 10, "best": b} for i, b in enumerate(best))
    with (run / "evaluation.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EVALUATION_FIELDS)
        writer.writeheader()
        for subject, age in (("T1", "preterm"), ("T2", "term")):
            for output, scores in (("mask", dice), ("dseg", label_map or {})):
                for s, v in scores.items():
                    writer.writerow({"subject": subject, "session": "1", "scan_age": 35 if age == "preterm" else 40,
                                     "age_group": age, "output": output, "structure": s, "dice": v, "hd95": 1.0,
                                     "hd100": 2.0, "vol_diff_ml": 0.0, "vol_true_ml": 1.0, "missed": False,
                                     "truth_empty": False})
    if registration is not None:
        (run / "atlas.json").write_text(json.dumps({"seconds": registration}))


def report(out, profile=PROFILE, invocations=()) -> str:
    grid = plan(profile)
    meta = {"profile": profile.name, "grid": profile.grid, "anatomy": profile.cohort_anatomy,
            "invocations": list(invocations), "profile_settings": dataclasses.asdict(profile)}
    write_report(out, collect_results(out, grid), meta, [r.name for r in grid])
    return (out / "REPORT.md").read_text()


def test_a_report_is_written_for_no_run_and_for_the_reference_alone(tmp_path):
    text = report(tmp_path)  # nothing finished yet
    assert "No finished runs yet" in text and "Not (yet) run: 67 run(s)" in text
    stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 1.0, 0), REFERENCE)  # --only f100
    text = report(tmp_path)
    assert "Not (yet) run: 66 run(s)" in text and "*Supervised U-Net, 100 % fully labelled (reference)*" not in text
    assert "| unet | supervised, 100 % | bce |" in text and "## Figure 4" not in text
    assert not (tmp_path / "figure4.png").exists()


def test_the_machine_is_named_where_recorded_and_said_missing_where_not(tmp_path):
    assert "- Machine and wall time: not recorded in this folder's `experiment.json`." in report(tmp_path)
    machine = {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu", "python": "3.11.7", "system": "Linux"}
    text = report(tmp_path, invocations=[{"seconds": 90.0, "workers": 2, "threads": 1, "device": "cpu",
                                          "machine": machine}])
    assert "- Machine: AMD EPYC, 2 cores, no GPU; torch 2.13.0+cpu" in text and "not recorded" not in text
    assert "- Wall time: **1.5 min** in 1 invocation(s)" in text


def test_per_draw_tables_show_each_draw_and_the_worst(tmp_path):
    stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 1.0, 0), REFERENCE)
    for d, dgm in enumerate((0.78, 0.40, 0.76)):
        stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 0.02, d), {"dgm": 0.05, "wm": 0.8, "cgm": 0.8})
        stand_in(tmp_path, RunSpec("unet", "partial", "labelset", 0.02, d, self_training=True),
                 {"dgm": dgm, "wm": 0.88, "cgm": 0.89})
    text = report(tmp_path)
    rows = [r for r in collect_results(tmp_path, plan(PROFILE))]
    from neoseg.reproduce.results import parse_row
    rows = [parse_row(r) for r in rows]
    table = per_draw_table(rows, 0.02, [SUPERVISED, LABELSET_ST])
    assert "| Label-set loss + self-training | 0 | 0.780 | 0.880 | 0.890 | 0.780 |" in table
    assert "| | **worst** | 0.400 (d1) | 0.880 (d0) |" in table
    assert table.splitlines()[-1].startswith("| *100 % model (reference)* | 0 | 0.800 | 0.900 | 0.900 |")
    t = target_row(rows, LABELSET_ST, 0.02)
    assert t["draws"] == 3
    assert t["mean"][0] == pytest.approx((0.78 + 0.40 + 0.76) / 3 / 0.80)  # preterm DGM, mean of the draws
    assert t["worst"][0] == pytest.approx(0.40 / 0.80) and t["worst"][1] == pytest.approx(0.88 / 0.90)
    assert t["gains"] == pytest.approx([0.35, 0.35])  # the worst draw's DGM over its own supervised run
    assert t["met"] is False  # 0.5x in the worst draw
    assert "## Per draw: U-Net, 2 % fully labelled" in text and "0.81 / 0.50" in text


def test_the_target_needs_the_mean_the_worst_draw_and_the_gain_in_every_draw(tmp_path):
    stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 1.0, 0), REFERENCE)
    iuc = RunSpec("unet", "partial", "iuc", 0.02, 0)
    for d, dgm in enumerate((0.79, 0.78)):
        stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 0.02, d), {"dgm": 0.70 if d else 0.0, "wm": 0.8,
                                                                            "cgm": 0.8})
        stand_in(tmp_path, dataclasses.replace(iuc, draw=d, atlas="propagate"), {"dgm": dgm, "wm": 0.88, "cgm": 0.88})
    from neoseg.reproduce.results import parse_row
    rows = [parse_row(r) for r in collect_results(tmp_path, plan(PROFILE))]
    row = ("Atlas propagation + IUC", "partial", "iuc+atlas-propagate", "mean", 1)
    t = target_row(rows, row, 0.02)
    assert min(t["mean"]) >= 0.95 and min(t["worst"]) >= 0.85
    assert t["gains"] == pytest.approx([0.08, 0.08]) and t["met"] is False  # draw 1: only 0.08 over supervised
    assert t["misses"] == ["preterm DGM gain +0.080", "term DGM gain +0.080"]
    assert target_row(rows, row, 0.02, planned=3)["met"] is None  # 2 of 3 draws: no worst draw yet
    line = next(x for x in report(tmp_path).splitlines() if x.startswith("| 2 % | Atlas propagation + IUC | 2 |"))
    assert line.endswith("| – |")


def test_runs_cut_by_the_cap_while_improving_are_flagged(tmp_path):
    stand_in(tmp_path, RunSpec("unet", "partial", "iuc", 0.02, 0), REFERENCE, stopped_by="epoch cap",
             best=(1, 0, 0, 0, 1))  # a new best in its last 2 epochs (half the patience of 4)
    stand_in(tmp_path, RunSpec("unet", "partial", "iuc", 0.02, 1), REFERENCE, stopped_by="epoch cap",
             best=(1, 1, 0, 0, 0))  # at the cap, but flat for 3 epochs
    stand_in(tmp_path, RunSpec("unet", "partial", "iuc", 0.02, 2), REFERENCE, best=(1, 0, 0, 0, 1))
    flags = {r["run"]: r["still_improving"] for r in finished_records(tmp_path)}
    assert flags == {"unet-partial-iuc-f002-d0": True, "unet-partial-iuc-f002-d1": False,
                     "unet-partial-iuc-f002-d2": False}
    text = report(tmp_path)
    assert "| 1 early stopping, 2 epoch cap | **1** |" in text
    assert "Cut by a cap while still improving (1)" in text and "`unet-partial-iuc-f002-d0` (5 epochs" in text
    # a metrics.csv written before the ``best`` column: the validation loss decides
    run = tmp_path / "runs" / "unet-partial-iuc-f002-d1"
    (run / "metrics.csv").write_text("epoch,val_loss\n1,0.5\n2,0.4\n3,0.45\n4,0.39\n")
    assert {r["run"]: r["still_improving"] for r in finished_records(tmp_path)}["unet-partial-iuc-f002-d1"]


def test_a_recipe_time_counts_its_draws_the_run_it_starts_from_and_registration(tmp_path):
    iuc = RunSpec("unet", "partial", "iuc", 0.02, 0)
    stand_in(tmp_path, iuc, REFERENCE, seconds=600)
    stand_in(tmp_path, RunSpec("unet", "partial", "labelset", 0.02, 0, self_training=True, from_iuc=True),
             REFERENCE, seconds=300)
    for d in (0, 1):
        stand_in(tmp_path, dataclasses.replace(iuc, draw=d, atlas="pairs"), REFERENCE, seconds=120, registration=60)
    text = report(tmp_path)
    assert "| 2 % | unet | partial | iuc | 1 | 0.0 | 10.0 | 10.0 |" in text
    assert "| 2 % | unet | partial | labelset+st+from-iuc | 1 | 0.0 | 15.0 | 15.0 |" in text  # with its IUC run
    assert "| 2 % | unet | partial | iuc+atlas-pairs | 2 | 2.0 | 6.0 | 3.0 |" in text


def test_a_fusion_run_is_its_trained_run_evaluated_again(tmp_path):
    trained = RunSpec("unet", "partial", "iuc", 0.02, 0, atlas="pairs")
    fused = dataclasses.replace(trained, fusion=("regular",))
    assert fused.name == "unet-partial-iuc-atlas-pairs-fusion-f002-d0" and fused.needs == (trained.name,)
    assert dataclasses.replace(trained, fusion=("regular", "flexible")).recipe == \
        "iuc+atlas-pairs+fusion-regular-flexible"
    stand_in(tmp_path, trained, REFERENCE, seconds=120, registration=60, stopped_by="epoch cap", best=(0, 0, 0, 1, 1))
    stand_in(tmp_path, fused, {"dgm": 0.78, "wm": 0.9, "cgm": 0.9}, seconds=30, stopped_by="epoch cap")
    (tmp_path / "runs" / fused.name / "metrics.csv").unlink()  # a fusion run trains nothing
    records = {r["run"]: r for r in finished_records(tmp_path)}
    assert records[fused.name]["still_improving"] and records[fused.name]["needs"] == [trained.name]
    assert spec_of(json.loads((tmp_path / "runs" / fused.name / "done.json").read_text())) == fused  # tuples again
    text = report(tmp_path)
    assert "| 2 % | unet | partial | iuc+atlas-pairs+fusion | 1 | 1.0 | 3.5 | 3.5 |" in text  # with its trained run
    assert "Atlas-to-scan pairs + IUC, atlas fusion at inference" in text
    assert "How the runs ended: 1 by epoch cap (not counting the evaluation runs" in text
    assert f"`{fused.name}`" not in text.split("Cut by a cap while still improving")[1].split("\n\n")[0]


def test_an_ensemble_row_evaluates_its_members_and_counts_their_time(tmp_path):
    members = [RunSpec("unet", "partial", "iuc", 0.02, 0, atlas="pairs", seed=s) for s in range(3)]
    ensemble = dataclasses.replace(members[0], members=3, fusion=("regular",))
    assert ensemble.needs == tuple(m.name for m in members) and ensemble.evaluates and not members[1].evaluates
    assert members[2].name == "unet-partial-iuc-atlas-pairs-seed2-f002-d0"
    assert ensemble.recipe == "iuc+atlas-pairs+ens3+fusion"
    assert [r.name for r in select(plan(PROFILE), "ens3-fusion-f002-d1")] == [
        m.name.replace("-d0", "-d1") for m in members] + [ensemble.name.replace("-d0", "-d1")]
    for i, m in enumerate(members):  # the last member was cut by its cap while improving; one set of registrations
        cut = i == 2
        stand_in(tmp_path, m, REFERENCE, seconds=60, registration=60, stopped_by="epoch cap" if cut else "early stopping",
                 best=(0, 0, 0, 1, 1) if cut else (1, 1, 0, 0, 0))
    stand_in(tmp_path, ensemble, REFERENCE, seconds=30)
    (tmp_path / "runs" / ensemble.name / "metrics.csv").unlink()
    done = tmp_path / "runs" / members[1].name / "done.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "trained_by": "by hand"}))
    records = {r["run"]: r for r in finished_records(tmp_path)}
    assert records[ensemble.name]["still_improving"] and records[ensemble.name]["evaluates"]
    assert spec_of(json.loads((tmp_path / "runs" / ensemble.name / "done.json").read_text())) == ensemble
    text = report(tmp_path)
    assert "| 2 % | unet | partial | iuc+atlas-pairs+ens3+fusion | 1 | 1.0 | 4.5 | 4.5 |" in text  # with its 3 members
    assert "Atlas-to-scan pairs + IUC, 3 seeds averaged, atlas fusion at inference" in text
    assert f"Trained outside this runner and copied into the folder (1; by hand): `{members[1].name}`." in text


def test_the_atlas_grid_keeps_the_names_of_runs_already_measured():
    runs = plan(PROFILE)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 1 + 22 * 3
    headline = {r.name for r in plan(dataclasses.replace(PROFILE, grid="headline"))}
    for old in ("unet-supervised-bce-f100-d0", "unet-supervised-bce-f002-d2", "unet-partial-iuc-f002-d1",
                "unet-partial-labelset-st-f002-d0"):
        assert old in names and old in headline
    assert {n.split("-f002")[0] for n in names if "-f002-d0" in n} == {
        "unet-supervised-bce", "unet-partial-iuc", "unet-partial-labelset-st", "unet-partial-labelset-st-from-iuc",
        "unet-partial-iuc-share25-aug", "unet-partial-iuc-atlas-propagate", "unet-partial-iuc-st-atlas-propagate",
        "unet-partial-iuc-child-atlas-propagate", "unet-partial-iuc-atlas-propagate-conf80",
        "unet-partial-iuc-atlas-propagate-conf90", "unet-partial-iuc-atlas-propagate-warps-regular-flexible",
        "unet-partial-iuc-atlas-propagate-wema", "unet-partial-iuc-atlas-propagate-warps-regular-flexible-wema",
        "unet-partial-iuc-atlas-pairs", "unet-partial-iuc-atlas-both",
        "unet-partial-iuc-atlas-both-share25-aug", "unet-partial-iuc-atlas-propagate-fusion",
        "unet-partial-iuc-atlas-pairs-fusion", "unet-partial-iuc-atlas-pairs-seed1",
        "unet-partial-iuc-atlas-pairs-seed2",
        "unet-partial-iuc-atlas-pairs-ens3", "unet-partial-iuc-atlas-pairs-ens3-fusion"}
    assert all(names.index(n) < names.index(r.name) for r in runs for n in r.needs)
    from neoseg.reproduce.stats import BEYOND, IUC
    rows = {row[2] for row in [SUPERVISED, IUC] + BEYOND}
    # every recipe of the grid has a row in the report's tables; an ensemble's members are reported through it
    assert {r.recipe for r in runs if not r.seed} <= rows


def test_only_selects_by_any_text_and_adds_the_runs_started_from():
    runs = plan(PROFILE)
    chosen = [r.name for r in select(runs, "from-iuc-f002-d1")]
    assert chosen == ["unet-partial-iuc-f002-d1", "unet-partial-labelset-st-from-iuc-f002-d1"]
    assert [r.name for r in select(runs, "f100,atlas-pairs-f002-d0")] == ["unet-supervised-bce-f100-d0",
                                                                           "unet-partial-iuc-atlas-pairs-f002-d0"]
    with pytest.raises(ValueError, match="matches no run"):
        select(runs, "f050")


def test_run_configs_map_the_levers_only_where_set(tmp_path):
    from neoseg.reproduce.training import run_config
    from neoseg.train.config import TrainConfig

    plain = run_config(RunSpec("unet", "partial", "iuc", 0.02, 0), PROFILE, tmp_path, tmp_path, "cpu")
    assert plain.augment == "none" and plain.init_from is None  # the paper's rows: no augmentation
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for spec in (RunSpec("unet", "partial", "iuc", 0.02, 0, full_share=0.25, augment="standard"),
                 RunSpec("unet", "partial", "iuc", 0.02, 0, atlas="both"),
                 RunSpec("unet", "partial", "iuc", 0.02, 0, atlas="propagate", atlas_confidence=0.9,
                         atlas_warps=("regular", "flexible"), weight_ema=0.995)):
        wanted = {k: getattr(spec, k) for k in ("atlas", "atlas_confidence", "atlas_warps", "weight_ema", "full_share")
                  if getattr(spec, k) not in ("none", 0.0, None, ())}
        wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in wanted.items()}
        if wanted.keys() <= fields:
            config = run_config(spec, PROFILE, tmp_path, tmp_path, "cpu")
            assert all(getattr(config, k) == v for k, v in wanted.items()) and config.augment == spec.augment
        else:  # a neoseg-train without the lever: a clear error, not a run without it
            with pytest.raises(ValueError, match=f"needs neoseg-train's {'|'.join(wanted.keys() - fields)}"):
                run_config(spec, PROFILE, tmp_path, tmp_path, "cpu")


def test_one_folder_holds_one_anatomy(tmp_path):
    v1 = dataclasses.replace(PROFILE, cohort_anatomy="v1")
    meta = metadata.load(tmp_path, v1)
    meta["data"] = str(tmp_path / "cohort")
    metadata.save(tmp_path, meta)
    with pytest.raises(ValueError, match="anatomy v1, not v2; pass --anatomy v1, or another --out"):
        metadata.load(tmp_path, PROFILE)
    del meta["anatomy"]  # a folder made before the anatomy was recorded, and before anatomy v2
    metadata.save(tmp_path, meta)
    with pytest.raises(ValueError, match="anatomy v1"):
        metadata.load(tmp_path, PROFILE)
    assert metadata.load(tmp_path, PROFILE, builtin_cohort=False)["profile"] == "equal-epochs"  # --data: no check


@pytest.mark.parametrize("args, message", [
    (["--fractions", "0.02,1"], "--fractions takes distinct"),
    (["--anatomy", "v2", "--data", "."], "--anatomy chooses the built-in cohort"),
    (["--grid", "atlas", "--only", "f050"], "matches no run"),
    (["--grid", "atlas", "--adopt", "no-such-folder"], "--adopt no-such-folder: no results.csv there"),
])
def test_command_line_refuses_bad_subsets_in_one_line(tmp_path, args, message):
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["--out", str(out), "--device", "cpu", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()  # nothing written


def adopt_into(out, source):
    grid = [r.name for r in plan(PROFILE)]
    rows, records = adoption.read_source(source, grid, PROFILE, "v2")
    return adoption.save(out, source, rows, records)


def test_runs_adopted_from_an_earlier_experiment_join_the_report_and_are_compared(tmp_path):
    earlier, here = tmp_path / "earlier", tmp_path / "here"
    iuc = RunSpec("unet", "partial", "iuc", 0.02, 0)
    stand_in(earlier, RunSpec("unet", "supervised", "bce", 1.0, 0), REFERENCE, seconds=600)
    stand_in(earlier, iuc, {"dgm": 0.5, "wm": 0.9, "cgm": 0.9}, seconds=300)
    report(earlier)  # its report folder: REPORT.md, results.csv and the run records, runs.json
    shutil.rmtree(earlier / "runs")  # weights and run folders gone: a committed report's folder
    assert adopt_into(here, earlier) == adopt_into(here, earlier) == [iuc.name, "unet-supervised-bce-f100-d0"]
    assert adoption.sources(here) == [{"from": str(earlier), "runs": 2, "records": 2}]  # adopted again: replaced
    text = report(here)
    assert "Runs finished: 2 of 67 planned" in text and "| 2 % | unet | partial | iuc | 1 | 0.0 | 5.0 | 5.0 |" in text
    assert "2 run(s) finished in an earlier experiment" in text and "2 of them with their run records" in text
    assert "Not yet compared with a run of this folder." in text
    other = tmp_path / "other"  # a report folder without its run records: no times, and the report says so
    (earlier / "runs.json").unlink()
    adopt_into(other, earlier)
    text = report(other)
    assert "0 of them with their run records" in text and "No run records here" in text
    assert "How the runs ended: not recorded (no run records)." in text
    # the same run trained here again: compared row by row, this folder's rows count
    stand_in(here, iuc, {"dgm": 0.5, "wm": 0.9, "cgm": 0.9}, seconds=100)
    text = report(here)
    assert f"compared row by row: `{iuc.name}`, largest Dice difference 0.0000 (identical)." in text
    assert "| 2 % | unet | partial | iuc | 1 | 0.0 | 1.7 | 1.7 |" in text  # its own record, not the adopted one
    shutil.rmtree(here / "runs" / iuc.name)
    stand_in(here, iuc, {"dgm": 0.6, "wm": 0.9, "cgm": 0.9})
    assert "largest Dice difference 0.1000: **the code has changed since" in report(here)
    with (here / "results.csv").open() as f:
        assert {r["run"] for r in csv.DictReader(f)} == {iuc.name, "unet-supervised-bce-f100-d0"}
    # measured on other data (another cohort's true volumes): left out, and said so
    evaluation = here / "runs" / iuc.name / "evaluation.csv"
    evaluation.write_text(evaluation.read_text().replace(",1.0,False", ",2.0,False"))
    text = report(here)
    assert "**left out of every table**" in text and "Runs finished: 1 of 67 planned" in text
    with pytest.raises(ValueError, match="measured on other data"):
        adoption.refuse_other_data(collect_results(here, plan(PROFILE)), adoption.adopted_rows(here), earlier)


def test_adoption_refuses_what_is_not_an_earlier_run_of_this_grid(tmp_path):
    with pytest.raises(ValueError, match="no results.csv there"):
        adopt_into(tmp_path / "here", tmp_path)
    earlier = tmp_path / "earlier"
    stand_in(earlier, RunSpec("unet", "partial", "huc", 0.02, 0), REFERENCE)  # a run of the full grid only
    collect_results(earlier, [RunSpec("unet", "partial", "huc", 0.02, 0)])
    with pytest.raises(ValueError, match=r"1 of its runs are not in this grid \(e.g. unet-partial-huc-f002-d0\)"):
        adopt_into(tmp_path / "here", earlier)
    shutil.rmtree(earlier)
    stand_in(earlier, RunSpec("unet", "partial", "iuc", 0.02, 0), REFERENCE)
    report(earlier)
    (earlier / "experiment.json").write_text(json.dumps({"profile": "equal-epochs", "anatomy": "v1"}))
    with pytest.raises(ValueError, match="anatomy v1, not equal-epochs, v2; adopt from an experiment on the same"):
        adopt_into(tmp_path / "here", earlier)
    assert not (tmp_path / "here").exists()


def test_an_adopted_run_another_run_starts_from_is_trained_again():
    grid = select(plan(PROFILE), "labelset-st-from-iuc-f002-d0")
    iuc, from_iuc = (r.name for r in grid)
    assert [r.name for r in adoption.to_train(grid, set(), {iuc})] == [iuc, from_iuc]  # its weights are needed
    assert adoption.to_train(grid, set(), {iuc, from_iuc}) == []
    assert [r.name for r in adoption.to_train(grid, {iuc}, {from_iuc})] == []


def test_results_written_before_the_label_map_was_scored_are_adopted_as_masks(tmp_path):
    earlier = tmp_path / "earlier"
    stand_in(earlier, RunSpec("unet", "partial", "iuc", 0.02, 0), REFERENCE)
    collect_results(earlier, plan(PROFILE))
    text = (earlier / "results.csv").read_text().splitlines()
    columns = text[0].split(",")
    drop = [columns.index(c) for c in ("select", "output")]
    (earlier / "results.csv").write_text("\n".join(",".join(v for i, v in enumerate(line.split(",")) if i not in drop)
                                                   for line in text) + "\n")
    assert adopt_into(tmp_path / "here", earlier) == ["unet-partial-iuc-f002-d0"]
    rows = adoption.adopted_rows(tmp_path / "here")
    assert {(r["output"], r["select"]) for r in rows} == {("mask", "val-loss")}


def test_the_built_in_cohort_is_named_by_its_place_in_the_folder_not_the_machines_path(tmp_path):
    grid = plan(PROFILE)
    meta = {"profile": PROFILE.name, "grid": PROFILE.grid, "invocations": [], "data": str(tmp_path / "cohort"),
            "profile_settings": dataclasses.asdict(PROFILE)}
    write_report(tmp_path, collect_results(tmp_path, grid), meta, [r.name for r in grid])
    assert "- Data: the experiment folder's cohort/ (" in (tmp_path / "REPORT.md").read_text()
    meta["data"] = "/data/dhcp"  # a dataset of the user's: its own path
    write_report(tmp_path, collect_results(tmp_path, grid), meta, [r.name for r in grid])
    assert "- Data: /data/dhcp (" in (tmp_path / "REPORT.md").read_text()


def test_experiment_json_names_the_built_in_cohort_by_its_place_in_the_folder(tmp_path):
    meta = {"profile": PROFILE.name, "invocations": []}
    metadata.describe(tmp_path, meta, PROFILE, tmp_path / "cohort", 52)
    assert meta["data"] == "cohort" and metadata.builtin_data(tmp_path, meta)
    metadata.describe(tmp_path, meta, PROFILE, tmp_path / "elsewhere", 52)
    assert meta["data"] == str((tmp_path / "elsewhere").resolve()) and not metadata.builtin_data(tmp_path, meta)
    # a folder from before the anatomy was recorded, whose file names the cohort either way, is v1's
    for data in ("cohort", str(tmp_path / "cohort")):
        (tmp_path / "experiment.json").write_text(json.dumps({"profile": PROFILE.name, "invocations": [], "data": data}))
        with pytest.raises(ValueError, match="anatomy v1"):
            metadata.load(tmp_path, dataclasses.replace(PROFILE, cohort_anatomy="v2"))


def test_the_label_map_users_read_gets_its_own_significance_table(tmp_path):
    """The masks tie; on the label map IUC is better: the label map's section says so with its p-values."""
    for draw in range(3):
        for kind, loss, gain in (("supervised", "bce", 0.0), ("partial", "iuc", 0.3)):
            label_map = {s: 0.5 + gain + 0.01 * draw for s in ("dgm", "wm", "cgm")}
            stand_in(tmp_path, RunSpec("unet", kind, loss, 0.02, draw), {s: 0.6 + 0.01 * draw for s in label_map},
                     label_map=label_map)
    text = report(tmp_path)
    label_map = text.split("## The label map users read (`_dseg`)")[1].split("\n## ")[0]
    assert "### Significance on the label map" in label_map
    assert "| Ours: IUC | 0.810 ± 0.010* |" in label_map  # the label map's Dice, not the masks' 0.610
    iuc_vs_supervised = next(line for line in label_map.splitlines() if line.startswith("| 2 % | IUC vs supervised"))
    assert iuc_vs_supervised.count("(+0.300)") == 6 and "**" in iuc_vs_supervised
    masks_significance = text.split("## Significance (U-Net)")[1].split("\n## ")[0]
    assert "(+0.000)" in masks_significance and "(+0.300)" not in masks_significance


def test_the_target_is_checked_on_the_label_map_as_well(tmp_path):
    """The masks meet the target, the label map's DGM does not: each table gives its own verdict."""
    stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 1.0, 0), REFERENCE, label_map=REFERENCE)
    propagate = RunSpec("unet", "partial", "iuc", 0.02, 0, atlas="propagate")
    for d in range(3):
        stand_in(tmp_path, RunSpec("unet", "supervised", "bce", 0.02, d), {"dgm": 0.0, "wm": 0.8, "cgm": 0.8},
                 label_map={"dgm": 0.0, "wm": 0.8, "cgm": 0.8})
        stand_in(tmp_path, dataclasses.replace(propagate, draw=d), {"dgm": 0.79, "wm": 0.89, "cgm": 0.89},
                 label_map={"dgm": 0.60, "wm": 0.89, "cgm": 0.89})
    text = report(tmp_path)
    masks, label_map = text.split("## The label map users read (`_dseg`)")
    verdict = "| 2 % | Atlas propagation + IUC | 3 | "
    assert next(x for x in masks.splitlines() if x.startswith(verdict)).endswith("| **yes** |")
    line = next(x for x in label_map.split("### Beyond the paper on the label map")[1].splitlines()
                 if x.startswith(verdict))
    assert line.startswith(verdict + "0.75 / 0.75 |")
    assert line.endswith("| +0.60, +0.60 | no: preterm DGM 0.750, term DGM 0.750, 2 more |")  # what fails, and by how much
