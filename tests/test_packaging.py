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


def manual_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def install_lines(pages: list[Path]) -> list[list[str]]:
    """The extras of every `pip install ... -e "."` / `".[a,b]"` line of these pages."""
    lines = []
    for page in pages:
        for line in page.read_text().splitlines():
            if "pip install" not in line:
                continue
            for match in re.finditer(r"""-e\s+["']?\.(?:\[([a-z0-9,\-]+)\])?["']?""", line):
                lines.append(match.group(1).split(",") if match.group(1) else [])
    return lines


def test_every_install_line_of_the_manual_gets_exactly_one_flavour():
    readme = install_lines([ROOT / "README.md"])
    assert ["train"] in readme and ["train", "test"] in readme  # the CPU quick start and the tests
    assert any(set(extras) & {"gpu", "train-gpu"} for extras in readme), "the README shows no GPU install line"
    install = install_lines([ROOT / "docs" / "installation.md"])
    assert ["cpu"] in install and any(set(extras) & {"gpu", "train-gpu"} for extras in install)
    for extras in install_lines(manual_pages()):
        assert len(flavours(requirements(extras))) == 1, f'pip install -e ".[{",".join(extras)}]"'


def bash_blocks(page: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)


def test_the_readme_opens_with_the_main_job_and_the_tests_on_cpu_torch():
    """The README's first two commands work from the public index on a machine with only Python:
    CPU torch from PyTorch's own CPU wheel index (the public index's Linux torch is the CUDA build),
    then the main job on the built-in data, and the test suite. CI runs the same extras, pinned."""
    first, second = bash_blocks(ROOT / "README.md")[:2]
    cpu_torch = "pip install torch --index-url https://download.pytorch.org/whl/cpu && "
    assert first.strip().startswith("python3 -m venv .venv && . .venv/bin/activate && " + cpu_torch)
    assert first.strip().endswith('pip install -e ".[train]" && neoseg-train --out runs/demo')
    assert second.strip().startswith("python3 -m venv .venv && . .venv/bin/activate && " + cpu_torch)
    assert second.strip().endswith('pip install -e ".[train,test]" && python -m pytest -q')
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install (-q )?torch==[\d.]+ -e \"\.\[train,test\]\"", ci)
    assert "python -m pytest -q" in ci


# ---- the runtime's messages -------------------------------------------------------------------
def test_missing_gpu_provider_names_the_install_line(model, monkeypatch):
    with pytest.raises(BackendUnavailable) as e:  # this machine: the CPU package only
        open_backend(model, "ort-cuda")
    message = str(e.value)
    assert "\n" not in message and "CUDAExecutionProvider" in message
    assert "pip uninstall -y onnxruntime && pip install -e '.[gpu]'" in message
    # both packages installed: the message says so and how to keep one
    monkeypatch.setattr(ort_packages, "installed_packages",
                        lambda: {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    with pytest.raises(BackendUnavailable, match="overwrite each other's onnxruntime module") as e:
        open_backend(model, "ort-trt")
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install -e '.[gpu]'" in str(e.value)


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
    assert loaded == [True] and "TensorRT 10" in str(e.value) and "pip install -e '.[gpu]'" in str(e.value)


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
    assert "pip install -e '.[cpu]'" in done.stderr and "pip install -e '.[gpu]'" in done.stderr
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
    assert "libcurand.so.10 did not load; pip install -e '.[gpu]'" in message and "\n" not in message
