"""ONNX -> FP16 TensorRT engine (TensorRT 10 Python API), verified against ONNX Runtime FP32.

One optimization profile for 1..256 slices (optimised for 256) at the model's slice size, FP16,
a timing cache reused across builds, and LayerNorm/Softmax (and the reductions and powers of a
decomposed LayerNorm) pinned to FP32: in FP16 they overflow in TensorRT (SegFormer). The U-Net
has no such layer. Written against NVIDIA's documented API; not run in this project's CI, which
has no TensorRT (docs/inference.md says what has and has not been run on real TensorRT).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from neoseg.core.io import atomic_path
from neoseg.runtime.engine import write_engine
from neoseg.runtime.model import INPUT, ModelInfo
from neoseg.runtime.trt_backend import header_for, import_tensorrt

from .onnx_export import ParityError, ParityReport
from .parity import agreement

class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build the model, or the engine missed the parity target."""


FP16_DICE = 0.99  # the engine must agree with ONNX Runtime FP32 at least this well per structure
MAX_BATCH = 256


def fp32_layers(network, trt) -> list[str]:
    """Pin normalisation, softmax, reductions and powers to FP32; returns the pinned names."""
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type
        risky = kind in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
        if kind == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer  # the bindings return the base class; downcast to read .op
            risky = layer.op == trt.ElementWiseOperation.POW
        elif kind == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            risky = layer.op == trt.UnaryOperation.SQRT
        if risky:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            pinned.append(layer.name)
    return pinned


def build_engine(onnx_path: str | Path, info: ModelInfo, out: str | Path, timing_cache: str | Path | None = None,
                 max_batch: int = MAX_BATCH, verify_on: np.ndarray | None = None,
                 overwrite: bool = False) -> ParityReport | None:
    """Build, check and write the engine; nothing is written if any step fails."""
    trt = import_tensorrt()
    onnx_bytes = Path(onnx_path).read_bytes()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if fp32_layers(network, trt):
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    s = info.slice_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, 1, s, s), (max_batch, 1, s, s), (max_batch, 1, s, s))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    header = header_for(hashlib.sha256(onnx_bytes).hexdigest(), info.to_metadata(), max_batch)
    report = None
    with atomic_path(out, overwrite) as tmp:
        write_engine(tmp, header, bytes(engine))
        if verify_on is not None:
            report = compare_engine(tmp, onnx_path, info, verify_on)
            bad = report.failures(FP16_DICE)
            if bad:
                raise ParityError(f"FP16 engine disagrees with ONNX Runtime FP32 ({'; '.join(bad)}); "
                                   f"nothing was written")
    if cache_path:
        with atomic_path(cache_path, overwrite=True) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return report


def compare_engine(engine_path, onnx_path, info: ModelInfo, x: np.ndarray) -> ParityReport:
    """Per-structure Dice of the FP16 engine's masks against ONNX Runtime FP32's."""
    from neoseg.runtime.ort_backend import OrtBackend
    from neoseg.runtime.trt_backend import TensorRTBackend

    ref_backend, engine = OrtBackend(Path(onnx_path), "ort-cpu"), TensorRTBackend(Path(engine_path))
    ref = np.concatenate([ref_backend.run(x[i:i + 8]) for i in range(0, len(x), 8)])
    got = np.concatenate([engine.run(x[i:i + engine.max_batch]) for i in range(0, len(x), engine.max_batch)])
    t, h = info.logit_thresholds, info.hierarchy
    dice = agreement(h.masks(got, t, 1), h.masks(ref, t, 1), h.names, axis=1)
    return ParityReport("ONNX Runtime FP32", engine.name, len(x), float(np.abs(got - ref).max()), dice)
