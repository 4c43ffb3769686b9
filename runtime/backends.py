"""Execution backends: (N, 1, H, W) float32 slices in, (N, C, H, W) float32 logits out.

``ort-*`` run an exported ``.onnx`` through ONNX Runtime with one explicit provider, ``ov-cpu``
the same file through OpenVINO on the CPU (FP32, or INT8/BF16/FP16 where the CPU has the units), ``tensorrt``
a native engine from ``neoseg-export --trt``, ``torch-*`` a training checkpoint (``.pt``; needs
torch and the training code). A requested backend is used or an error says why not: nothing
falls back silently. ``auto`` tries the fastest candidates for the model file in order. The same
holds for the numeric precision (:mod:`.precision`): each backend runs the precisions it supports
here, and ``auto`` uses a reduced one only where the model passed the parity gate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .model import INPUT, ModelInfo
from .precision import check_precision

BACKENDS = ("auto", "ov-cpu", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch-cuda", "torch-cpu")
ORT_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-trt": "TensorrtExecutionProvider"}
# Candidates of ``auto`` by model file kind, fastest first. ort-trt is left out: it builds an engine
# on first use (minutes); ``neoseg-export --trt`` builds it once instead. On the CPU OpenVINO comes
# first: as fast as ONNX Runtime or faster in FP32, and several times faster in BF16 (README).
AUTO = {"onnx": ("ort-cuda", "ov-cpu", "ort-cpu"), "engine": ("tensorrt",), "checkpoint": ("torch-cuda", "torch-cpu")}
KIND_LABEL = {"onnx": "an .onnx model", "engine": "a TensorRT engine from neoseg-export --trt",
              "checkpoint": "a .pt checkpoint"}
KIND_OF = {**{b: "onnx" for b in ORT_PROVIDERS}, "ov-cpu": "onnx", "tensorrt": "engine", "torch-cuda": "checkpoint",
           "torch-cpu": "checkpoint"}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


class Backend:
    """Base: ``info`` (the model's metadata), ``name`` (what actually runs), ``precision`` (its
    numeric precision) and ``note`` (why that one), ``batch`` (default slices per call) and
    ``fixed_size`` (None when any multiple of ``info.divisor`` is accepted)."""

    info: ModelInfo
    name: str
    precision: str = "fp32"
    note: str = ""
    batch: int = 256
    fixed_size: int | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def model_kind(path: Path) -> str:
    from .engine import is_engine

    if is_engine(path):
        return "engine"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix in (".pt", ".pth"):
        return "checkpoint"
    raise ValueError(f"{path}: unknown model file; pass an .onnx model or an engine from neoseg-export, "
                     f"or a .pt checkpoint for the torch backends")


def open_backend(path: str | Path, backend: str = "auto", threads: int | None = None,
                 precision: str = "auto") -> Backend:
    """Open ``path`` with ``backend`` (one of :data:`BACKENDS`) in ``precision`` (one of
    :data:`~.precision.PRECISIONS`)."""
    path = Path(path)
    check_precision(precision)
    if not path.is_file():
        raise ValueError(f"model {path} does not exist; export one with neoseg-export CHECKPOINT -o model.onnx")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    kind = model_kind(path)
    if backend != "auto":
        if KIND_OF[backend] != kind:
            raise ValueError(f"backend {backend} runs {KIND_LABEL[KIND_OF[backend]]} but {path} is "
                             f"{KIND_LABEL[kind]}; pass --backend auto or a matching model file")
        return _open(path, backend, threads, precision)
    reasons = []
    for candidate in AUTO[kind]:
        try:
            return _open(path, candidate, threads, precision)
        except BackendUnavailable as e:
            reasons.append(f"{candidate}: {e}")
    raise BackendUnavailable(f"no backend can run {path}: " + "; ".join(reasons))


def _open(path: Path, backend: str, threads: int | None, precision: str = "auto") -> Backend:
    if backend in ORT_PROVIDERS:
        return OrtBackend(path, backend, threads, precision)
    if backend == "ov-cpu":
        from .openvino_backend import OpenVinoBackend
        return OpenVinoBackend(path, threads, precision)
    if backend == "tensorrt":
        from .trt_backend import TensorRTBackend
        opened = TensorRTBackend(path)
        fixed_precision(opened.precision, precision, "this engine (rebuild it with neoseg-export --trt)")
        return opened
    from .torch_backend import TorchBackend
    return TorchBackend(path, device=backend.removeprefix("torch-"), precision=precision)


def fixed_precision(runs: str, requested: str, what: str, hint: str = "") -> str:
    """For a path that runs only ``runs``: the precision, or why ``requested`` cannot run."""
    if requested not in ("auto", runs):
        raise BackendUnavailable(f"{what} runs {runs} only, not {requested}" + (f"; {hint}" if hint else ""))
    return runs


def physical_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OrtBackend(Backend):
    """ONNX Runtime with exactly one requested execution provider (CPU kept only for shape ops)."""

    def __init__(self, path: Path, backend: str = "ort-cpu", threads: int | None = None, precision: str = "auto"):
        from . import ort_packages

        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(ort_packages.not_installed_message()) from None
        provider = ORT_PROVIDERS[backend]
        if backend == "ort-trt":  # TensorRT builds FP16 engines by default, FP32 on request
            self.precision = fixed_precision("fp16", precision, "ort-trt") if precision != "fp32" else "fp32"
        else:
            hint = "for INT8/BF16/FP16 on a CPU use --backend ov-cpu" if backend == "ort-cpu" else ""
            self.precision = fixed_precision("fp32", precision, f"ONNX Runtime's {provider}", hint)
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(ort_packages.missing_provider_message(provider, ort.get_available_providers()))
        missing = [] if backend == "ort-cpu" else ort_packages.preload_gpu_libraries(ort, backend == "ort-trt")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.log_severity_level = 3
        providers: list = [provider] if backend == "ort-cpu" else [provider, "CPUExecutionProvider"]
        if backend == "ort-trt":
            cache = Path.home() / ".cache" / "neoseg" / "ort-trt"
            providers[0] = (provider, {"trt_fp16_enable": self.precision == "fp16", "trt_engine_cache_enable": True,
                                       "trt_engine_cache_path": str(cache)})
        try:
            with ort_packages.quiet(ort):
                self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendUnavailable(f"ONNX Runtime could not load {path} with {provider}: {e}") from None
        active = self.session.get_providers()
        if active[0] != provider:  # ORT drops a provider that fails to initialise and carries on
            raise BackendUnavailable(ort_packages.not_activated_message(provider, active, missing))
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.name = f"onnxruntime {ort.__version__} [{provider}] {self.precision}"
        self.batch = 8 if backend == "ort-cpu" else 256  # CPU: same speed, far less memory
        if backend == "ort-trt" or not self.info.flexible:
            self.fixed_size = self.info.slice_size  # one engine shape / a graph of fixed size

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT: np.ascontiguousarray(x, np.float32)})[0]
