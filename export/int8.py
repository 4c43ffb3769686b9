"""INT8 at export: post-training quantisation with NNCF, gated by parity on whole scans.

The verified FP32 ``.onnx`` is read by OpenVINO and quantised by NNCF (8-bit weights per output
channel, 8-bit activations over their full calibrated range), calibrated on slices cut from scans
as the runtime cuts them (the same windows and min-max scaling, slices that hold head).
The result is an OpenVINO model beside the ``.onnx`` (``model.int8.xml``/``.bin``): OpenVINO is
the runtime's CPU path, and NNCF's OpenVINO backend keeps its quantisation as is (an ONNX QDQ graph
would be converted again at load). The ``.onnx`` stays the one file a user names: its metadata
records the INT8 model's name and digest (``neoseg.int8``) and the parity record ``int8``.

The gate runs what ``neoseg-infer`` runs: the runtime's OpenVINO backend in FP32 and in INT8 over
whole scans (:mod:`.scans`: the run's test sessions where its split is known, calibration on its
training sessions, never on a scan gated on), per-structure Dice of the masks pooled over the
scans (:mod:`.gate`, shared with BF16); the worst structure is stored, and ``--precision auto`` uses INT8 only at
:data:`~neoseg.runtime.precision.PARITY_DICE` or above. Where plain quantisation misses it, the
remedies of BF16 follow in turn (:data:`~.bf16.LEVELS`): the convolutions at full resolution left
unquantised (FP32), then those at half resolution too. The first to pass is kept, else the best.
(The first convolution and the head alone, tried before, passed on none of 21 models;
docs/int8.md.)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from neoseg.runtime.precision import PARITY_DICE, ParityRecord

from .gate import first_passing, runtime_parity
from .scans import Scans

CALIBRATION_PER_SCAN = 64  # slices per calibration scan, spread over the head


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise ImportError("INT8 export needs NNCF: pip install nncf (or pass --no-int8)") from None
    nncf.set_log_level(logging.ERROR)  # its notes on each layer left out
    return nncf


def quantize(model, calibration: np.ndarray, keep_fp32: list[str] = ()):
    """The OpenVINO ``model`` (of the verified ``.onnx``) quantised to INT8 by NNCF, calibrated on
    ``calibration`` ((N, 1, S, S) slices); the convolutions named in ``keep_fp32`` (names in ``model``:
    OpenVINO numbers unnamed nodes anew each time it reads a file) are left unquantised."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ignored = nncf.IgnoredScope(names=list(keep_fp32)) if keep_fp32 else None
    # activation ranges from the extremes over all calibration slices: NNCF's default (the mean over
    # slices of each one's extremes) clipped the brightest activations of slices holding more head
    # than the average one; on an early-stopped demo model the full range cut the 99th percentile of
    # the INT8 logits' error from 1.9 to 0.21 (docs/int8.md)
    full_range = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    data = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bars
        return nncf.quantize(model, data, subset_size=len(calibration), target_device=nncf.TargetDevice.CPU,
                             ignored_scope=ignored, advanced_parameters=full_range)


def int8_parity(onnx: Path, scans: Scans, detail: str, kept_fp32: list[str] = ()) -> ParityRecord:
    """The runtime's INT8 masks against its FP32 masks on ``scans``, the gate of :mod:`.gate`.
    ``onnx`` must name its INT8 model, which leaves the convolutions ``kept_fp32`` unquantised."""
    from neoseg.runtime.openvino_backend import OpenVinoBackend
    from neoseg.runtime.pipeline import Segmenter

    fp32, int8 = (Segmenter(OpenVinoBackend(onnx, precision=p)) for p in ("fp32", "int8"))
    return runtime_parity(fp32, int8, scans, f"{int8.backend.name.split(' [')[0]} int8, {detail}", tuple(kept_fp32))


def export_int8(onnx: Path, info, calibration: Scans, scans: Scans, log=print) -> ParityRecord:
    """Quantise the verified ``onnx`` (``info``: its model) to ``<stem>.int8.xml``/``.bin`` beside
    it, calibrated on ``calibration``, gate it on ``scans`` and record both in ``onnx``'s metadata:
    first plainly, then with each remedy of :data:`~.bf16.LEVELS` while the gate is missed; the
    first that passes is kept, else the best. The record names the scans of both. Callers choose
    the scans (:mod:`.scans`) and write into a staging folder: files are replaced."""
    import openvino as ov

    from .bf16 import LEVELS, remedies
    from .onnx_export import verification_slices

    nncf = import_nncf()
    x = verification_slices([image for image, _ in calibration.images], info, per_volume=CALIBRATION_PER_SCAN)
    xml = onnx.with_name(onnx.stem + ".int8.xml")
    base = f"NNCF {nncf.__version__}, {len(x)} calibration slices of {len(calibration)} scans ({calibration.source})"
    network = ov.Core().read_model(str(onnx))
    kept = remedies(network, info.slice_size, log, "int8")
    models = {}  # per remedy (0: plain)

    def measure(levels: int) -> ParityRecord:
        models[levels] = quantize(network, x, kept[levels])
        write_int8_model(onnx, xml, models[levels])
        return int8_parity(onnx, scans, base + (f", {LEVELS[levels]}" if levels else ""), kept[levels])

    best, levels, records = first_passing(list(kept), measure, lambda record, then: log(
        f"int8: {record.describe()} < {PARITY_DICE}; quantising again with the {LEVELS[then]}"))
    if best != levels:  # the model measured last is not the one kept
        write_int8_model(onnx, xml, models[best])
    record = replace(records[best], calibration_keys=calibration.keys)
    stored = json.loads(metadata(onnx)["neoseg.reduced_precision"])
    set_metadata(onnx, {"neoseg.reduced_precision": json.dumps({**stored, "int8": asdict(record)})})
    return record


def write_int8_model(onnx: Path, xml: Path, model) -> None:
    """Save the quantised OpenVINO ``model`` at ``xml`` and name it, with its digest, in ``onnx``."""
    from neoseg.runtime.openvino_backend import companion_digest

    save_openvino(model, xml, onnx)
    set_metadata(onnx, {"neoseg.int8": json.dumps({"xml": xml.name, "sha256": companion_digest(xml)})})


def save_openvino(model, xml: Path, onnx: Path) -> None:
    """``ov.save_model`` whose failure to write is an ``OSError`` naming ``xml``: OpenVINO raises a
    bare ``RuntimeError`` (``basic_ios::clear: iostream error``). Its usual cause is a full disk,
    taken as the cause where less space is left than the ``.onnx`` beside it holds (the partly
    written model has used up the rest)."""
    import errno
    import shutil

    import openvino as ov

    from neoseg.runtime.openvino_backend import reason

    try:
        ov.save_model(model, str(xml), compress_to_fp16=False)
    except RuntimeError as e:
        full = shutil.disk_usage(xml.parent).free < onnx.stat().st_size
        raise OSError(errno.ENOSPC if full else errno.EIO, f"OpenVINO could not save {xml.name} ({reason(e)})",
                      str(xml)) from None


def metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def set_metadata(path: Path, values: dict[str, str]) -> None:
    """Set entries of an ONNX model's ``metadata_props`` in place."""
    import onnx

    proto = onnx.load(str(path))
    merged = {p.key: p.value for p in proto.metadata_props} | values
    del proto.metadata_props[:]
    for key, value in merged.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
