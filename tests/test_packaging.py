"""The ONNX Runtime packaging decision: one flavour per install line, never onnxruntime and
onnxruntime-gpu together (they install the same module), and one-line errors that name the install
line when a provider is missing."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from neoseg.runtime import ort_packages
from neoseg.runtime.backends import BackendUnavailable, open_backend

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
FLAVOURS = {"onnxruntime", "onnxruntime-gpu"}


def project() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11+)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: list[str]) -> list[Requirement]:
    meta = project()
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra in extras:
        assert extra in meta["optional-dependencies"], f"README names unknown extra '{extra}'"
        reqs += [Requirement(r) for r in meta["optional-dependencies"][extra]]
    return reqs


def flavours(reqs: list[Requirement]) -> set[str]:
    return {r.name for r in reqs} & FLAVOURS


def test_base_install_pulls_no_onnxruntime():
    assert flavours(requirements([])) == set()


def test_every_extra_pulls_at_most_one_flavour():
    extras = project()["optional-dependencies"]
    assert flavours(requirements(["cpu"])) == flavours(requirements(["train"])) == {"onnxruntime"}
    assert flavours(requirements(["gpu"])) == flavours(requirements(["train-gpu"])) == {"onnxruntime-gpu"}
    for extra in extras:
        assert len(flavours(requirements([extra]))) <= 1, extra
    # train-gpu is train with the gpu flavour in place of the cpu one
    as_set = lambda extra: {str(r) for r in requirements([extra])}  # noqa: E731
    assert as_set("train") - as_set("cpu") == as_set("train-gpu") - as_set("gpu")


def test_gpu_extra_brings_cuda_and_tensorrt_of_one_cuda_major():
    reqs = {r.name: r for r in requirements(["gpu"])}
    ort = reqs["onnxruntime-gpu"]
    assert {"cuda", "cudnn"} <= ort.extras  # CUDA runtime and cuDNN as pip wheels
    assert Version("1.31.1") in ort.specifier and Version("1.32.0") not in ort.specifier
    trt = next(r for name, r in reqs.items() if re.fullmatch(r"tensorrt-cu\d+-libs", name))
    # onnxruntime-gpu 1.31 links libnvinfer.so.10: TensorRT 10, never 11
    assert Version("10.16.1.11") in trt.specifier and Version("11.0.0") not in trt.specifier
    cuda_major = re.fullmatch(r"tensorrt-cu(\d+)-libs", trt.name).group(1)
    assert Version(f"{cuda_major}.0") in reqs["nvidia-cublas"].specifier
    assert Version(f"{int(cuda_major) + 1}.0") not in reqs["nvidia-cublas"].specifier


def readme_install_lines() -> list[list[str]]:
    """The extras of every `pip install ... -e "."` / `".[a,b]"` line of the README."""
    lines = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if "pip install" not in line:
            continue
        for match in re.finditer(r"""-e\s+["']?\.(?:\[([a-z0-9,\-]+)\])?["']?""", line):
            lines.append(match.group(1).split(",") if match.group(1) else [])
    return lines


def test_every_readme_install_line_gets_exactly_one_flavour():
    lines = readme_install_lines()
    assert ["train"] in lines and ["train", "test"] in lines  # the CPU quick start and CI
    assert any(set(extras) & {"gpu", "train-gpu"} for extras in lines), "the README shows no GPU install line"
    for extras in lines:
        assert len(flavours(requirements(extras))) == 1, f'pip install -e ".[{",".join(extras)}]"'


# ---- the runtime's messages -------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_dataset, tmp_path_factory):
    from neoseg.benchmarks.toy import toy_onnx
    from neoseg.data.dhcp import find_sessions

    return toy_onnx(tmp_path_factory.mktemp("model"), find_sessions(tiny_dataset)[:4])[1]


def test_missing_gpu_provider_names_the_install_line(model, monkeypatch):
    with pytest.raises(BackendUnavailable) as e:  # this machine: the CPU package only
        open_backend(model, "ort-cuda")
    message = str(e.value)
    assert "\n" not in message and "CUDAExecutionProvider" in message
    assert "pip uninstall -y onnxruntime && pip install 'neoseg[gpu]'" in message
    # both packages installed: the message says so and how to keep one
    monkeypatch.setattr(ort_packages, "installed_packages",
                        lambda: {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    with pytest.raises(BackendUnavailable, match="overwrite each other's onnxruntime module") as e:
        open_backend(model, "ort-trt")
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'neoseg[gpu]'" in str(e.value)


def test_listed_but_unloadable_provider_names_the_libraries(model, monkeypatch):
    import onnxruntime as ort

    loaded = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_packages, "preload_gpu_libraries", lambda module, tensorrt: loaded.append(tensorrt) or [])
    real = ort.InferenceSession  # ORT drops a provider whose libraries fail to load, and carries on on CPU
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda path, options, providers: real(path, options, providers=["CPUExecutionProvider"]))
    with pytest.raises(BackendUnavailable, match="did not activate TensorrtExecutionProvider") as e:
        open_backend(model, "ort-trt")
    assert loaded == [True] and "TensorRT 10" in str(e.value) and "pip install 'neoseg[gpu]'" in str(e.value)


def test_no_onnxruntime_at_all_is_one_line_naming_both_flavours(model, tmp_path):
    code = ("import sys; sys.modules['onnxruntime'] = sys.modules['openvino'] = None; "
            "from neoseg.cli.infer import main; "
            f"sys.argv = ['neoseg-infer', 'scan.nii.gz', '-m', {str(model)!r}, '-o', {str(tmp_path)!r}]; main()")
    scan = tmp_path / "scan.nii.gz"
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), scan)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "ONNX Runtime is not installed" in done.stderr
    assert "pip install 'neoseg[cpu]'" in done.stderr and "pip install 'neoseg[gpu]'" in done.stderr
    assert not any(tmp_path.glob("*_desc-neoseg_*"))


