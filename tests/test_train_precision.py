"""Mixed-precision training (train/precision.py): a BF16 autocast forward with FP32 weights, loss and
checkpoints; refusals before any run folder exists; ``auto``; resume and determinism.

BF16 autocast runs on every CPU (slowly where the CPU has no BF16 units), so these tests train tiny
models for real; what depends on the units is monkeypatched. FP16 trains on CUDA only: its gradient
scaler is tested on the CPU with the resolution monkeypatched (CPU autocast runs FP16 too).
"""

import json
import logging

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neoseg.cli.train import app as train_app
from neoseg.train import checkpoint, loop, precision, recipes
from neoseg.train.config import TrainConfig
from neoseg.train.loop import train

runner = CliRunner()
TINY = ["--slice-size", "32", "--widths", "8,16", "--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu"]


def tiny_config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), slice_size=32, widths=[8, 16], epochs=1, batch_size=8, full_fraction=0.25,
                device="cpu", precision="bf16", steps_per_epoch=3)
    return TrainConfig(**{**base, **kw})


def weights(path):
    return checkpoint.load(path).model.state_dict()


def test_old_configs_load_as_fp32_and_unknown_precisions_are_refused():
    raw = json.loads(TrainConfig(precision="bf16").to_json())
    del raw["precision"]
    assert TrainConfig.from_json(json.dumps(raw)).precision == "fp32"
    assert TrainConfig().precision == "fp32" and TrainConfig.profile("paper").precision == "fp32"
    assert TrainConfig.profile("cpu").precision == "auto"  # the default neoseg-train: BF16 where the CPU has it
    with pytest.raises(ValueError, match="unknown training precision 'int8'"):
        TrainConfig(precision="int8")


def test_auto_is_bf16_exactly_where_the_cpu_has_the_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_precision("auto", cpu) == ("bf16", "auto: this CPU has BF16 units")
    assert precision.resolve_precision("bf16", cpu) == ("bf16", "")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_precision("auto", cpu) == ("fp32", "auto: this CPU has no BF16 units")
    assert precision.resolve_precision("fp32", cpu) == ("fp32", "")
    with pytest.raises(ValueError, match="no BF16 units.*AVX-512 BF16 or AMX.*use --precision fp32"):
        precision.resolve_precision("bf16", cpu)
    with pytest.raises(ValueError, match="CUDA GPUs only.*use --precision fp32"):
        precision.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("asked, units, message", [
    ("bf16", False, "--precision bf16: this CPU has no BF16 units"),
    ("fp16", True, "--precision fp16 trains on CUDA GPUs only"),
])
def test_the_cli_refuses_what_the_device_cannot_run_before_any_run_folder(asked, units, message, tiny_dataset,
                                                                         tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: units)
    monkeypatch.setattr(recipes, "dataset_sessions", None)  # refused before the data (or the built-in cohort) is read
    out = tmp_path / "run"
    result = runner.invoke(train_app, ["--out", str(out), "--data", str(tiny_dataset), *TINY, "--precision", asked])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neoseg-train: error: " + message), result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("units, ran", [(True, "bf16"), (False, "fp32")])
