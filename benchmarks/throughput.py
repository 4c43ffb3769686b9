"""Throughput per backend and precision, each with its ratio to plain eager PyTorch FP32 measured
in the same run on the same device:

- network only: ms per 256-slice volume of full slices (slice_size^2) and slices/s;
- end to end: seconds per scan from reading the NIfTI to writing the results (neoseg-infer's path),
  with its breakdown (read, resample, preprocess, network, postprocess, write), the host path
  (all but the network) and its ratio to the network, for each precision OpenVINO runs on this
  CPU and for what ``--precision auto`` picks.

The report names the CPU's features that decide the precisions (AMX, AVX-512 VNNI/BF16/FP16, ...).
The INT8 model is quantised as ``neoseg-export`` does, but calibrated and gated on the benchmark scan
itself: its parity record here says nothing about a model's (see the parity benchmark).

    python -m neoseg.benchmarks.throughput [--scan T2.nii.gz] [--checkpoint best.pt] [--out DIR]

Without --scan a 256^3 synthetic scan is generated; without --checkpoint the default U-Net
(widths 16..256, 256^2 slices, untrained: weights do not change the time) is used.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from neoseg.runtime.backend import Backend

from .common import cohort, default_checkpoint, host_seconds, machine, median_seconds, table, write_results

BASELINE = "torch eager fp32"


class EagerTorch(Backend):
    """Plain eager PyTorch, the model exactly as trained: the baseline of every ratio."""

    def __init__(self, model, info, device, batch):
        import torch

        self.torch, self.model, self.info, self.device, self.batch = torch, model, info, device, batch
        self.name = f"torch {torch.__version__} eager fp32 {device}"

    def run(self, x):
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def torch_variants(ckpt: Path, device: str, compile_modes: list[str]) -> dict:
    """name -> (callable on a device tensor, input dtype, channels_last)."""
    import torch

    from neoseg.train.torch_backend import fold_batchnorm, open_checkpoint
    from neoseg.train import checkpoint

    def model():
        return checkpoint.load(ckpt).model.eval().to(device)

    cl = torch.channels_last
    out = {BASELINE: (model(), torch.float32, False)}
    from neoseg.train.precision import cpu_has_bf16

    if device == "cpu" and cpu_has_bf16():  # PyTorch's own BF16 path, beside OpenVINO's
        bf16_net = model().to(memory_format=cl)

        def bf16(x, net=bf16_net):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x)

        out["torch bf16 autocast channels-last"] = (bf16, torch.float32, True)
    if device == "cuda":
        half = torch.float16
        out["torch eager fp16 channels-last"] = (model().to(half, memory_format=cl), half, True)
        out["torch fp16 channels-last, BN folded"] = (fold_batchnorm(model()).to(half, memory_format=cl), half, True)
        graph = open_checkpoint(ckpt, "torch-cuda")  # the runtime's torch backend: + one CUDA graph per shape

        def replay(x, graph=graph):
            g, static_in, static_out = graph._capture(tuple(x.shape))
            g.replay()
            return static_out

        out["torch fp16 channels-last, BN folded, CUDA graph (runtime)"] = (replay, half, True)
        for mode in compile_modes:
            compiled = torch.compile(fold_batchnorm(model()).to(half, memory_format=cl), mode=mode)
            out[f"torch.compile fp16 channels-last ({mode})"] = (compiled, half, True)
    return out


def network_only(ckpt: Path, onnx: Path | None, engine: Path | None, images: np.ndarray, device: str,
                 compile_modes: list[str], repeats: int, log=print) -> list[dict]:
    import torch

    batch = 256 if device == "cuda" else 8
    rows = []
    sync = torch.cuda.synchronize if device == "cuda" else None
    for name, (fn, dtype, channels_last) in torch_variants(ckpt, device, compile_modes).items():
        x = torch.from_numpy(images).to(device, dtype)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x

        def volume(fn=fn, x=x):
            with torch.inference_mode():
                for i in range(0, len(x), batch):
                    fn(x[i:i + batch])

        start = time.perf_counter()
        seconds = median_seconds(volume, repeats, warmup=2 if "compile" in name else 1, sync=sync)
        rows.append({"path": name, "seconds": seconds, "setup_s": time.perf_counter() - start - seconds * repeats})
        log(f"  {name}: {seconds * 1000:.1f} ms per volume")
    from neoseg.runtime.backends import open_backend

    from neoseg.runtime.backends import BackendUnavailable

    for label, path, kind, precision in (("onnxruntime cpu fp32", onnx, "ort-cpu", "fp32"),
                                         ("openvino cpu fp32", onnx, "ov-cpu", "fp32"),
                                         ("openvino cpu int8", onnx, "ov-cpu", "int8"),
                                         ("openvino cpu bf16", onnx, "ov-cpu", "bf16"),
                                         ("openvino cpu fp16", onnx, "ov-cpu", "fp16"),
                                         ("tensorrt fp16 engine", engine, "tensorrt", "auto")):
        if path is None:
            continue
        try:
            backend = open_backend(path, kind, precision=precision)
        except BackendUnavailable as e:
            log(f"  {label}: not run here ({e})")
            continue
        if backend.fixed_size is None or backend.fixed_size == images.shape[-1]:
            def volume(backend=backend):
                for i in range(0, len(images), backend.batch):
                    backend.run(images[i:i + backend.batch])

            seconds = median_seconds(volume, 1 if kind in ("ort-cpu", "ov-cpu") else repeats)
            rows.append({"path": f"{label} (host in/out)", "seconds": seconds})
            log(f"  {label}: {seconds * 1000:.1f} ms per volume")
    base = next(r["seconds"] for r in rows if r["path"] == BASELINE)
    for r in rows:
        r.update(ms_per_volume=r["seconds"] * 1000, slices_per_s=len(images) / r["seconds"],
                 speedup_vs_eager_fp32=base / r["seconds"])
    return rows


def end_to_end(scan: Path, runners: dict, repeats: int, warmup: int = 1, log=print) -> list[dict]:
    """Seconds per scan through neoseg-infer's path for each runner (a Segmenter); ``warmup``
    runs first (cuDNN's algorithm choice, CUDA graph capture) are reported apart."""
    from neoseg.runtime.files import segment_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, runner in runners.items():
            slow = any(cpu in runner.backend.name for cpu in ("CPUExecutionProvider", " cpu", "[CPU]"))
            n, warm = (1, 0) if slow else (repeats, warmup)  # seconds per run on a CPU: once is enough
            runs = []
            for _ in range(n + warm):
                start = time.perf_counter()
                _, seg = segment_file(scan, runner, tmp, overwrite=True)
                runs.append((time.perf_counter() - start, seg))
            total, seg = sorted(runs[warm:], key=lambda r: r[0])[n // 2]
            host = host_seconds(seg.timings)
            rows.append({"path": name, "backend": runner.backend.name, "seconds": total, "first_run_s": runs[0][0],
                         "slices_computed": seg.computed_slices, **{f"{k}_s": v for k, v in seg.timings.items()},
                         "host_s": host, "host_per_network": host / max(seg.timings["network"], 1e-9)})
            log(f"  {name}: {total:.2f} s per scan ({', '.join(f'{k} {v:.2f}' for k, v in seg.timings.items())}); "
                f"host path {host:.2f} s, {rows[-1]['host_per_network']:.2f}x the network")
    base = next(r["seconds"] for r in rows if r["path"] == BASELINE)
    for r in rows:
        r["speedup_vs_eager_fp32"] = base / r["seconds"]
    return rows


def runners(ckpt: Path, onnx: Path | None, engine: Path | None, device: str, log=print) -> dict:
    from neoseg.runtime.backends import BackendUnavailable, open_backend
    from neoseg.runtime.pipeline import Segmenter
    from neoseg.train import checkpoint
    from neoseg.train.torch_backend import open_checkpoint

    loaded = checkpoint.load(ckpt)
    backend = open_checkpoint(ckpt, f"torch-{device}")
    out = {BASELINE: Segmenter(EagerTorch(loaded.model.to(device), backend.info, device,
                                          256 if device == "cuda" else 8), skip_empty=False)}
    if device == "cuda":
        out["torch-cuda fp16 CUDA graph (runtime)"] = Segmenter(backend)
    if onnx is not None:
        out["ort-cpu fp32 (runtime)"] = Segmenter(open_backend(onnx, "ort-cpu"))
        for precision in ("fp32", "int8", "bf16"):
            try:
                out[f"ov-cpu {precision} (runtime)"] = Segmenter(open_backend(onnx, "ov-cpu", precision=precision))
            except BackendUnavailable as e:
                log(f"  ov-cpu {precision}: not run here ({e})")
        default = open_backend(onnx, "auto")  # what neoseg-infer -m model.onnx runs here
        out[f"neoseg-infer default ({default.name.split(' [')[0].split(' ')[0]} {default.precision})"] = Segmenter(default)
    if engine is not None:
        out["tensorrt fp16 engine (runtime)"] = Segmenter(open_backend(engine, "tensorrt"))
    return out


def _int8(onnx: Path, loaded, scan: Path, log) -> None:
    """The INT8 model beside ``onnx``, calibrated and gated on ``scan`` itself (for timing only)."""
    from neoseg.export.int8 import export_int8
    from neoseg.export.scans import Scans
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train.volumes import load_canonical

    timed = Scans([load_canonical(scan, np.float32)], (scan.name,), "the timed scan itself (for timing only)")
    try:
        export_int8(onnx, info_from_checkpoint(loaded), timed, timed, log=lambda m: log(f"  {m}"))
    except ImportError as e:
        log(f"  no INT8 model: {e}")


def _verification(loaded, scan: Path) -> np.ndarray:
    """A few slices of the scan to verify the export on, as neoseg-export does: this also records
    the model's BF16/FP16 parity, which --precision auto needs before it uses them."""
    from neoseg.export.onnx_export import verification_slices
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train.volumes import load_canonical

    return verification_slices([load_canonical(scan, np.float32)[0]], info_from_checkpoint(loaded), per_volume=8)


def markdown(result: dict) -> str:
    m = result["machine"]
    text = f"Machine: {m.get('gpu', m['cpu'])} ({m['cores']} CPU cores), torch {m.get('torch')}, " \
           f"onnxruntime {m['onnxruntime']}, openvino {m.get('openvino')} (CPU: " \
           f"{', '.join(m.get('cpu_capabilities', []))}); load at start {m['load']}\n\n" \
           f"CPU features: {', '.join(m.get('cpu_features', [])) or 'unknown'}\n\n"
    if result.get("network"):
        text += "Network only, one volume of 256 full slices:\n\n" + table(
            ["path", "ms per volume", "slices/s", "× eager FP32"],
            [[r["path"], r["ms_per_volume"], r["slices_per_s"], r["speedup_vs_eager_fp32"]] for r in result["network"]])
    if result.get("end_to_end"):
        text += f"\nEnd to end (read -> write), {result['scan']}:\n\n" + table(
            ["path", "backend", "s per scan", "× eager FP32", "slices computed", "read", "resample", "preprocess",
             "network", "postprocess", "write", "host path", "host / network"],
            [[r["path"], r["backend"], r["seconds"], r["speedup_vs_eager_fp32"], r["slices_computed"], r["read_s"],
              r["resample_s"], r["preprocess_s"], r["network_s"], r["postprocess_s"], r["write_s"], r["host_s"],
              r["host_per_network"]] for r in result["end_to_end"]])
        text += "\nHost path: every phase but the network (read, resample, preprocess, postprocess, write).\n"
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", type=Path, help="a T2 NIfTI; default: a generated 256^3 synthetic scan")
    p.add_argument("--checkpoint", type=Path, help="default: the untrained default U-Net")
    p.add_argument("--engine", type=Path, help="a TensorRT engine from neoseg-export --trt, to include")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--compile", default="", help="comma-separated torch.compile modes to time (GPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-network", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    run(args)


def run(args, log=print) -> dict:
    import torch

    from neoseg.export.onnx_export import export_onnx
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train import checkpoint

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    work = Path(tempfile.mkdtemp(prefix="neoseg-throughput-"))
    scan = args.scan or cohort(None, 1, 256)[0].t2
    ckpt = args.checkpoint or default_checkpoint(work / "default.pt")
    loaded = checkpoint.load(ckpt)
    onnx = work / "model.onnx"
    export_onnx(loaded.model, info_from_checkpoint(loaded), onnx, verify_on=_verification(loaded, scan))
    if device == "cpu":
        _int8(onnx, loaded, scan, log)
    result = {"machine": machine(), "device": device, "scan": str(scan),
              "checkpoint": str(ckpt)}
    log(f"throughput on {result['machine'].get('gpu', result['machine']['cpu'])}, device {device}")
    if not args.skip_network:
        from neoseg.train.volumes import load_canonical
        from neoseg.export.onnx_export import verification_slices

        image = load_canonical(scan, np.float32)[0]
        info = info_from_checkpoint(loaded)
        images = verification_slices([image], info, per_volume=256)
        images = np.concatenate([images] * (-(-256 // len(images))))[:256]
        modes = [m for m in args.compile.split(",") if m]
        log("network only:")
        result["network"] = network_only(ckpt, onnx, args.engine, images, device, modes, args.repeats, log)
    log("end to end:")
    result["end_to_end"] = end_to_end(scan, runners(ckpt, onnx, args.engine, device, log), args.repeats,
                                      int(device == "cuda"), log)
    write_results(args.out, f"throughput-{device}", result, markdown(result))
    log(markdown(result))
    return result


if __name__ == "__main__":
    main()
