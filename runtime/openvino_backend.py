"""OpenVINO on the CPU: the same self-describing ``.onnx`` file, read directly, in FP32 or, where
the CPU has the units, BF16 (AVX-512 BF16 / AMX), FP16 (AVX-512 FP16 / AMX-FP16, ARM) or INT8 (AMX-INT8,
AVX-512 VNNI, AVX-VNNI, AVX2). INT8 runs the quantised OpenVINO model ``neoseg-export`` writes beside
the ``.onnx`` (``model.int8.xml``/``.bin``), named with its digest in the ``.onnx``'s metadata;
BF16 likewise runs ``model.bf16.xml`` where the export wrote one (its full-resolution
convolutions marked to stay FP32), else the ``.onnx``.

OpenVINO picks BF16 by itself on CPUs that have it, and quietly runs FP32 when asked for a
precision the CPU lacks; this backend sets the precision explicitly, asks the CPU plugin what it
can run beforehand, and checks what the compiled model actually uses afterwards.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from neoseg.core.io import files_digest

from .backend import Backend, BackendUnavailable
from .cpu import cpu_flags, physical_cores
from .model import ModelInfo
from .precision import choose, int8_unit

# INT8 compiles with an FP32 hint: the quantised convolutions run in INT8, whatever the model kept
# unquantised in FP32, as at export where its parity was measured
HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
CAPABILITY = {"int8": "INT8", "bf16": "BF16", "fp16": "FP16"}


def cpu_precisions(core) -> tuple[list[str], list[str]]:
    """(precisions this CPU runs with OpenVINO, fp32 first; the plugin's raw capabilities). INT8
    counts only with one of :data:`~.precision.INT8_UNITS` (OpenVINO lists INT8 on every CPU)."""
    caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    runs = [p for p, c in CAPABILITY.items() if c in caps and (p != "int8" or int8_unit(cpu_flags()))]
    return ["fp32"] + runs, caps


def companion_digest(xml: Path) -> str:
    """SHA-256 of an OpenVINO model's ``.xml`` and ``.bin``: binds the INT8 model to its ``.onnx``."""
    return files_digest(xml, xml.with_suffix(".bin"))


def companion(path: Path, info: ModelInfo, precision: str) -> tuple[Path | None, str]:
    """(the OpenVINO model ``precision`` ('int8' or 'bf16') runs beside the ``.onnx`` ``path``, or
    None; why not). A model without a BF16 companion runs BF16 from the ``.onnx`` itself."""
    entry = json.loads(getattr(info, precision))
    if not entry.get("xml") or not entry.get("sha256"):
        if precision == "bf16":
            return path, ""
        return None, f"{path.name} has no INT8 model (re-export it with neoseg-export, which quantises by default)"
    xml, name = path.parent / entry["xml"], precision.upper()
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        return None, f"{xml.name} and its .bin are not beside {path.name} (copy them along with it)"
    if companion_digest(xml) != entry["sha256"]:
        return None, f"{xml.name} is not the {name} model exported with {path.name} (its digest differs; re-export)"
    return xml, ""


def slow_precisions() -> dict[str, str]:
    """Precisions this CPU runs but no faster than FP32, with the reason (``auto`` skips them).
    OpenVINO offers FP16 on x86 CPUs with AVX-512 FP16, but without AMX-FP16 tiles its FP16
    convolutions ran slower than FP32 on our Xeon (docs/inference.md, "CPU inference: OpenVINO, BF16 and --precision"); ARM CPUs run FP16
    natively."""
    if platform.machine().lower() in ("aarch64", "arm64") or "amx_fp16" in cpu_flags():
        return {}
    return {"fp16": "this CPU has no AMX-FP16 units, so FP16 is no faster than FP32 here (ask for it with "
                    "--precision fp16)"}


class OpenVinoBackend(Backend):
    """``precision`` 'auto' (the fastest this CPU runs that the model's parity record allows),
    'fp32', 'int8', 'bf16' or 'fp16'. ``note`` says why the precision was chosen."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "auto"):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("OpenVINO is not installed: pip install openvino") from None
        core = ov.Core()
        model = _read(core, path)
        framework = model.get_rt_info()["framework"] if model.has_rt_info("framework") else {}  # metadata_props
        meta = {k: v.astype(str) if hasattr(v, "astype") else str(v) for k, v in dict(framework).items()}
        self.info = ModelInfo.from_metadata(meta, str(path))
        supported, caps = cpu_precisions(core)
        unit = f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}; OpenVINO capabilities {', '.join(caps)})"
        skip, files, missing = slow_precisions(), {}, {}
        for p in ("int8", "bf16"):  # the OpenVINO models exported beside the .onnx for them
            if p in supported and precision in ("auto", p):
                files[p], missing[p] = companion(Path(path), self.info, p)
                if missing[p]:
                    skip[p] = missing[p]
        try:
            self.precision, why = choose(supported, self.info.parity_records, precision, unit, skip)
        except ValueError as e:
            raise BackendUnavailable(str(e)) from None
        self.note = "" if why == "requested" else why
        if self.precision in files:
            if files[self.precision] is None:
                raise BackendUnavailable(f"cannot run {self.precision}: {missing[self.precision]}")
            if self.precision == "int8":
                self.note += ("; " if self.note else "") + f"INT8 units: {int8_unit(cpu_flags())}"
            if files[self.precision] != Path(path):
                model = _read(core, files[self.precision])
        config = {"INFERENCE_PRECISION_HINT": HINT[self.precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or physical_cores()}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise BackendUnavailable(f"OpenVINO could not compile {path} for the CPU in {self.precision}: "
                                     f"{reason(e)}") from None
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if ran != HINT[self.precision]:  # e.g. a bf16 request on a CPU the plugin misjudged
            raise BackendUnavailable(f"OpenVINO compiled the model in {ran}, not the requested {self.precision}")
        if self.precision == "int8" and not int8_convolutions(self.compiled):
            raise BackendUnavailable("OpenVINO compiled the INT8 model without INT8 convolutions on this CPU "
                                     "(they would run emulated, slower than FP32); use --precision fp32")
        kept = json.loads(self.info.bf16).get("fp32", []) if self.precision == "bf16" else []
        ran_bf16 = [k for k in kept if k not in fp32_convolutions(self.compiled)]
        if ran_bf16:  # its parity record was measured with them in FP32
            raise BackendUnavailable(f"OpenVINO ran {', '.join(ran_bf16)} in bf16, though the model keeps them in "
                                     f"FP32 (this OpenVINO ignores the 'precise' mark); use --precision fp32")
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


def _read(core, path: Path):
    try:
        return core.read_model(str(path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        raise BackendUnavailable(f"OpenVINO could not read {path} ({reason(e)}); if it is damaged, export it "
                                 f"again") from None


def reason(e: Exception) -> str:
    """The first line of an OpenVINO error that says something: its first lines only name the
    source files the exception passed through (``Exception from src/...:84:``)."""
    lines = [line.strip() for line in str(e).splitlines()]
    said = [line for line in lines if line and not line.startswith("Exception from ")]
    return said[0] if said else "no reason given"


def convolutions(compiled) -> list[tuple[list[str], str]]:
    """(the source layers fused into it, its runtime precision) of each convolution of a compiled model."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("Convolution", "Deconvolution"):
            out.append((rt["originalLayersNames"].astype(str).split(","), rt["runtimePrecision"].astype(str)))
    return out


def fp32_convolutions(compiled) -> set[str]:
    """The source layers of the convolutions a compiled model runs in FP32."""
    return {name for names, p in convolutions(compiled) if p == "f32" for name in names}


def int8_convolutions(compiled) -> int:
    """How many convolutions of a compiled model run on 8-bit integers."""
    return sum(p in ("u8", "i8") for _, p in convolutions(compiled))
