"""Reduced-precision CPU inference: precision selection, refusal of what the hardware lacks, the
parity gate, and BF16/FP16 parity of a small trained model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neoseg.cli.infer import app
from neoseg.data.dhcp import find_sessions
from neoseg.export.parity import agreement
from neoseg.runtime import openvino_backend
from neoseg.runtime.backends import BackendUnavailable, open_backend
from neoseg.runtime.pipeline import Segmenter
from neoseg.runtime.precision import PARITY_DICE, ParityRecord, choose

pytest.importorskip("openvino")
NO_REDUCED = (["fp32"], ["FP32", "INT8"])  # what a CPU without INT8/BF16/FP16 units reports


@pytest.fixture(scope="module")
def trained(tiny_dataset, toy_run, tmp_path_factory):
    """``toy_run``'s toy U-Net, trained on 4 scans, exported with verification (so with its parity record)."""
    from neoseg.export.onnx_export import export_onnx, verification_slices
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train import checkpoint
    from neoseg.train.volumes import load_canonical

    sessions = find_sessions(tiny_dataset)
    folder = tmp_path_factory.mktemp("trained")
    loaded = checkpoint.load(toy_run / "best.pt")
    info = info_from_checkpoint(loaded)
    x = verification_slices([load_canonical(s.t2, np.float32)[0] for s in sessions[4:6]], info)
    report = export_onnx(loaded.model, info, folder / "toy.onnx", verify_on=x)
    return folder / "toy.onnx", report, loaded.model, x


@pytest.fixture(scope="module")
def scan(tiny_dataset):
    return find_sessions(tiny_dataset)[5].t2


def with_records(src, dst, records: dict) -> str:
    """A copy of the model ``src`` whose parity record says ``records``."""
    import onnx

    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == "neoseg.reduced_precision":
            prop.value = json.dumps(records)
    onnx.save(proto, str(dst))
    return str(dst)


def record(dice: float) -> dict:
    return {"min_dice": dice, "worst": "dgm", "slices": 8, "measured_with": "test"}


# ---- choosing a precision --------------------------------------------------------------------
def test_auto_uses_reduced_precision_only_where_units_and_parity_allow():
    good, bad = ParityRecord(**record(0.995)), ParityRecord(**record(0.97))
    assert choose(["fp32", "bf16"], {"bf16": good}, "auto", "cpu") == ("bf16", f"bf16 parity {good.describe()} >= 0.99")
    precision, why = choose(["fp32", "bf16"], {"bf16": bad}, "auto", "cpu")
    assert precision == "fp32" and "0.9700" in why and f"< {PARITY_DICE}" in why
    precision, why = choose(["fp32", "bf16"], {}, "auto", "cpu")
    assert precision == "fp32" and "re-export" in why
    precision, why = choose(["fp32", "bf16", "fp16"], {"bf16": bad, "fp16": good}, "auto", "cpu")
    assert precision == "fp16"
    assert choose(["fp32"], {"bf16": good}, "auto", "this CPU") == ("fp32", "this CPU has no INT8/BF16/FP16 units")
    # a precision the hardware runs, but no faster than FP32, is left to an explicit request
    slow = {"fp16": "no AMX-FP16"}
    assert choose(["fp32", "fp16"], {"fp16": good}, "auto", "cpu", slow) == ("fp32", "fp16 not used: no AMX-FP16")
    assert choose(["fp32", "bf16", "fp16"], {"bf16": good, "fp16": good}, "auto", "cpu", slow)[0] == "bf16"
    assert choose(["fp32", "fp16"], {"fp16": good}, "fp16", "cpu", slow)[0] == "fp16"
    # an explicit precision runs, parity or not, where the hardware has it; else a reason
    assert choose(["fp32", "bf16"], {"bf16": bad}, "bf16", "cpu")[0] == "bf16"
    with pytest.raises(ValueError, match="cannot run bf16.*AMX"):
        choose(["fp32"], {}, "bf16", "this CPU")


def test_fp16_is_left_out_of_auto_where_the_cpu_lacks_fp16_matrix_units(monkeypatch):
    monkeypatch.setattr(openvino_backend.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: ["avx512f", "avx512_fp16", "amx_bf16"])
    assert set(openvino_backend.slow_precisions()) == {"fp16"}
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: ["avx512_fp16", "amx_bf16", "amx_fp16"])
    assert openvino_backend.slow_precisions() == {}
    monkeypatch.setattr(openvino_backend.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: [])
    assert openvino_backend.slow_precisions() == {}