def test_auto_trains_in_what_it_resolved_to_and_records_it(units, ran, tiny_dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: units)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="neoseg.train"):
        result = runner.invoke(train_app, ["--out", str(out), "--data", str(tiny_dataset), *TINY, "--precision", "auto"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["precision"] == "auto"  # the request, for --resume
    assert checkpoint.load(out / "last.pt").state["precision"] == ran == checkpoint.load(out / "best.pt").state["precision"]
    assert f"precision {ran} (auto: this CPU has {'' if units else 'no '}BF16 units)" in caplog.text


def test_bf16_forward_runs_in_bfloat16_while_loss_teacher_and_evaluation_stay_fp32(tiny_dataset, tmp_path,
                                                                                   monkeypatch):
    """Every convolution of the student computes in BF16, in training and validation; the EMA teacher
    (self-training) and the end-of-run test evaluation see FP32; the loss gets FP32 logits. With the
    softmax head and augmentation, as the most involved path."""
    seen = {"student": set(), "other": set(), "loss": set()}
    students = []

    def hooked(*args, **kwargs):
        net = create(*args, **kwargs)
        students.append(net)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(record)
        return net

    def record(module, _inputs, output):
        mine = any(module is m for m in students[0].modules())
        seen["student" if mine else "other"].add(output.dtype)

    def loss_spy(*args, **kwargs):
        fn = make_loss(*args, **kwargs)
        return lambda logits, target: seen["loss"].add(logits.dtype) or fn(logits, target)

    create, make_loss = loop.create_model, loop.make_loss
    monkeypatch.setattr(loop, "create_model", hooked)
    monkeypatch.setattr(loop, "make_loss", loss_spy)
    train(tiny_config(tiny_dataset, loss="labelset", self_training=True, self_train_after=0, augment="standard"),
          tmp_path / "run", progress=False)
    assert seen["student"] == {torch.bfloat16}
    assert seen["other"] == {torch.float32}  # the teacher, a deep copy with the hook (the evaluation's net is unhooked)
    assert seen["loss"] == {torch.float32}


def test_bf16_checkpoints_are_fp32_and_export_as_before(tiny_dataset, tmp_path):
    from neoseg.export.onnx_export import export_onnx
    from neoseg.runtime.backends import OrtBackend
    from neoseg.runtime.model import info_from_checkpoint

    out = tmp_path / "run"
    train(tiny_config(tiny_dataset), out, progress=False)
    for name in ("best.pt", "last.pt"):
        state = torch.load(out / name, weights_only=True)
        floats = [v for v in state["model_state"].values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float32 for v in floats), name
        assert state["precision"] == "bf16"
    optimizer = torch.load(out / "last.pt", weights_only=True)["optimizer_state"]["state"]
    assert all(v.dtype == torch.float32 for s in optimizer.values() for v in s.values() if v.is_floating_point())
    loaded = checkpoint.load(out / "best.pt")
    info = info_from_checkpoint(loaded)
    export_onnx(loaded.model, info, tmp_path / "m.onnx")
    backend = OrtBackend(tmp_path / "m.onnx")
    assert backend.info == info
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = loaded.model(x).numpy()
    np.testing.assert_allclose(backend.run(x.numpy()), expected, atol=1e-3)


def test_bf16_runs_are_deterministic_and_resume_continues_the_same_run(tiny_dataset, tmp_path):
    a = train(tiny_config(tiny_dataset, epochs=2), tmp_path / "a", progress=False)
    b = train(tiny_config(tiny_dataset, epochs=2), tmp_path / "b", progress=False)
    wa, wb = weights(a.out / "last.pt"), weights(b.out / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    out = tmp_path / "resumed"
    train(tiny_config(tiny_dataset, epochs=1), out, progress=False)
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**stored, "epochs": 2}))
    # the stored config rules on --resume: its bf16, not this config's fp32
    train(tiny_config(tiny_dataset, epochs=2, precision="fp32"), out, resume=True, progress=False)
    assert checkpoint.load(out / "last.pt").state["precision"] == "bf16"
    wr = weights(out / "last.pt")
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
    # and bf16 did change the arithmetic: an FP32 run ends elsewhere
    f = train(tiny_config(tiny_dataset, epochs=2, precision="fp32"), tmp_path / "f", progress=False)
    wf = weights(f.out / "last.pt")
    assert not all(torch.equal(wa[k], wf[k]) for k in wa if wa[k].is_floating_point())


def test_fp16_gradient_scaler_state_is_saved_and_restored_on_resume(tiny_dataset, tmp_path, monkeypatch):
    """fp16 trains on CUDA only; here the resolution is stubbed so that its scaler runs on the CPU."""
    monkeypatch.setattr(loop, "resolve_precision", lambda requested, device: ("fp16", ""))
    config = tiny_config(tiny_dataset, epochs=2, precision="fp16", steps_per_epoch=3)
    straight = train(config, tmp_path / "straight", progress=False)
    out = tmp_path / "resumed"
    train(tiny_config(tiny_dataset, epochs=1, precision="fp16", steps_per_epoch=3), out, progress=False)
    first = torch.load(out / "last.pt", weights_only=True)["scaler_state"]
    assert first["scale"] > 0 and first["_growth_tracker"] > 0
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**stored, "epochs": 2}))
    train(config, out, resume=True, progress=False)
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (straight.out, out))
    assert a["scaler_state"] == b["scaler_state"]  # counts the steps of both epochs, as the straight run
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])


@pytest.mark.parametrize("units", [True, False])
def test_the_benchmark_times_bf16_only_where_the_cpu_has_the_units(units, tmp_path, monkeypatch, capsys):
    from neoseg.benchmarks import train_precision as bench

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: units)
    monkeypatch.setattr(bench, "CASES", [("tiny U-Net, 32²", [4, 8], 32, 2)])
    bench.main(["--device", "cpu", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "train_precision.json").read_text())
    assert [r["precision"] for r in results["rows"]] == (["fp32", "bf16"] if units else ["fp32"])
    assert results["rows"][0]["speedup_vs_fp32"] == 1 and all(r["ms_per_step"] > 0 for r in results["rows"])
    assert ("no BF16 units" in results["note"]) != units
    assert (tmp_path / "train_precision.md").read_text() in capsys.readouterr().out
