"""BF16 at export: its parity gate on whole held-out scans through the runtime, and, where plain
BF16 misses it, a BF16 OpenVINO model whose full-resolution convolutions stay in FP32.

Why BF16 misses the gate (docs/reduced-precision.md, nine small trained U-Nets): no activation
overflows or underflows BF16 (all within ±60); its 8-bit mantissa moves the logits by about 0.01
(median), and voxels whose FP32 logit lies that close to the threshold flip. The largest single
source is the first convolution: its input is the image itself, rounded to 8 bits, and it forms
differences of neighbouring intensities, which amplifies that rounding; the last decoder stage and
the head, which draw the boundaries at full resolution, come next. Keeping the convolutions whose
output has the input's in-plane size in FP32 (first encoder stage, last decoder stage, head: a
fifth of the U-Net's multiply-adds) cut the flipped voxels 2-4 fold on every model measured.

OpenVINO's CPU plugin runs a node in its original precision under a BF16 hint when the node carries
the ``precise`` runtime attribute (``ov::disable_fp16_compression``, honoured for BF16 since
OpenVINO 2024.0). Python cannot attach that attribute, so it is written into the model's IR: the
result is ``<stem>.bf16.xml``/``.bin`` beside the ``.onnx``, named with its digest and its FP32
layers in the ``.onnx``'s metadata (``neoseg.bf16``); the runtime checks after compiling that they
do run in FP32.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict
from pathlib import Path

from neoseg.runtime.precision import PARITY_DICE, ParityRecord

from .gate import runtime_parity

CONVOLUTIONS = ("Convolution", "ConvolutionBackpropData")
REMEDY = "full-resolution convolutions in FP32"


def full_resolution(model, size: int) -> list[str]:
    """Names of the convolutions of an OpenVINO ``model`` whose output has its input's in-plane
    size ``size``: the first encoder stage, the last decoder stage and the head of a U-Net."""
    static = model.clone()
    static.reshape({0: [1, 1, size, size]})
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS]
    shapes = [op.output(0).get_partial_shape() for op in static.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS]
    return [op.get_friendly_name() for op, shape in zip(ops, shapes)
            if shape[2].get_length() == size and shape[3].get_length() == size]


def write_bf16_model(onnx: Path, xml: Path, size: int) -> list[str]:
    """Write the OpenVINO model of ``onnx`` to ``xml`` (and its .bin) with its
    :func:`full_resolution` convolutions marked ``precise``; their names."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx))
    kept = full_resolution(model, size)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    tree = ElementTree.parse(xml)
    layers = {layer.get("name"): layer for layer in tree.getroot().iter("layer")}
    for name in kept:
        rt_info = layers[name].find("rt_info")
        if rt_info is None:
            rt_info = ElementTree.SubElement(layers[name], "rt_info")
        ElementTree.SubElement(rt_info, "attribute", name="precise", version="0")
    tree.write(xml)
    return kept


def export_bf16(onnx: Path, model, scans: list, log=print) -> ParityRecord:
    """Gate BF16 of the verified ``onnx`` on ``scans`` ((canonical array, NIfTI image) pairs) and
    record it in its metadata; where plain BF16 misses the gate, write ``<stem>.bf16.xml`` with the
    :data:`REMEDY` and gate that. The better of the two is kept (the file is removed where plain
    BF16 was better). On a CPU without BF16 units BF16 is emulated in torch (``model``, the
    checkpoint's network) through the same runtime path."""
    import openvino as ov

    from neoseg.runtime.openvino_backend import OpenVinoBackend, companion_digest, cpu_precisions
    from neoseg.runtime.pipeline import Segmenter

    from .int8 import metadata, set_metadata
    from .reduced import EmulatedBackend, full_resolution_layers

    real = "bf16" in cpu_precisions(ov.Core())[0]
    fp32 = Segmenter(OpenVinoBackend(onnx, precision="fp32"))
    info, xml = fp32.info, onnx.with_name(onnx.stem + ".bf16.xml")
    records = {}
    for remedy in (False, True):
        kept = write_bf16_model(onnx, xml, info.slice_size) if remedy else []
        set_metadata(onnx, {"neoseg.bf16": json.dumps(
            {"xml": xml.name, "sha256": companion_digest(xml), "fp32": kept} if remedy else {})})
        if real:
            backend = OpenVinoBackend(onnx, precision="bf16")
            what = f"{backend.name.split(' [')[0]} bf16"
        else:
            backend = EmulatedBackend(model, info, "bf16", full_resolution_layers(model, info.slice_size) if remedy
                                      else ())
            what = backend.name
        records[remedy] = runtime_parity(fp32, Segmenter(backend), scans, what + (f", {REMEDY}" if remedy else ""),
                                         tuple(kept))
        if records[remedy].passed:
            break
        if not remedy:
            log(f"bf16: {records[remedy].describe()} < {PARITY_DICE}; measuring again with the {REMEDY}")
    record = max(records.values(), key=lambda r: (r.passed, r.min_dice))
    if not record.kept_fp32:  # plain BF16 is kept: the .onnx runs it
        set_metadata(onnx, {"neoseg.bf16": "{}"})
        xml.unlink(missing_ok=True), xml.with_suffix(".bin").unlink(missing_ok=True)
    stored = json.loads(metadata(onnx)["neoseg.reduced_precision"])
    set_metadata(onnx, {"neoseg.reduced_precision": json.dumps({**stored, "bf16": asdict(record)})})
    return record
