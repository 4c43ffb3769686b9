"""INT8: quantisation at export (NNCF), its parity record, and when --precision auto/int8 run it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from neoseg.runtime import openvino_backend
from neoseg.runtime.backends import BackendUnavailable, open_backend
from neoseg.runtime.precision import ParityRecord, choose, int8_unit

pytest.importorskip("openvino")
pytest.importorskip("nncf")
VNNI = ["avx2", "avx512f", "avx512_vnni"]  # an AVX-512 VNNI CPU without BF16
REAL_INT8 = int8_unit(openvino_backend.cpu_flags()) is not None


@pytest.fixture(scope="module")
def exported(toy_run, tmp_path_factory):
    """The toy run's model exported by neoseg-export: verified and gated on the run's 2 held-out
    scans, INT8 calibrated on 2 of its training scans."""
    from neoseg.cli.export import app

    folder = tmp_path_factory.mktemp("int8")
    shutil.copy(toy_run / "best.pt", folder / "toy.pt")  # a checkpoint without its run: no split known
    result = CliRunner().invoke(app, [str(toy_run / "best.pt"), "-o", str(folder / "m.onnx"),
                                      "--calibration-scans", "2"])
    assert result.exit_code == 0, result.output
    return folder, result.output


def copy_model(folder, dst, int8_record: dict | None = None):
    """The exported model and its INT8 files in ``dst``; ``int8_record`` replaces the stored one."""
    from neoseg.export.int8 import set_metadata

    dst.mkdir()
    for name in ("m.onnx", "m.int8.xml", "m.int8.bin"):
        shutil.copy(folder / name, dst / name)
    if int8_record is not None:  # the other records are dropped: INT8 is the only reduced one left
        set_metadata(dst / "m.onnx", {"neoseg.reduced_precision": json.dumps({"int8": int8_record})})
    return dst / "m.onnx"


def record(dice: float) -> dict:
    return {"min_dice": dice, "worst": "dgm", "slices": 8, "measured_with": "test"}


def test_export_writes_the_int8_model_and_its_record(exported):
    folder, output = exported
    assert (folder / "m.int8.xml").is_file() and (folder / "m.int8.bin").is_file()
    info = open_backend(folder / "m.onnx", "ort-cpu").info  # ONNX Runtime reads the same metadata
    entry = json.loads(info.int8)
    assert entry["xml"] == "m.int8.xml" and entry["sha256"] == openvino_backend.companion_digest(folder / "m.int8.xml")
    rec = info.parity_records["int8"]
    assert 0 <= rec.min_dice <= 1 and rec.slices > 0 and f"{rec.scans} whole scans" in rec.measured_with
    assert "int8: worst structure" in output and "wrote " in output and "m.int8.xml" in output
    assert not list(folder.glob(".*"))  # no staging folder or temporary file left


def test_the_gates_scans_are_the_runs_held_out_ones_and_never_calibrated_on(exported):
    """BF16 and INT8 are gated on the run's test, then validation session (split.json), INT8
    calibrated on training sessions; the records name them."""
    folder, output = exported
    records = open_backend(folder / "m.onnx", "ort-cpu").info.parity_records
    held_out = ("sub-T05_ses-1", "sub-T04_ses-1")
    for precision in ("bf16", "int8"):
        assert records[precision].scan_keys == held_out and records[precision].scans == 2
        assert records[precision].scans_from.startswith("held out: the test and validation sessions")
    assert records["int8"].calibration_keys == ("sub-T00_ses-1", "sub-T01_ses-1")
    assert "2 scans (training sessions of the run's split (split.json))" in records["int8"].measured_with
    assert "verifying on 2 scans (fewer than --verify-scans 4: no more there), held out: the test" in output


def test_overwrite_removes_the_companions_of_the_replaced_export(exported, tmp_path):
    """An export that writes no INT8 or BF16 model over one that did leaves none of the old ones
    beside the new .onnx (they would outlive the model they were made for); without --overwrite
    even a lone companion is refused."""
    from neoseg.cli.export import app

    folder = tmp_path / "m"
    model = copy_model(exported[0], folder)
    for name in ("m.bf16.xml", "m.bf16.bin"):  # as an export whose plain BF16 missed the gate left them
        (folder / name).write_text("old")
    args = [str(exported[0] / "toy.pt"), "-o", str(model), "--verify-scans", "0"]
    result = CliRunner().invoke(app, args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx"]
    assert "removed m.int8.xml, m.int8.bin, m.bf16.xml, m.bf16.bin" in result.output
    model.unlink()
    (folder / "m.int8.xml").write_text("old")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "m.int8.xml already exists" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["m.int8.xml"]


@pytest.mark.skipif(not REAL_INT8, reason="this CPU has no INT8 units")
def test_int8_runs_quantised_and_close_to_fp32(exported, tiny_dataset):
    from neoseg.export.onnx_export import verification_slices, verification_volumes

    model = exported[0] / "m.onnx"
    fp32, int8 = open_backend(model, "ov-cpu", precision="fp32"), open_backend(model, "ov-cpu", precision="int8")
    assert int8.precision == "int8" and openvino_backend.int8_convolutions(int8.compiled) > 0
    assert openvino_backend.int8_convolutions(fp32.compiled) == 0
    x = verification_slices(verification_volumes(None, tiny_dataset, 1), fp32.info)[:8]
    a, b = fp32.run(x).copy(), int8.run(x).copy()
    assert 0 < np.abs(a - b).mean() < 0.05 * np.abs(a).mean()  # quantised, yet close


def test_auto_prefers_int8_and_says_what_it_passed_over():
    good, bad = ParityRecord(**record(0.995)), ParityRecord(**record(0.97))
    supported = ["fp32", "int8", "bf16"]
    assert choose(supported, {"int8": good, "bf16": good}, "auto", "cpu")[0] == "int8"
    precision, why = choose(supported, {"int8": bad, "bf16": good}, "auto", "cpu")
    assert precision == "bf16" and why.startswith("int8 not used: ") and "Dice 0.9700 vs FP32 (test, 8 slices) < 0.99" \
        in why
    precision, why = choose(supported, {"int8": good}, "auto", "cpu", {"int8": "m.int8.xml is missing"})
    assert precision == "fp32" and "int8 not used: m.int8.xml is missing" in why
    assert [int8_unit(f) for f in (["avx2", "amx_int8", "avx512_vnni"], VNNI, ["avx2", "avx_vnni"], ["avx2"], [])] \
        == ["AMX-INT8", "AVX-512 VNNI", "AVX-VNNI", "AVX2", None]


def test_auto_passes_over_an_int8_model_keeping_more_fp32_layers_than_bf16():
    """Layers kept in FP32 cost more than INT8 saves over BF16: where BF16 runs and passed with
    fewer kept layers, auto takes BF16; without BF16 units, the INT8 model with them."""
    def kept(dice, n):
        return ParityRecord(**record(dice), kept_fp32=tuple(f"conv{i}" for i in range(n)))

    precision, why = choose(["fp32", "int8", "bf16"], {"int8": kept(0.995, 6), "bf16": kept(0.995, 0)}, "auto", "cpu")
    assert precision == "bf16" and "int8 not used: it keeps 6 convolutions in FP32, more than bf16 (0)" in why
    assert choose(["fp32", "int8", "bf16"], {"int8": kept(0.995, 6), "bf16": kept(0.995, 6)}, "auto", "cpu")[0] == "int8"
    assert choose(["fp32", "int8", "bf16"], {"int8": kept(0.995, 6), "bf16": kept(0.97, 0)}, "auto", "cpu")[0] == "int8"
    assert choose(["fp32", "int8"], {"int8": kept(0.995, 11), "bf16": kept(0.995, 0)}, "auto", "cpu")[0] == "int8"
    # an INT8 model exported with the first remedy (first convolution and head) named its layers only in words
    old = replace(kept(0.995, 0), measured_with="NNCF 2.x, 64 calibration slices, first convolution and head in FP32")
    precision, why = choose(["fp32", "int8", "bf16"], {"int8": old, "bf16": kept(0.995, 0)}, "auto", "cpu")
    assert precision == "bf16" and "it keeps 2 convolutions in FP32, more than bf16 (0)" in why


@pytest.mark.skipif(not REAL_INT8, reason="this CPU has no INT8 units")
@pytest.mark.parametrize("dice, kept", [((0.95, 0.995), 1), ((0.97, 0.95), 0)])
def test_int8_remedies_leave_the_full_resolution_convolutions_unquantised(exported, tiny_dataset, tmp_path,
                                                                          monkeypatch, dice, kept):
    """Where plain INT8 misses the gate, the full-resolution convolutions (then the half-resolution
    ones) stay FP32, the first remedy that passes is kept, else the best one, and the INT8 model
    written is the one its record was measured on. The gate's verdicts are given per remedy here."""
    import openvino as ov

    from neoseg.data.dhcp import find_sessions
    from neoseg.export import int8
    from neoseg.export.bf16 import full_resolution
    from neoseg.export.scans import Scans

    onnx = copy_model(exported[0], tmp_path / "m")
    verdicts, log = iter(dice), []
    gated = []

    def gate(onnx, scans, detail, kept_fp32=()):
        gated.append(list(kept_fp32))
        return ParityRecord(**record(next(verdicts)), kept_fp32=tuple(kept_fp32))

    monkeypatch.setattr(int8, "int8_parity", gate)
    info = open_backend(onnx, "ort-cpu").info
    calibration = Scans.load(find_sessions(tiny_dataset)[:1], "test")
    result = int8.export_int8(onnx, info, calibration, calibration, log=log.append)
    sizes = [0, len(full_resolution(ov.Core().read_model(str(onnx)), info.slice_size, 1))]  # the toy U-Net's
    assert [len(g) for g in gated] == sizes and sizes[1] > 0  # half resolution would leave nothing quantised
    assert len(result.kept_fp32) == sizes[kept] and result.min_dice == max(dice)
    assert "no remedy with the full- and half-resolution convolutions in FP32" in log[0]
    assert "quantising again with the full-resolution convolutions in FP32" in log[1]
    assert open_backend(onnx, "ort-cpu").info.parity_records["int8"].kept_fp32 == result.kept_fp32
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: VNNI)
    compiled = open_backend(onnx, "ov-cpu", precision="int8").compiled  # the model kept, as recorded
    convolutions = openvino_backend.convolutions(compiled)
    assert set(result.kept_fp32) <= openvino_backend.fp32_convolutions(compiled)
    assert sum(p == "f32" for _, p in convolutions) == sizes[kept]
    assert openvino_backend.int8_convolutions(compiled) == len(convolutions) - sizes[kept] > 0


