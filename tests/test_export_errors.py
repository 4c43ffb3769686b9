"""One-line errors, exit code 2 and nothing left behind: neoseg-export given a wrong file, a
stray --engine, a disk that fills up; neoseg-infer given a damaged model; install hints that work
from the neoseg checkout."""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neoseg.cli import export as export_cli
from neoseg.cli import infer as infer_cli
from neoseg.data.dhcp import find_sessions
from neoseg.runtime.backends import BackendUnavailable, check_onnx

runner = CliRunner()
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def one_line_error(result, prog: str) -> str:
    """The error of a run that failed as a user error: exit code 2, one line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0].removeprefix(f"{prog}: error: ")


# ---- neoseg-export: what it is given ------------------------------------------------------------
@pytest.mark.parametrize("option", ["--engine", "--timing-cache"])
def test_trt_options_without_trt_are_refused_before_any_work(tmp_path, option):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"never read")
    result = runner.invoke(export_cli.app, [str(checkpoint), "-o", str(tmp_path / "out" / "m.onnx"),
                                            option, str(tmp_path / "m.engine")])
    assert one_line_error(result, "neoseg-export").startswith(f"{option} needs --trt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_a_scan_is_not_a_checkpoint(tiny_dataset, tmp_path):
    scan = find_sessions(tiny_dataset)[0].t2
    result = runner.invoke(export_cli.app, [str(scan), "-o", str(tmp_path / "m.onnx")])
    assert one_line_error(result, "neoseg-export") == (f"{scan} is not a neoseg checkpoint (best.pt from "
                                                       f"neoseg-train) or run folder")
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_torch_file_is_not_a_checkpoint_and_never_unpickled_unsafely(tmp_path):
    import argparse

    import torch

    foreign = tmp_path / "model.pt"
    torch.save(argparse.Namespace(weights=[1.0]), foreign)  # torch.load refuses it with weights_only=True
    result = runner.invoke(export_cli.app, [str(foreign), "-o", str(tmp_path / "out" / "m.onnx"),
                                            "--verify-scans", "0"])
    message = one_line_error(result, "neoseg-export")
    assert message == f"{foreign} is not a neoseg checkpoint (best.pt from neoseg-train) or run folder"
    assert "weights_only" not in result.output and not (tmp_path / "out").exists()


# ---- neoseg-export: a disk that fills up ----------------------------------------------------------
def test_a_full_disk_is_one_line_naming_the_folder_and_its_free_space(toy_run, tmp_path, monkeypatch):
    import onnx

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    out = tmp_path / "small"
    out.mkdir()
    checkpoint = toy_run / "best.pt"
    result = runner.invoke(export_cli.app, [str(checkpoint), "-o", str(out / "m.onnx"), "--verify-scans", "0"])
    message = one_line_error(result, "neoseg-export")
    assert message.startswith(f"cannot write {out / 'm.onnx'}") and "no space left on the device" in message
    assert f"MB free in {out}); free space or choose another -o" in message
    assert list(out.iterdir()) == []
    # a folder the export made for its output goes too
    result = runner.invoke(export_cli.app, [str(checkpoint), "-o", str(tmp_path / "new" / "sub" / "m.onnx"),
                                            "--verify-scans", "0"])
    assert "no space left on the device" in one_line_error(result, "neoseg-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


@pytest.mark.skipif(not HAS_OPENVINO or importlib.util.find_spec("nncf") is None, reason="needs OpenVINO and NNCF")
def test_openvino_failing_to_save_its_model_is_one_line(toy_run, tmp_path, monkeypatch):
    """OpenVINO says only ``basic_ios::clear: iostream error`` when its model does not fit; with
    less space left than the .onnx holds, that is a full disk."""
    import shutil
    from collections import namedtuple

    import openvino as ov

    def failing_save(model, path, **kwargs):
        Path(path).write_bytes(b"partly written")
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1:\nbasic_ios::clear: iostream error")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ov, "save_model", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(200_000, 190_000, 10_000))
    out = tmp_path / "small"
    out.mkdir()
    result = runner.invoke(export_cli.app, [str(toy_run / "best.pt"), "-o", str(out / "m.onnx"),
                                            "--verify-scans", "1", "--calibration-scans", "1"])
    assert one_line_error(result, "neoseg-export") == (f"cannot write {out / 'm.onnx'} (and the models beside it): no "
                                                       f"space left on the device (0.0 MB free in {out}); free space "
                                                       f"or choose another -o")
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs OpenVINO")
@pytest.mark.parametrize("free, code", [(10, errno.ENOSPC), (10**12, errno.EIO)])
def test_openvino_save_failures_become_os_errors_naming_the_file(model, tmp_path, monkeypatch, free, code):
    import shutil
    from collections import namedtuple

    import openvino as ov

    from neoseg.export.int8 import save_openvino

    def failing_save(*args, **kwargs):
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1:\nbasic_ios::clear: iostream error")

    monkeypatch.setattr(ov, "save_model", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(0, 0, free))
    with pytest.raises(OSError) as e:
        save_openvino(None, tmp_path / "m.int8.xml", model)
    assert e.value.errno == code and e.value.filename == str(tmp_path / "m.int8.xml")
    assert e.value.strerror == "OpenVINO could not save m.int8.xml (basic_ios::clear: iostream error)"
    message = export_cli.write_failure(tmp_path / "m.onnx", e.value)
    assert message.startswith(f"cannot write {tmp_path / 'm.onnx'} (and the models beside it): ")
    assert ("no space left on the device" if code == errno.ENOSPC else "OpenVINO could not save m.int8.xml") in message


def test_errors_reading_elsewhere_are_not_taken_for_write_failures(tmp_path):
    elsewhere = OSError(errno.EIO, "Input/output error", "/data/scan.nii.gz")
    assert export_cli.write_failure(tmp_path / "m.onnx", elsewhere) is None
    assert export_cli.write_failure(tmp_path / "m.onnx", OSError(errno.EBADF, "Bad file descriptor")) is None


# ---- neoseg-infer: a damaged model ------------------------------------------------------------------
def truncated(model: Path, folder: Path) -> Path:
    bad = folder / "models" / "bad.onnx"
    bad.parent.mkdir(parents=True)
    data = model.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    return bad


@pytest.mark.parametrize("backend", ["auto", "ort-cpu", "ov-cpu"])
def test_a_truncated_model_is_named_damaged_before_any_backend_reads_it(model, tiny_dataset, tmp_path, backend):
    bad = truncated(model, tmp_path)
    scan = find_sessions(tiny_dataset)[4].t2
    result = runner.invoke(infer_cli.app, [str(scan), "-m", str(bad), "-o", str(tmp_path / "out"),
                                           "--backend", backend])
    assert one_line_error(result, "neoseg-infer") == (f"{bad} is damaged or truncated (not a valid ONNX file); "
                                                      f"export it again")
    assert "pip install" not in result.output and not (tmp_path / "out").exists()


def test_the_onnx_check_reads_field_headers_only(model, tmp_path):
    check_onnx(model)  # a good model passes
    cases = {"empty.onnx": b"", "scan.onnx": b"\x1f\x8b\x08\x00" + bytes(60), "text.onnx": b"not a model",
             "cut.onnx": model.read_bytes()[:-3]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=r"is damaged or truncated \(not a valid ONNX file\); export it again"):
            check_onnx(tmp_path / name)


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs OpenVINO")
def test_openvino_failing_to_read_names_the_file_and_the_fix(model, tmp_path):
    from neoseg.runtime.openvino_backend import OpenVinoBackend

    bad = truncated(model, tmp_path)
    with pytest.raises(BackendUnavailable) as e:
        OpenVinoBackend(bad)
    message = str(e.value)
    assert message.startswith(f"OpenVINO could not read {bad} (") and message.endswith("; if it is damaged, export "
                                                                                        "it again")
    assert "Exception from" not in message and "\n" not in message


# ---- install hints ---------------------------------------------------------------------------------
def test_install_hints_work_from_the_checkout(monkeypatch):
    from neoseg.core import registration
    from neoseg.runtime import ort_packages, trt_backend

    def missing():
        raise ImportError("no greedy")

    monkeypatch.setattr(registration, "_greedy", missing)
    with pytest.raises(ValueError) as e:
        registration.require_library()
    hints = {"cpu": ort_packages.not_installed_message(), "gpu": ort_packages.not_installed_message(),
             "trt": trt_backend.INSTALL, "atlas": str(e.value)}
    for extra, message in hints.items():
        assert f"pip install -e '.[{extra}]' in the neoseg checkout" in message and "neoseg[" not in message
