"""ONNX Runtime backends (``ort-cpu``, ``ort-cuda``, ``ort-trt``): an exported ``.onnx`` with one
explicit execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import Backend, BackendUnavailable, fixed_precision
from .cpu import physical_cores
from .model import INPUT, ModelInfo

PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
             "ort-trt": "TensorrtExecutionProvider"}


class OrtBackend(Backend):
    """ONNX Runtime with exactly one requested execution provider (CPU kept only for shape ops)."""

    def __init__(self, path: Path, backend: str = "ort-cpu", threads: int | None = None, precision: str = "auto"):
        from . import ort_packages

        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(ort_packages.not_installed_message()) from None
        provider = PROVIDERS[backend]
        if backend == "ort-trt":  # TensorRT builds FP16 engines by default, FP32 on request
            self.precision = fixed_precision("fp16", precision, "ort-trt") if precision != "fp32" else "fp32"
        else:
            self.precision = fixed_precision("fp32", precision, f"ONNX Runtime's {provider}",
                                             "for INT8/BF16/FP16 on a CPU use --backend ov-cpu" if backend == "ort-cpu" else "")
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
