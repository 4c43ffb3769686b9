"""BF16 at export: its parity gate on whole scans through the runtime (:mod:`.scans`), and, where plain
BF16 misses it, a BF16 OpenVINO model whose full-resolution convolutions stay in FP32.

Why BF16 misses the gate (docs/reduced-precision.md, nine small trained U-Nets): no activation
overflows or underflows BF16 (all within ±60); its 8-bit mantissa moves the logits by about 0.01
(median), and voxels whose FP32 logit lies that close to the threshold flip. The largest single
source is the first convolution: its input is the image itself, rounded to 8 bits, and it forms
differences of neighbouring intensities, which amplifies that rounding; the rest is spread over
the layers. Keeping the convolutions whose output has the input's in-plane size in FP32 (first
encoder stage, last decoder stage, head: a fifth of the U-Net's multiply-adds) cut the flipped
voxels 2.5-3.7 fold on every model measured; the half-resolution level is the next step.

OpenVINO's CPU plugin runs a node in its original precision under a BF16 hint when the node carries
the ``precise`` runtime attribute (``ov::disable_fp16_compression``; openvinotoolkit/openvino
PR 21440, checked on OpenVINO 2026.4.1). Python cannot attach that attribute, so it is written into the model's IR: the
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

from .gate import first_passing, runtime_parity
from .scans import Scans

CONVOLUTIONS = ("Convolution", "ConvolutionBackpropData")
# the remedies, cheapest first: the convolutions of the top 1 or 2 resolution levels in FP32 (a U-Net
# spends about as much on each level: 22 % and 46 % of the multiply-adds of the 5-level U-Net)
LEVELS = {1: "full-resolution convolutions in FP32", 2: "full- and half-resolution convolutions in FP32"}


def full_resolution(model, size: int, levels: int = 1) -> list[str]:
    """Names of the convolutions of an OpenVINO ``model`` whose output keeps at least its input's
    in-plane size ``size`` halved ``levels - 1`` times: with 1 level the first encoder stage, the
    last decoder stage and the head of a U-Net."""
    static = model.clone()
    static.reshape({0: [1, 1, size, size]})
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS]
    shapes = [op.output(0).get_partial_shape() for op in static.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS]
    least = size >> (levels - 1)
    return [op.get_friendly_name() for op, shape in zip(ops, shapes)
            if shape[2].get_length() >= least and shape[3].get_length() >= least]


def remedies(model, size: int, log=print, what: str = "") -> dict[int, list[str]]:
    """The remedies worth measuring, by level (0: none): each level of :data:`LEVELS` with its
    :func:`full_resolution` convolutions, where it keeps some, more than the level before, and not
    all of them (that model would be FP32). A SegFormer, whose first convolution has stride 4, has
    none at full resolution. Each level left out is logged (``what``: the precision's name)."""
    total = sum(op.get_type_name() in CONVOLUTIONS for op in model.get_ordered_ops())
    chosen, last = {0: []}, []
    for level, name in LEVELS.items():
        kept = full_resolution(model, size, level)
        why = ("keeps no convolution" if not kept else "keeps the same convolutions as the one before"
               if kept == last else f"keeps all {total} convolutions in FP32" if len(kept) >= total else "")
        if why:
            log(f"{what}: no remedy with the {name}: it {why}")
            continue
        chosen[level], last = kept, kept
    return chosen


def write_bf16_model(onnx: Path, xml: Path, size: int, levels: int = 1) -> list[str]:
    """Write the OpenVINO model of ``onnx`` to ``xml`` (and its .bin) with its
    :func:`full_resolution` convolutions marked ``precise``; their names."""
    import openvino as ov

    from .int8 import save_openvino

    model = ov.Core().read_model(str(onnx))
    kept = full_resolution(model, size, levels)
    save_openvino(model, xml, onnx)
    tree = ElementTree.parse(xml)
    layers = {layer.get("name"): layer for layer in tree.getroot().iter("layer")}
    for name in kept:
        rt_info = layers[name].find("rt_info")
        if rt_info is None:
            rt_info = ElementTree.SubElement(layers[name], "rt_info")
        ElementTree.SubElement(rt_info, "attribute", name="precise", version="0")
    tree.write(xml)
    return kept


def export_bf16(onnx: Path, model, scans: Scans, log=print) -> ParityRecord:
    """Gate BF16 of the verified ``onnx`` on ``scans`` and record it in its metadata; where plain
    BF16 misses the gate, write ``<stem>.bf16.xml`` with the remedies of :data:`LEVELS` in turn and
    gate each. The first to pass is kept, else the best one (the file is removed where plain BF16
    was best). On a CPU without BF16 units BF16 is emulated in torch (``model``, the checkpoint's
    network) through the same runtime path."""
    import openvino as ov

    from neoseg.runtime.openvino_backend import OpenVinoBackend, companion_digest, cpu_precisions
    from neoseg.runtime.pipeline import Segmenter

    from .int8 import metadata, set_metadata
    from .reduced import EmulatedBackend, full_resolution_layers

    real = "bf16" in cpu_precisions(ov.Core())[0]
    fp32 = Segmenter(OpenVinoBackend(onnx, precision="fp32"))
    info, xml = fp32.info, onnx.with_name(onnx.stem + ".bf16.xml")
    levels_worth = remedies(ov.Core().read_model(str(onnx)), info.slice_size, log, "bf16")
    files = {}  # per remedy (0: plain), its model's entry in the metadata

    def measure(levels: int) -> ParityRecord:
        kept = write_bf16_model(onnx, xml, info.slice_size, levels) if levels else []
        files[levels] = {"xml": xml.name, "sha256": companion_digest(xml), "fp32": kept} if levels else {}
        set_metadata(onnx, {"neoseg.bf16": json.dumps(files[levels])})
        if real:
            backend = OpenVinoBackend(onnx, precision="bf16")
            what = f"{backend.name.split(' [')[0]} bf16"
        else:
            layers = full_resolution_layers(model, info.slice_size, levels) if levels else ()
            backend = EmulatedBackend(model, info, "bf16", layers)
            what = backend.name
        return runtime_parity(fp32, Segmenter(backend), scans, what + (f", {LEVELS[levels]}" if levels else ""),
                              tuple(kept))

    best, levels, records = first_passing(list(levels_worth), measure, lambda record, then: log(
        f"bf16: {record.describe()} < {PARITY_DICE}; measuring again with the {LEVELS[then]}"))
    record = records[best]
    if best != levels:  # the model measured last is not the one kept
        if best:
            write_bf16_model(onnx, xml, info.slice_size, best)
            files[best]["sha256"] = companion_digest(xml)
        set_metadata(onnx, {"neoseg.bf16": json.dumps(files[best])})
    if not best:  # plain BF16: the .onnx runs it
        xml.unlink(missing_ok=True), xml.with_suffix(".bin").unlink(missing_ok=True)
    stored = json.loads(metadata(onnx)["neoseg.reduced_precision"])
    set_metadata(onnx, {"neoseg.reduced_precision": json.dumps({**stored, "bf16": asdict(record)})})
    return record