def test_gpu_libraries_are_preloaded_quietly_and_tensorrt_from_its_wheel(tmp_path, monkeypatch, capsys):
    calls = []

    def preload_dlls():  # what onnxruntime-gpu's preload prints when a CUDA wheel is missing
        calls.append("cuda")
        print("Failed to load /site/nvidia/cu13/lib/libcublasLt.so.13: cannot open shared object file")
        print("Failed to load libcurand.so.10: libcurand.so.10: cannot open shared object file")

    fake_ort = types.SimpleNamespace(preload_dlls=preload_dlls)
    opened = []
    monkeypatch.setattr(ort_packages.ctypes, "CDLL", lambda path: opened.append(Path(path).name))
    assert ort_packages.preload_gpu_libraries(fake_ort, tensorrt=False) == ["libcublasLt.so.13", "libcurand.so.10"]
    # no TensorRT wheel installed: said by name
    assert ort_packages.preload_gpu_libraries(fake_ort, tensorrt=True)[-1] == "TensorRT's libnvinfer.so.10"
    libs = tmp_path / "site" / "tensorrt_libs"
    libs.mkdir(parents=True)
    (libs / "__init__.py").write_text("")
    for name in ("libnvonnxparser.so.10", "libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvinfer_lean.so.10"):
        (libs / name).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert ort_packages.preload_gpu_libraries(fake_ort, tensorrt=True) == ["libcublasLt.so.13", "libcurand.so.10"]
    assert calls == ["cuda"] * 3 and opened == ["libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10"]
    assert capsys.readouterr().out == ""  # stdout stays the user's
    message = ort_packages.not_activated_message("CUDAExecutionProvider", ["CPUExecutionProvider"], ["libcurand.so.10"])
    assert "libcurand.so.10 did not load; pip install 'neoseg[gpu]'" in message and "\n" not in message
