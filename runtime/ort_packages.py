"""Which ONNX Runtime package is installed, what to install instead, and loading the NVIDIA
libraries that the ``gpu`` extra installs as pip wheels.

ONNX Runtime comes as two PyPI packages that install the same ``onnxruntime`` module: ``onnxruntime``
(CPU) and ``onnxruntime-gpu`` (CPU, CUDA and TensorRT providers). With both installed, whichever was
written last wins and the CUDA provider may silently vanish. neoseg therefore depends on ONNX Runtime
only through its extras, one flavour each: ``cpu`` (and ``train``, which includes it) or ``gpu``
(and ``train-gpu``). See docs/installation.md.

The ``gpu`` extra installs CUDA, cuDNN and TensorRT as pip wheels, in site-packages, where the dynamic
loader does not look. :func:`preload_gpu_libraries` loads them by path before a session is created,
so ONNX Runtime's provider libraries find them already loaded (by soname). A system CUDA / TensorRT
on ``LD_LIBRARY_PATH`` works as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

CPU_PACKAGE, GPU_PACKAGE = "onnxruntime", "onnxruntime-gpu"
# neoseg installs from its checkout (README), not from PyPI
INSTALL_CPU = "pip install -e '.[cpu]' in the neoseg checkout"
INSTALL_GPU = "pip install -e '.[gpu]' in the neoseg checkout"
# TensorRT libraries that ONNX Runtime's TensorRT provider links against, in load order
TENSORRT_LIBRARIES = ("libnvinfer.so.*", "libnvinfer_plugin.so.*", "libnvonnxparser.so.*")


def installed_packages() -> dict[str, str]:
    """The ONNX Runtime distributions installed here, name -> version."""
    found = {}
    for name in (CPU_PACKAGE, GPU_PACKAGE):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def not_installed_message() -> str:
    return (f"ONNX Runtime is not installed; install one flavour: {INSTALL_CPU} (CPU) or, on an NVIDIA GPU "
            f"machine, {INSTALL_GPU}")


def missing_provider_message(provider: str, available: list[str]) -> str:
    """Why ``provider`` is not among ONNX Runtime's ``available`` providers, and the install line that fixes it."""
    found = installed_packages()
    listed = ", ".join(available) or "none"
    if len(found) == 2:
        return (f"both {CPU_PACKAGE} {found[CPU_PACKAGE]} and {GPU_PACKAGE} {found[GPU_PACKAGE]} are installed and "
                f"overwrite each other's onnxruntime module (providers: {listed}); keep only the GPU one: "
                f"pip uninstall -y {CPU_PACKAGE} {GPU_PACKAGE} && {INSTALL_GPU}")
    if provider == "CPUExecutionProvider":
        return f"ONNX Runtime here has no {provider} (providers: {listed}); reinstall it: {INSTALL_CPU}"
    if CPU_PACKAGE in found:
        return (f"ONNX Runtime here is the CPU package {CPU_PACKAGE} {found[CPU_PACKAGE]}, which has no {provider} "
                f"(providers: {listed}); on an NVIDIA GPU machine replace it: pip uninstall -y {CPU_PACKAGE} && "
                f"{INSTALL_GPU}")
    return f"ONNX Runtime here has no {provider} (providers: {listed}); on an NVIDIA GPU machine: {INSTALL_GPU}"


def not_activated_message(provider: str, active: list[str], missing: list[str] = ()) -> str:
    """ONNX Runtime listed ``provider`` but could not start it: libraries it links did not load."""
    needs = "CUDA 13, cuDNN 9 and TensorRT 10" if provider == "TensorrtExecutionProvider" else "CUDA 13 and cuDNN 9"
    what = f"{', '.join(missing)} did not load" if missing else f"the {needs} libraries it needs did not load"
    return (f"ONNX Runtime did not activate {provider} (active: {', '.join(active)}): {what}; {INSTALL_GPU} "
            f"installs them as pip wheels (or put a system {needs} on LD_LIBRARY_PATH)")


def preload_gpu_libraries(ort, tensorrt: bool = False) -> list[str]:
    """Load the pip-installed CUDA and cuDNN libraries (ONNX Runtime's own ``preload_dlls``) and, with
    ``tensorrt``, TensorRT's (from the ``tensorrt_libs`` package of its wheel). Returns the names of
    the libraries that could not be loaded (a system install on LD_LIBRARY_PATH may still serve)."""
    missing: list[str] = []
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # it prints failures; the caller's error says them in one line
            try:
                preload()
            except Exception:  # noqa: BLE001 - best effort, as documented by ONNX Runtime
                pass
        missing += re.findall(r"^Failed to load (?:.*/)?([^/:\s]+):", printed.getvalue(), re.MULTILINE)
    if tensorrt and not load_tensorrt_libraries():
        missing.append("TensorRT's libnvinfer.so.10")
    return missing


def load_tensorrt_libraries() -> list[str]:
    """Load libnvinfer & co. from the ``tensorrt_libs`` package of TensorRT's pip wheels, if installed;
    returns the names loaded."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0])
    loaded = []
    for pattern in TENSORRT_LIBRARIES:
        for path in sorted(folder.glob(pattern)):
            try:
                ctypes.CDLL(str(path))
            except OSError:
                continue
            loaded.append(path.name)
            break
    return loaded


@contextlib.contextmanager
def quiet(ort) -> Iterator[None]:
    """Silence ONNX Runtime while a session is created: its own log lines and the "EP Error ... falling
    back" it prints to stdout. A provider that fails is reported by the caller, in one line."""
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(2)