@pytest.mark.skipif(not REAL_INT8, reason="this CPU has no INT8 units")
def test_auto_runs_int8_only_where_it_passed_and_the_cpu_has_the_units(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: VNNI)
    passed = copy_model(exported[0], tmp_path / "passed", record(0.995))
    backend = open_backend(passed, "auto")
    assert backend.precision == "int8" and "int8 parity" in backend.note and "INT8 units: AVX-512 VNNI" in backend.note
    failed = copy_model(exported[0], tmp_path / "failed", record(0.97))
    backend = open_backend(failed, "auto")
    assert backend.precision == "fp32" and "int8 not used: " in backend.note
    assert "Dice 0.9700 vs FP32 (test, 8 slices) < 0.99" in backend.note
    assert open_backend(failed, "ov-cpu", precision="int8").precision == "int8"  # explicit: runs, gate or not
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: ["sse4_2"])  # no INT8 units
    backend = open_backend(passed, "ov-cpu")
    assert backend.precision != "int8"
    with pytest.raises(BackendUnavailable, match="cannot run int8 .*INT8 needs an x86-64 CPU with AMX-INT8"):
        open_backend(passed, "ov-cpu", precision="int8")


def test_a_missing_or_foreign_int8_model_is_refused(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: VNNI)
    monkeypatch.setattr(openvino_backend, "cpu_precisions", lambda core: (["fp32", "int8"], ["FP32", "INT8"]))
    model = copy_model(exported[0], tmp_path / "moved", record(0.995))
    (tmp_path / "moved" / "m.int8.bin").unlink()
    assert "int8 not used: m.int8.xml and its .bin are not beside m.onnx" in open_backend(model, "ov-cpu").note
    with pytest.raises(BackendUnavailable, match="cannot run int8: m.int8.xml and its .bin are not beside"):
        open_backend(model, "ov-cpu", precision="int8")
    other = copy_model(exported[0], tmp_path / "other", record(0.995))
    with open(tmp_path / "other" / "m.int8.bin", "ab") as f:
        f.write(b"\0")
    assert "is not the INT8 model exported with m.onnx" in open_backend(other, "ov-cpu").note


