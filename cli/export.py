"""``neoseg-export CHECKPOINT -o model.onnx [--trt]``: a self-describing, verified ONNX model
(and an FP16 TensorRT engine beside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import as_user_error, user_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="best.pt from neoseg-train")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX model to write (.onnx)")],
    trt: Annotated[bool, typer.Option("--trt", help="also build an FP16 TensorRT engine (needs TensorRT + GPU)")] = False,
    engine: Annotated[Optional[Path], typer.Option(help="engine path; default: OUTPUT with .engine")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="TensorRT timing cache, reused and updated")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="one value or one per channel, comma-separated; "
                                                           "default: the checkpoint's, else 0.5")] = None,
    data: Annotated[Optional[Path], typer.Option(help="dHCP-layout folder whose scans verify the export; "
                                                      "default: the training data")] = None,
    verify_scans: Annotated[int, typer.Option(min=0, help="scans to verify on; 0 skips verification")] = 2,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
) -> None:
    """Export CHECKPOINT to ONNX (and TensorRT), verified against PyTorch on real scans."""
    from neoseg.core.io import check_writable
    from neoseg.export.onnx_export import ParityError
    from neoseg.export.trt_engine import EngineBuildError
    from neoseg.runtime.backends import BackendUnavailable

    with user_errors("neoseg-export"), as_user_error(BackendUnavailable, ParityError, EngineBuildError):
        if output.suffix != ".onnx":
            raise ValueError(f"-o {output}: the ONNX model's name must end in .onnx")
        engine = engine or output.with_suffix(".engine")
        check_writable(output, overwrite)
        if trt:
            from neoseg.runtime.trt_backend import gpu_identity, import_tensorrt

            import_tensorrt(), gpu_identity()  # before anything is written
            check_writable(engine, overwrite)
        _export(checkpoint, output, engine if trt else None, timing_cache, thresholds, data, verify_scans, overwrite)


def _export(checkpoint, output, engine, timing_cache, thresholds, data, verify_scans, overwrite) -> None:
    from neoseg.export.onnx_export import export_onnx, verification_slices, verification_volumes
    from neoseg.runtime.model import info_from_checkpoint, parse_thresholds
    from neoseg.train import checkpoint as ckpt

    loaded = ckpt.load(checkpoint)
    chosen = parse_thresholds(thresholds, len(loaded.hierarchy)) if thresholds else None
    info = info_from_checkpoint(loaded, chosen)
    x = verification_slices(verification_volumes(loaded.config, data, verify_scans), info) if verify_scans else None
    if engine is None:
        report = export_onnx(loaded.model, info, output, verify_on=x, overwrite=overwrite)
        engine_report = None
    else:  # the model and its engine appear together, or neither does (no .onnx left by a failed build)
        from neoseg.core.io import atomic_paths
        from neoseg.export.trt_engine import build_engine

        with atomic_paths({"onnx": output, "engine": engine}, overwrite) as tmp:
            report = export_onnx(loaded.model, info, tmp["onnx"], verify_on=x, overwrite=True)
            engine_report = build_engine(tmp["onnx"], info, tmp["engine"], timing_cache, verify_on=x, overwrite=True)
    typer.echo(f"wrote {output} ({info.architecture}, {len(info.hierarchy)} channels, slices {info.slice_size}^2 "
               f"along axis {info.axis}, spacing {'x'.join(f'{s:g}' for s in info.spacing)} mm, "
               f"config {info.config_digest})")
    for line in report.lines() if report else ["not verified (--verify-scans 0)"]:
        typer.echo(line)
    if engine is not None:
        typer.echo(f"wrote {engine} (FP16 TensorRT engine, 1..256 slices)")
        for line in engine_report.lines() if engine_report else []:
            typer.echo(line)


def main() -> None:
    app()
