"""Dice parity between inference paths on whole cohort volumes: torch FP32 (the training-side
reference, ``predict_volume``), ONNX Runtime and OpenVINO FP32 through the runtime (with and
without the head crop), every reduced-precision path this machine has (OpenVINO INT8/BF16/FP16 on
the CPU, torch CUDA FP16, a TensorRT engine), and BF16/FP16 emulated in FP32 (any CPU; also with the
usual remedies: output head, or first layer and head, in FP32). Reports per structure the Dice of
each path against torch FP32 (worst volume) with its worst structure, and each path's Dice
against the ground truth (mean), beside torch FP32's. ``--precision auto`` uses a reduced
precision only where it agrees >= 0.99 on every structure.

    python -m neoseg.benchmarks.parity --checkpoint best.pt [--data ROOT] [--engine m.engine] [--out DIR]

Without --data a small synthetic cohort is generated at the checkpoint's grid.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from neoseg.export.parity import agreement

from neoseg.runtime.cpu import cpu_features

from .common import cohort, machine, table, write_results

REFERENCE = "torch fp32"


def paths(ckpt: Path, onnx: Path, engine: Path | None, device: str, log=print) -> dict:
    """name -> Segmenter over the runtime backends available here."""
    from neoseg.export.reduced import REMEDIES, EmulatedBackend
    from neoseg.runtime.backends import BackendUnavailable, open_backend
    from neoseg.runtime.pipeline import Segmenter
    from neoseg.train import checkpoint
    from neoseg.train.torch_backend import open_checkpoint

    default = open_backend(onnx, "auto")  # what neoseg-infer -m model.onnx runs here, by the parity record
    log(f"  neoseg-infer default: {default.name}" + (f" ({default.note})" if default.note else ""))
    out = {f"neoseg-infer default ({default.name.split(' [')[0]} {default.precision})": Segmenter(default),
           "ort-cpu fp32": Segmenter(open_backend(onnx, "ort-cpu")),
           "ort-cpu fp32, all slices": Segmenter(open_backend(onnx, "ort-cpu"), skip_empty=False),
           "ort-cpu fp32, --crop-plane": Segmenter(open_backend(onnx, "ort-cpu"), crop_plane=True)}
    for precision in ("fp32", "int8", "bf16", "fp16"):
        try:
            out[f"ov-cpu {precision}"] = Segmenter(open_backend(onnx, "ov-cpu", precision=precision))
        except BackendUnavailable as e:
            log(f"  ov-cpu {precision}: not run here ({e})")
    loaded = checkpoint.load(ckpt)
    info = out["ort-cpu fp32"].info
    for precision in ("bf16", "fp16"):
        for remedy in (None, *REMEDIES):
            backend = EmulatedBackend(loaded.model, info, precision, REMEDIES[remedy] if remedy else (), remedy or "")
            out[backend.name] = Segmenter(backend)
    if device == "cuda":
        out["torch-cuda fp16 (runtime)"] = Segmenter(open_checkpoint(ckpt, "torch-cuda"))
    if engine is not None:
        out["tensorrt fp16 engine"] = Segmenter(open_backend(engine, "tensorrt"))
    return out


def run(ckpt: Path, sessions, engine: Path | None = None, device: str = "cpu", verify_on=None, calibrate_on=None,
        log=print) -> dict:
    """Per-structure Dice of every runtime path against strict-FP32 torch and against the truth, on
    ``sessions``; the export is verified (and its parity records measured) on the sessions
    ``verify_on``, by default on the checkpoint's first 2 training scans, and INT8 calibrated on
    ``calibrate_on``, by default the next 4, as neoseg-export does."""
    import torch

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # strict FP32 reference
    try:
        return _run(ckpt, sessions, engine, device, verify_on, calibrate_on, log)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _run(ckpt: Path, sessions, engine: Path | None, device: str, verify_on, calibrate_on, log) -> dict:
    import torch

    from neoseg.export.bf16 import export_bf16
    from neoseg.export.int8 import export_int8
    from neoseg.export.onnx_export import export_onnx, scan_sessions, verification_slices
    from neoseg.export.scans import Scans
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train import checkpoint
    from neoseg.train.evaluate import predict_volume
    from neoseg.train.volumes import load_canonical, load_labels

    loaded = checkpoint.load(ckpt)
    info = info_from_checkpoint(loaded)
    h = info.hierarchy
    onnx = Path(tempfile.mkdtemp(prefix="neoseg-parity-")) / "model.onnx"
    if verify_on is None or calibrate_on is None:
        pool = scan_sessions(loaded.config, None, "verify the export on", "pass --data ROOT")
        verify_on = pool[:2] if verify_on is None else verify_on
        calibrate_on = [s for s in pool if s.t2 not in {v.t2 for v in verify_on}][:4] if calibrate_on is None \
            else calibrate_on
    gate = Scans.load(verify_on, "chosen by the parity benchmark")
    report = export_onnx(loaded.model, info, onnx, verify_on=verification_slices([i for i, _ in gate.images], info))
    report.reduced["bf16"] = export_bf16(onnx, loaded.model, gate, log=lambda m: log(f"  export: {m}"))
    calibration = Scans.load(calibrate_on, "chosen by the parity benchmark, none gated on")
    report.reduced["int8"] = export_int8(onnx, info, calibration, gate, log=lambda m: log(f"  export: {m}"))
    for line in report.lines():
        log(f"  export: {line}")
    runners = paths(ckpt, onnx, engine, device, log)
    model = loaded.model.to(device)
    vs_ref = {name: [] for name in runners}
    vs_truth = {name: [] for name in [REFERENCE, *runners]}
    for s in sessions:
        image, img = load_canonical(s.t2, np.float32)
        labels, _ = load_labels(s.labels)
        truth = (h.encode(labels) == 1)
        with torch.no_grad():
            ref = h.masks(predict_volume(model, image, h, info.axis, info.slice_size, device=device), info.thresholds)
        vs_truth[REFERENCE].append(agreement(ref, truth, h.names))
        for name, runner in runners.items():
            seg = runner.segment(image, img.affine, img.header.get_zooms()[:3])  # already canonical
            masks = np.moveaxis(seg.masks, -1, 0)
            vs_ref[name].append(agreement(masks, ref, h.names))
            vs_truth[name].append(agreement(masks, truth, h.names))
        log(f"  {s.key}: " + ", ".join(f"{n} min Dice vs torch {min(vs_ref[n][-1].values()):.4f}" for n in runners))
    result = {"machine": machine() | {"cpu_features": cpu_features()}, "device": device, "checkpoint": str(ckpt),
              "volumes": [s.key for s in sessions],
              "parity_records": {p: asdict(r) for p, r in report.reduced.items()},
              "dice_vs_torch_fp32_worst": {n: _worst(v) for n, v in vs_ref.items()},
              "dice_vs_truth_mean": {n: _mean(v) for n, v in vs_truth.items()}}
    return result


def _worst(rows: list[dict]) -> dict:
    return {k: min(r[k] for r in rows) for k in rows[0]}


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def markdown(result: dict) -> str:
    m = result["machine"]
    names = list(result["dice_vs_truth_mean"][REFERENCE])
    text = f"Machine: {m.get('gpu', m['cpu'])} ({m['cores']} CPU cores; OpenVINO capabilities " \
           f"{', '.join(m.get('cpu_capabilities', []))}), {len(result['volumes'])} volumes\n\n"
    text += f"CPU features: {', '.join(result['machine'].get('cpu_features', [])) or 'unknown'}\n\n"
    text += "Parity record stored at export (gates --precision auto at >= 0.99):\n\n" + table(
        ["precision", "worst structure", "Dice vs FP32", "slices", "measured with"],
        [[p, r["worst"], r["min_dice"], r["slices"], r["measured_with"]] for p, r in result["parity_records"].items()])
    text += "\n"
    text += "Per-structure Dice against torch FP32 (worst volume):\n\n" + table(
        ["path", "worst structure", *names],
        [[p, f"{min(d, key=d.get)} {min(d.values()):.4f}", *d.values()]
         for p, d in result["dice_vs_torch_fp32_worst"].items()])
    text += "\nPer-structure Dice against ground truth (mean over volumes):\n\n" + table(
        ["path", *names], [[p, *d.values()] for p, d in result["dice_vs_truth_mean"].items()])
    return text


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, help="dHCP-layout folder; default: a generated synthetic cohort")
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--engine", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    from neoseg.train import checkpoint

    loaded = checkpoint.load(args.checkpoint)
    grid = int(round(128 / loaded.spacing[0]))
    sessions = cohort(args.data, max(2, args.volumes), grid)[-args.volumes:]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # as neoseg-export --data ROOT --calibration-data ROOT: verified on the first 2 scans, calibrated on the next 4
    first = None if args.data is None else cohort(args.data, 6, grid)
    verify_on, calibrate_on = (None, None) if first is None else (first[:2], first[2:6])
    result = run(args.checkpoint, sessions, args.engine, device, verify_on, calibrate_on)
    write_results(args.out, f"parity-{device}", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
