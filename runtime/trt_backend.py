"""Native TensorRT engines (TensorRT 10 Python API, device memory through cuda-python).

Nothing here has run on real TensorRT in this project's CI (no TensorRT there); the engine
header checks and the missing-TensorRT path are unit-tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import Backend, BackendUnavailable
from .engine import EngineHeader, check_compatible, read_engine
from .model import INPUT, OUTPUT, ModelInfo

INSTALL = "pip install -e '.[trt]' in the neoseg checkout, on a machine with an NVIDIA GPU and CUDA"


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {INSTALL}") from None
    return trt


def cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError:
            raise BackendUnavailable(f"cuda-python is not installed: {INSTALL}") from None
    return runtime


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0."""
    rt = cudart()
    try:
        props = _check(rt.cudaGetDeviceProperties(0))
    except RuntimeError as e:
        raise BackendUnavailable(f"no usable CUDA GPU ({e})") from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


class TensorRTBackend(Backend):
    """Runs an engine written by :func:`neoseg.export.trt_engine.build_engine`."""

    def __init__(self, path: Path):
        header, blob = read_engine(path)
        trt = import_tensorrt()
        gpu, cc = gpu_identity()
        check_compatible(header, path, trt.__version__, gpu, cc)
        self.info = ModelInfo.from_metadata(header.metadata, str(path))
        self.precision = header.precision
        self.name = f"TensorRT {trt.__version__} {header.precision} engine [{gpu}]"
        self.batch = self.max_batch = header.max_batch
        self.fixed_size = self.info.slice_size
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}; rebuild it with neoseg-export --trt")
        self.context = self.engine.create_execution_context()
        self._rt = cudart()
        s, c = self.info.slice_size, len(self.info.hierarchy)
        self._in_bytes, self._out_bytes = self.max_batch * s * s * 4, self.max_batch * c * s * s * 4
        self._d_in = _check(self._rt.cudaMalloc(self._in_bytes))
        self._d_out = _check(self._rt.cudaMalloc(self._out_bytes))
        self._stream = _check(self._rt.cudaStreamCreate())
        self.context.set_tensor_address(INPUT, int(self._d_in))
        self.context.set_tensor_address(OUTPUT, int(self._d_out))

    def run(self, x: np.ndarray) -> np.ndarray:
        rt, n = self._rt, len(x)
        if n > self.max_batch:
            raise ValueError(f"batch {n} exceeds the engine's profile (at most {self.max_batch} slices)")
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((n, len(self.info.hierarchy)) + x.shape[2:], np.float32)
        self.context.set_input_shape(INPUT, x.shape)
        _check(rt.cudaMemcpyAsync(self._d_in, x.ctypes.data, x.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                  self._stream))
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execution failed")
        _check(rt.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                  self._stream))
        _check(rt.cudaStreamSynchronize(self._stream))
        return out

    def __del__(self):
        rt = getattr(self, "_rt", None)
        if rt is not None:
            for ptr in (getattr(self, "_d_in", None), getattr(self, "_d_out", None)):
                if ptr is not None:
                    rt.cudaFree(ptr)


def header_for(onnx_sha256: str, metadata: dict, max_batch: int) -> EngineHeader:
    """The header of an engine built on this machine."""
    trt = import_tensorrt()
    gpu, cc = gpu_identity()
    return EngineHeader(tensorrt=trt.__version__, gpu=gpu, compute_capability=cc, onnx_sha256=onnx_sha256,
                        metadata=metadata, max_batch=max_batch)
