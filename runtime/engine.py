"""The neoseg TensorRT engine file: a magic, a JSON header saying what the engine was built for
(TensorRT version, GPU, compute capability, ONNX sha256, the model's metadata), then the
serialized engine. An engine runs only on the TensorRT version and GPU it was built for, so the
runtime compares the header with the machine before deserializing anything."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"NEOSEG-TRT-ENGINE/1\n"


class EngineMismatchError(RuntimeError):
    """The engine was built for another TensorRT version or GPU."""


@dataclass(frozen=True)
class EngineHeader:
    tensorrt: str  # TensorRT version that built the engine
    gpu: str  # GPU name
    compute_capability: str  # e.g. "9.0"
    onnx_sha256: str
    metadata: dict  # ModelInfo.to_metadata() of the ONNX model
    precision: str = "fp16"
    max_batch: int = 256

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def write_engine(path: str | Path, header: EngineHeader, engine: bytes) -> None:
    """Write header and engine to an open path (callers wrap this in ``atomic_path``)."""
    blob = header.to_json().encode()
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
        f.write(engine)


def is_engine(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_engine(path: str | Path) -> tuple[EngineHeader, bytes]:
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a neoseg TensorRT engine; build one with neoseg-export CHECKPOINT "
                         f"-o model.onnx --trt")
    (n,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    try:
        header = EngineHeader(**json.loads(data[start:start + n]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: damaged engine header ({e}); rebuild the engine") from None
    return header, data[start + n:]


def check_compatible(header: EngineHeader, path: str | Path, tensorrt: str, gpu: str,
                     compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU, in one actionable line."""
    built = (header.tensorrt, header.gpu, header.compute_capability)
    here = (tensorrt, gpu, compute_capability)
    if built != here:
        raise EngineMismatchError(
            f"{path} was built with TensorRT {built[0]} for {built[1]} (sm {built[2]}) but this machine has "
            f"TensorRT {here[0]} and {here[1]} (sm {here[2]}); rebuild it here: neoseg-export CHECKPOINT "
            f"-o model.onnx --trt")