def test_explicit_precisions_are_refused_never_downgraded(trained, monkeypatch):
    model = trained[0]
    monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: NO_REDUCED)
    with pytest.raises(BackendUnavailable, match="cannot run bf16 .*BF16 needs AVX-512 BF16 or AMX"):
        open_backend(model, "ov-cpu", precision="bf16")
    with pytest.raises(BackendUnavailable, match="CPUExecutionProvider runs fp32 only, not fp16; .*ov-cpu"):
        open_backend(model, "ort-cpu", precision="fp16")
    with pytest.raises(BackendUnavailable, match="no backend can run .*ov-cpu: .*cannot run bf16.*ort-cpu: "):
        open_backend(model, "auto", precision="bf16")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        open_backend(model, "auto", precision="int4")
    # OpenVINO itself quietly compiles FP32 when BF16 is asked for on a CPU without it: caught
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: (["fp32", "bf16"], ["FP32", "BF16"]))
        with pytest.raises(BackendUnavailable, match="compiled the model in f32, not the requested bf16"):
            open_backend(model, "ov-cpu", precision="bf16")


def test_auto_keeps_fp32_for_a_model_below_the_gate(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: (["fp32", "bf16"], ["FP32", "BF16"]))
    low = with_records(trained[0], tmp_path / "low.onnx", {"bf16": record(0.9), "fp16": record(0.9)})
    backend = open_backend(low, "auto")
    assert backend.precision == "fp32" and "bf16 not used" in backend.note and "0.9000" in backend.note
    unrecorded = with_records(trained[0], tmp_path / "none.onnx", {})
    assert "no bf16 parity record" in open_backend(unrecorded, "ov-cpu").note


# ---- the OpenVINO path ---------------------------------------------------------------------
def test_openvino_fp32_agrees_with_onnxruntime(trained, scan):
    model, _, _, x = trained
    ov_cpu, ort_cpu = open_backend(model, "ov-cpu", precision="fp32"), open_backend(model, "ort-cpu")
    assert ov_cpu.name.startswith("openvino") and ov_cpu.precision == "fp32"
    np.testing.assert_allclose(ov_cpu.run(x[:8]), ort_cpu.run(x[:8]), atol=1e-3)
    img = nib.load(scan)
    a, b = (Segmenter(be).segment(np.asarray(img.dataobj), img.affine, img.header.get_zooms()) for be in (ov_cpu, ort_cpu))
    names = ov_cpu.info.hierarchy.names
    assert min(agreement(a.masks, b.masks, names, axis=-1).values()) >= 0.999


# ---- the parity record of a trained model --------------------------------------------------
def test_export_measures_and_stores_reduced_precision_parity(trained, monkeypatch):
    from neoseg.export.reduced import reduced_parity

    model, report, net, x = trained
    info = open_backend(model, "ort-cpu").info
    stored = info.parity_records
    assert set(stored) == {"bf16", "fp16"} and stored == report.reduced
    assert stored == reduced_parity(net, info, x)  # measured on the verification slices, reproducibly
    for rec in stored.values():
        assert 0 <= rec.min_dice <= 1 and rec.slices == len(x) and "emulated" in rec.measured_with
    assert any("bf16: worst structure" in line for line in report.lines())
    # the gate acts on this trained model's own record, on a CPU with BF16 units
    import openvino as ov

    real_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: (["fp32", "bf16"], ["FP32", "BF16"]))
    if stored["bf16"].passed and real_bf16:
        assert open_backend(model, "ov-cpu").precision == "bf16"
    elif stored["bf16"].passed:
        with pytest.raises(BackendUnavailable, match="compiled the model in f32"):  # chosen, and this CPU lacks it
            open_backend(model, "ov-cpu")
    else:
        backend = open_backend(model, "ov-cpu")
        assert backend.precision == "fp32" and f"{stored['bf16'].min_dice:.4f}" in backend.note


def test_emulation_rounds_like_the_reduced_type(trained):
    from neoseg.export.reduced import emulated

    net, x = trained[2], torch.from_numpy(trained[3][:4])
    with torch.no_grad():
        ref = net.eval()(x)
        for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            emu = emulated(net, precision)
            conv = next(m for m in emu.modules() if isinstance(m, torch.nn.Conv2d))
            assert torch.equal(conv.weight, conv.weight.to(dtype).float())  # weights held in the type
            out = emu(x)
            assert torch.equal(out, out.to(dtype).float())  # so are the logits
            diff = (out - ref).abs().max().item()
            assert 0 < diff < 1.0, (precision, diff)  # rounded, yet close


