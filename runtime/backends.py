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

from collections.abc import Callable
from pathlib import Path

from .backend import Backend, BackendUnavailable, fixed_precision
from .ort_backend import PROVIDERS as ORT_PROVIDERS
from .ort_backend import OrtBackend
from .precision import check_precision

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "OrtBackend", "open_backend", "provide"]

BACKENDS = ("auto", "ov-cpu", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch-cuda", "torch-cpu")
# Candidates of ``auto`` by model file kind, fastest first. ort-trt is left out: it builds an engine
# on first use (minutes); ``neoseg-export --trt`` builds it once instead. On the CPU OpenVINO comes
# first: as fast as ONNX Runtime or faster in FP32, and several times faster in BF16 (docs/inference.md).
AUTO = {"onnx": ("ort-cuda", "ov-cpu", "ort-cpu"), "engine": ("tensorrt",), "checkpoint": ("torch-cuda", "torch-cpu")}
KIND_LABEL = {"onnx": "an .onnx model", "engine": "a TensorRT engine from neoseg-export --trt",
              "checkpoint": "a .pt checkpoint"}
KIND_OF = {**{b: "onnx" for b in ORT_PROVIDERS}, "ov-cpu": "onnx", "tensorrt": "engine", "torch-cuda": "checkpoint",
           "torch-cpu": "checkpoint"}


# Backends that packages above the runtime provide, by name: (path, backend, threads, precision) ->
# Backend. The torch backends run training checkpoints and need the training code, which depends on
# the runtime and not the other way round: importing neoseg.train.torch_backend provides them.
Opener = Callable[[Path, str, "int | None", str], Backend]
_PROVIDED: dict[str, Opener] = {}


def provide(backends: tuple[str, ...], opener: Opener) -> None:
    """Let :func:`open_backend` open ``backends`` with ``opener``."""
    unknown = [b for b in backends if b not in KIND_OF]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; the runtime knows {', '.join(KIND_OF)}")
    _PROVIDED.update(dict.fromkeys(backends, opener))


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


# Top-level fields of ONNX's ModelProto every model has, with their protobuf wire types: ir_version
# (varint), graph and opset_import (length-delimited)
ONNX_REQUIRED = {1: 0, 7: 2, 8: 2}


def check_onnx(path: Path) -> None:
    """Refuse a damaged or truncated ``.onnx`` before any backend reads it (each would fail in its own
    words): its top-level protobuf fields must be well formed, end with the file, and include
    :data:`ONNX_REQUIRED`. Only field headers are read: no onnx package, no weights."""
    fields = _top_level_fields(path)
    if fields is None or any(fields.get(field) != wire for field, wire in ONNX_REQUIRED.items()):
        raise ValueError(f"{path} is damaged or truncated (not a valid ONNX file); export it again")


def _top_level_fields(path: Path) -> dict[int, int] | None:
    """Field number -> wire type of a protobuf message that fills the file ``path``; None where it
    is not one (a field runs past the end, or a header is invalid)."""
    size, fields = path.stat().st_size, {}
    with open(path, "rb") as f:
        while f.tell() < size:
            tag = _varint(f)
            wire = -1 if tag is None or tag < 8 else tag & 7
            if wire == 0:
                ok = _varint(f) is not None
            elif wire in (1, 2, 5):
                length = {1: 8, 5: 4}.get(wire) or _varint(f)
                ok = length is not None and f.seek(length, 1) <= size
            else:  # a group (never in ONNX) or no field at all
                ok = False
            if not ok:
                return None
            fields[tag >> 3] = wire
    return fields


def _varint(f) -> int | None:
    """A protobuf varint read from ``f``; None where the file ends first or it is overlong."""
    value = 0
    for shift in range(0, 64, 7):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


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
    if kind == "onnx":
        check_onnx(path)
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
    if backend not in _PROVIDED:
        raise BackendUnavailable(f"{backend} is provided by the training code, which is not loaded: "
                                 f"import neoseg.train.torch_backend first")
    return _PROVIDED[backend](path, backend, threads, precision)
