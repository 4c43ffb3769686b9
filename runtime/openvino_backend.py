"""OpenVINO on the CPU: the same self-describing ``.onnx`` file, read directly, in FP32 or, where
the CPU has the units, BF16 (AVX-512 BF16 / AMX) or FP16 (AVX-512 FP16 / AMX-FP16, ARM).

OpenVINO picks BF16 by itself on CPUs that have it, and quietly runs FP32 when asked for a
precision the CPU lacks; this backend sets the precision explicitly, asks the CPU plugin what it
can run beforehand, and checks what the compiled model actually uses afterwards.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .backend import Backend, BackendUnavailable
from .cpu import cpu_flags, physical_cores
from .model import ModelInfo
from .precision import choose

HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def cpu_precisions(core) -> tuple[list[str], list[str]]:
    """(precisions this CPU runs with OpenVINO, fp32 first; the plugin's raw capabilities)."""
    caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return ["fp32"] + [p for p, c in CAPABILITY.items() if c in caps], caps


def slow_precisions() -> dict[str, str]:
    """Precisions this CPU runs but no faster than FP32, with the reason (``auto`` skips them).
    OpenVINO offers FP16 on x86 CPUs with AVX-512 FP16, but without AMX-FP16 tiles its FP16
    convolutions ran slower than FP32 on our Xeon (README, "CPU inference"); ARM CPUs run FP16
    natively."""
    if platform.machine().lower() in ("aarch64", "arm64") or "amx_fp16" in cpu_flags():
        return {}
    return {"fp16": "this CPU has no AMX-FP16 units, so FP16 is no faster than FP32 here (ask for it with "
                    "--precision fp16)"}


class OpenVinoBackend(Backend):
    """``precision`` 'auto' (the fastest this CPU runs that the model's parity record allows),
    'fp32', 'bf16' or 'fp16'. ``note`` says why the precision was chosen."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "auto"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("OpenVINO is not installed: pip install openvino") from None
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise BackendUnavailable(f"OpenVINO could not read {path}: {str(e).splitlines()[0]}") from None
        framework = model.get_rt_info()["framework"] if model.has_rt_info("framework") else {}  # metadata_props
        meta = {k: v.astype(str) if hasattr(v, "astype") else str(v) for k, v in dict(framework).items()}
        self.info = ModelInfo.from_metadata(meta, str(path))
        supported, caps = cpu_precisions(core)
        unit = f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}; OpenVINO capabilities {', '.join(caps)})"
        try:
            self.precision, why = choose(supported, self.info.parity_records, precision, unit, slow_precisions())
        except ValueError as e:
            raise BackendUnavailable(str(e)) from None
        self.note = "" if why == "requested" else why
        config = {"INFERENCE_PRECISION_HINT": HINT[self.precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or physical_cores()}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise BackendUnavailable(f"OpenVINO could not compile {path} for the CPU in {self.precision}: "
                                     f"{str(e).splitlines()[0]}") from None
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if ran != HINT[self.precision]:  # e.g. a bf16 request on a CPU the plugin misjudged
            raise BackendUnavailable(f"OpenVINO compiled the model in {ran}, not the requested {self.precision}")
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        self.name = f"openvino {ov.get_version().split('-')[0]} [CPU] {self.precision}"
        self.batch = 8  # as ONNX Runtime on CPU: the same speed as larger batches, far less memory
        if not self.info.flexible:
            self.fixed_size = self.info.slice_size

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits in OpenVINO's output buffer: valid until the next call (the pipeline decodes
        them at once, so a 23 MB copy per batch of 8 256^2 slices is saved)."""
        self.request.infer({0: np.ascontiguousarray(x, np.float32)}, share_inputs=True, share_outputs=True)
        return self.request.get_tensor(self.output).data