# ---- neoseg-infer --precision --------------------------------------------------------------
def test_infer_precision_option(trained, scan, tmp_path, monkeypatch):
    model = str(trained[0])
    runner = CliRunner()
    monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: NO_REDUCED)
    result = runner.invoke(app, [str(scan), "-m", model, "-o", str(tmp_path / "a"), "--precision", "bf16"])
    assert result.exit_code == 2 and "cannot run bf16" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists()
    result = runner.invoke(app, [str(scan), "-m", model, "-o", str(tmp_path / "b"), "--backend", "ort-cpu",
                                 "--precision", "fp16"])
    assert result.exit_code == 2 and "runs fp32 only, not fp16" in result.output
    result = runner.invoke(app, [str(scan), "-m", model, "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "backend: openvino" in result.output and "[CPU] fp32" in result.output
    assert "no INT8/BF16/FP16 units" in result.output


def test_without_openvino_auto_runs_onnxruntime_and_ov_cpu_says_why(trained):
    """Where OpenVINO has no wheel it is not installed: the CPU path is ONNX Runtime."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['openvino'] = None; from neoseg.runtime.backends import open_backend; "
            f"print(open_backend({str(trained[0])!r}, 'auto').name); open_backend({str(trained[0])!r}, 'ov-cpu')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("onnxruntime") and "[CPUExecutionProvider] fp32" in done.stdout
    assert done.returncode != 0 and "OpenVINO is not installed: pip install openvino" in done.stderr


# ---- the parity benchmark ------------------------------------------------------------------
def test_parity_benchmark_reports_the_default_path_and_the_gate(trained, toy_run, tiny_dataset):
    """Every CPU path against torch FP32 on held-out volumes, the path neoseg-infer would pick,
    and the parity record that made it pick it."""
    from neoseg.benchmarks import parity

    sessions = find_sessions(tiny_dataset)
    result = parity.run(toy_run / "best.pt", sessions[4:6], verify_on=sessions[:2],
                        calibrate_on=sessions[2:4], log=lambda *_: None)
    worst = {path: min(d.values()) for path, d in result["dice_vs_torch_fp32_worst"].items()}
    default = next(p for p in worst if p.startswith("neoseg-infer default"))
    assert worst["ort-cpu fp32"] >= 0.999 and worst["ov-cpu fp32"] >= 0.999
    records = result["parity_records"]  # as neoseg-export --data stores them: measured on its first 2 scans
    from neoseg.export.onnx_export import verification_slices, verification_volumes
    from neoseg.export.reduced import reduced_parity

    info = open_backend(trained[0], "ort-cpu").info
    x = verification_slices(verification_volumes(None, tiny_dataset, 2), info)
    assert records["fp16"] == vars(reduced_parity(trained[2], info, x)["fp16"])  # FP16: emulated on slices
    for p in ("bf16", "int8"):  # on the 2 whole scans through the runtime, as neoseg-infer runs them
        assert records[p]["scans"] == 2 and "2 whole scans through the runtime" in records[p]["measured_with"]
        assert list(records[p]["scan_keys"]) == [s.key for s in sessions[:2]]
    import openvino as ov

    from neoseg.runtime.precision import int8_unit

    passed = {p for p, r in records.items() if ParityRecord(**r).passed}  # the runtime's rule
    runs = {p for p, here in (("int8", int8_unit(openvino_backend.cpu_flags()) is not None),
                              ("bf16", "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))) if here}
    assert ("ov-cpu bf16" in worst) == ("bf16" in runs) and ("ov-cpu int8" in worst) == ("int8" in runs)
    assert "bf16 emulated (torch)" in worst  # the real path, where there is one, beside its emulation
    usable = passed & runs
    if {"int8", "bf16"} <= usable and len(records["int8"]["kept_fp32"]) > len(records["bf16"]["kept_fp32"]):
        usable.discard("int8")  # its layers kept in FP32 would make it slower than BF16
    assert default.endswith(f"{next((p for p in ('int8', 'bf16') if p in usable), 'fp32')})")
    assert "Parity record stored at export" in parity.markdown(result)
