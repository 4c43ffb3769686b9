"""The training-side commands, driven as a user would (Typer's CliRunner)."""

import json

import pytest
from typer.testing import CliRunner

from neoseg.cli.evaluate import app as eval_app
from neoseg.cli.train import app as train_app

runner = CliRunner()
TINY = ["--slice-size", "32", "--widths", "8,16", "--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu"]


def test_train_then_eval_from_the_command_line(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(train_app, ["--out", str(out), "--data", str(tiny_dataset), *TINY])
    assert result.exit_code == 0, result.output
    assert "Test evaluation" in result.output and "cgm" in result.output
    config = json.loads((out / "config.json").read_text())
    # the default with one fully labelled subject of four (--full-fraction 0.1): three pairs models as one
    assert (config["members"], config["atlas"]) == (3, "pairs")
    assert "--atlas run` scores the test scans" in result.output
    assert f"neoseg-export {out} -o model.onnx" in result.output  # the run's folder names every member
    assert result.output.count("best epoch 1 by val-loss") == 3  # each member's training
    # the numbers printed are the ones written
    table = (out / "ensemble-evaluation.md").read_text()
    assert table.split("\n\n", 2)[2].strip() in result.output

    csv_out = tmp_path / "eval.csv"
    result = runner.invoke(eval_app, [str(out), "--out", str(csv_out), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert csv_out.read_text().startswith("subject,session,scan_age,age_group,output,structure,dice")
    assert "of the label map (`_dseg`" in result.output and "of the per-structure masks" in result.output
    # the same checkpoints on the same test subjects give the same table as at the end of training
    assert result.output.strip() in table
    # an existing output is never overwritten unasked
    result = runner.invoke(eval_app, [str(out), "--out", str(csv_out), "--device", "cpu", "-q"])
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output
    # an output where nothing can be written is refused before any work, in one line
    result = runner.invoke(eval_app, [str(out), "--out", str(csv_out / "eval.csv"), "--device", "cpu", "-q"])
    assert result.exit_code == 2 and f"cannot write in {csv_out} (" in result.output
    assert "Traceback" not in result.output and "Test evaluation" not in result.output


def test_user_errors_are_one_line_with_nonzero_exit(tiny_dataset, tmp_path):
    result = runner.invoke(train_app, ["--out", str(tmp_path / "r"), "--data", str(tmp_path), *TINY])
    assert result.exit_code == 2
    assert "neoseg-train: error: no sessions" in result.output and "Traceback" not in result.output
    result = runner.invoke(train_app, ["--out", str(tmp_path / "r2"), "--data", str(tiny_dataset), *TINY,
                                       "--widths", "8,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
    result = runner.invoke(train_app, ["--out", str(tmp_path / "r3"), "--data", str(tiny_dataset), *TINY,
                                       "--hierarchy", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(train_app, ["--out", str(tmp_path / "r4"), "--data", str(tiny_dataset), *TINY,
                                       "--loss", "dice"])
    assert result.exit_code == 2 and "dice" in result.output
    (tmp_path / "file").write_text("")  # --out under a file: nothing can be written there
    result = runner.invoke(train_app, ["--out", str(tmp_path / "file" / "run"), "--data", str(tiny_dataset), *TINY])
    assert result.exit_code == 2 and f"cannot write in {tmp_path / 'file'}" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_refused_permission_is_one_line_naming_the_path_and_the_fix():
    from neoseg.cli.common import user_message

    message = user_message(PermissionError(13, "Permission denied", "/data/runs/demo"))
    assert message == "/data/runs/demo: Permission denied; choose a folder you can write to, or fix its permissions"


def test_resume_refuses_options_that_differ_and_takes_auto_as_what_the_run_chose(tmp_path):
    from neoseg.cli.train import check_resume_options
    from neoseg.train.config import TrainConfig

    (tmp_path / "config.json").write_text(TrainConfig(members=3, atlas="pairs", epochs=40).to_json())
    check_resume_options(tmp_path, TrainConfig(members="auto", atlas="auto", epochs=40), ["members", "atlas", "epochs"])
    with pytest.raises(ValueError, match=r"differ: --members 2 \(the run has 3\), --atlas none \(the run has pairs\);"):
        check_resume_options(tmp_path, TrainConfig(members=2, atlas="none"), ["members", "atlas"])


def test_a_run_stores_its_paths_absolute_and_resume_knows_them_however_written(tiny_dataset, tmp_path, monkeypatch):
    """A run trained with relative paths must work from any folder (export, evaluation, --resume)."""
    import json
    import shutil

    from neoseg.cli.train import check_resume_options
    from neoseg.core.hierarchy import builtin
    from neoseg.train.config import TrainConfig

    shutil.copytree(tiny_dataset, tmp_path / "mylab")
    (tmp_path / "mylab.json").write_text(builtin().to_json())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(train_app, ["--data", "mylab", "--hierarchy", "mylab.json", "--cache", "c", "--show-config"])
    shown = json.loads(result.output)
    assert (shown["data"], shown["hierarchy"], shown["cache"]) == tuple(str(tmp_path / n) for n in ("mylab", "mylab.json", "c"))
    result = runner.invoke(train_app, ["--hierarchy", "dhcp-drawem9", "--show-config"])
    assert json.loads(result.output)["hierarchy"] == "dhcp-drawem9"  # a built-in name stays a name
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(TrainConfig(data=str(tmp_path / "mylab")).to_json())
    check_resume_options(tmp_path / "run", TrainConfig(data="mylab"), ["data"])  # the same folder, written relative
    check_resume_options(tmp_path / "run", TrainConfig(data="./mylab/../mylab"), ["data"])
    with pytest.raises(ValueError, match=r"differ: --data other \(the run has "):
        check_resume_options(tmp_path / "run", TrainConfig(data="other"), ["data"])


def test_evaluation_reads_the_split_with_the_models_hierarchy_not_its_training_file(tiny_dataset, tmp_path, monkeypatch):
    """An older run may name its --hierarchy file relative to a folder it was trained in."""
    from neoseg.cli.evaluate import _sessions
    from neoseg.core.hierarchy import builtin
    from neoseg.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data=str(tiny_dataset), hierarchy="mylab.json")  # no such file here
    with pytest.raises(ValueError, match="mylab.json"):
        _sessions(config, None, "all", None)
    assert len(_sessions(config, None, "all", builtin())) == 6
    assert {s.subject for s in _sessions(config, None, "test", builtin())} <= {f"T{i:02d}" for i in range(6)}


def test_beyond_the_paper_options_from_the_command_line(tiny_dataset, tmp_path):
    import json

    out = tmp_path / "run"
    result = runner.invoke(train_app, ["--out", str(out), "--data", str(tiny_dataset), *TINY, "--loss", "labelset",
                                       "--dice-weight", "0.5", "--self-training", "--self-train-after", "0",
                                       "--confidence", "0.8", "--select", "child-dice"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["loss"], config["dice_weight"], config["self_training"], config["self_train_after"],
            config["confidence"], config["select"]) == ("labelset", 0.5, True, 0, 0.8, "child-dice")
    result = runner.invoke(train_app, ["--out", str(tmp_path / "r"), "--data", str(tiny_dataset), *TINY,
                                       "--loss", "bce", "--self-training"])
    assert result.exit_code == 2 and "bce has none" in result.output and "Traceback" not in result.output


def test_show_config_prints_the_resolved_profile_and_trains_nothing(tmp_path):
    import json

    from neoseg.train.config import TrainConfig

    result = runner.invoke(train_app, ["--profile", "paper", "--epochs", "7", "--show-config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown == json.loads(TrainConfig.profile("paper", epochs=7).to_json())
    assert shown["augment"] == "none" and shown["cohort_subjects"] == 250 and shown["epochs"] == 7
    result = runner.invoke(train_app, ["--out", str(tmp_path / "r"), "--show-config"])
    assert result.exit_code == 0 and json.loads(result.output)["epochs"] == 40 and not (tmp_path / "r").exists()
    # the help states each profile's default
    result = runner.invoke(train_app, ["--help"])
    assert "Default: cpu 40, paper 200." in " ".join(result.output.split())
    result = runner.invoke(train_app, [])
    assert result.exit_code == 2 and "missing -o/--out" in result.output


def test_training_without_data_says_it_uses_the_built_in_cohort(tmp_path, monkeypatch, caplog):
    import logging

    from neoseg.train import loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop here")))
    with caplog.at_level(logging.INFO, logger="neoseg.train"):
        result = runner.invoke(train_app, ["--out", str(tmp_path / "r"), *TINY])
    assert result.exit_code == 2 and "stop here" in result.output
    assert "no --data: training on the built-in synthetic cohort (40 subjects, 64^3" in caplog.text
    caplog.clear()  # a resumed run trains on what its config.json names: no note
    with caplog.at_level(logging.INFO, logger="neoseg.train"):
        runner.invoke(train_app, ["--out", str(tmp_path / "r"), "--resume"])
    assert "no --data" not in caplog.text


def test_every_command_has_one_help_style():
    """Sentence-case help ending with a period on every visible option, on/off options as flags
    (no `<bool>` metavar), and -h beside --help."""
    import importlib

    import typer.main

    for name in ("cli.train", "cli.evaluate", "cli.export", "cli.infer", "cli.synth", "cli.serve", "reproduce.cli"):
        app = importlib.import_module(f"neoseg.{name}").app
        result = runner.invoke(app, ["-h"])
        assert result.exit_code == 0 and "<bool>" not in result.output, name
        for param in typer.main.get_command(app).params:
            text = (getattr(param, "help", None) or "").strip()
            if not getattr(param, "hidden", False) and param.name != "help":
                assert text.endswith("."), (name, param.name)