def test_infer_int8_without_the_units_is_one_line(exported, tiny_dataset, tmp_path, monkeypatch):
    from neoseg.cli.infer import app
    from neoseg.data.dhcp import find_sessions

    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: ["sse4_2"])
    scan = find_sessions(tiny_dataset)[5].t2
    result = CliRunner().invoke(app, [str(scan), "-m", str(exported[0] / "m.onnx"), "-o", str(tmp_path / "o"),
                                      "--backend", "ov-cpu", "--precision", "int8"])
    assert result.exit_code == 2 and "cannot run int8" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_calibration_never_uses_the_scans_it_is_gated_on(exported, tiny_dataset, tmp_path):
    """--calibration-data holding only the verified scans is refused, and nothing is written."""
    from neoseg.cli.export import app

    only = tmp_path / "only"
    for sub in sorted(tiny_dataset.glob("sub-*"))[:2]:
        shutil.copytree(sub, only / sub.name)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(exported[0] / "toy.pt"), "-o", str(out / "m.onnx"), "--data", str(only),
                                      "--calibration-data", str(only)])
    assert result.exit_code == 2 and "no scans to calibrate INT8 on besides the 2 it is gated on" in result.output
    assert not out.exists() or not list(out.iterdir())
    result = CliRunner().invoke(app, [str(exported[0] / "toy.pt"), "-o", str(out / "m.onnx"), "--data", str(only),
                                      "--no-int8"])
    assert result.exit_code == 0 and sorted(p.name for p in out.iterdir()) == ["m.onnx"]
    record = open_backend(out / "m.onnx", "ort-cpu").info.parity_records["bf16"]  # no split known: said so
    assert record.scan_keys == ("sub-T00_ses-1", "sub-T01_ses-1")
    assert record.scans_from == f"the first scans of {only}; no split known ({only} is not the run's data): they " \
                                f"may include training scans"
