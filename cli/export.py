"""``neoseg-export CHECKPOINT -o model.onnx [--trt]``: a self-describing, verified ONNX model,
its INT8 OpenVINO model beside it (``model.int8.xml``/``.bin``), where plain BF16 misses its gate a
BF16 OpenVINO model with its sensitive layers in FP32 (``model.bf16.xml``/``.bin``), both
gated on whole scans (the run's test sessions where its split is known: :mod:`neoseg.export.scans`),
and on request an FP16 TensorRT engine."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import make_app, as_user_error, user_errors

app = make_app()


@app.command()
def export(
    checkpoints: Annotated[list[Path], typer.Argument(exists=True, metavar="CHECKPOINT",
                                                      help="Checkpoint file (best.pt from neoseg-train), or a "
                                                           "neoseg-train run folder (all its --members); several: "
                                                           "their ensemble as one model (the mean of their "
                                                           "probabilities).")],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", dir_okay=False,
                                                help="ONNX model file to write (.onnx); the INT8 model and the "
                                                     "engine go beside it.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", dir_okay=False, hidden=True,
                                                   help="Old spelling of --out.")] = None,
    trt: Annotated[bool, typer.Option("--trt/--no-trt", help="Also build an FP16 TensorRT engine (needs TensorRT "
                                                             "and a GPU).")] = False,
    engine: Annotated[Optional[Path], typer.Option(dir_okay=False, help="TensorRT engine file. Default: OUT with "
                                                                        ".engine.")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(dir_okay=False, help="TensorRT timing cache file, reused "
                                                                              "and updated.")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="One value or one per channel, comma-separated. "
                                                           "Default: the checkpoint's, else 0.5.")] = None,
    data: Annotated[Optional[Path], typer.Option(file_okay=False, help="dHCP-layout folder whose scans verify the "
                                                                       "export. Default: the test sessions of the "
                                                                       "checkpoint's run (its split.json), else "
                                                                       "the training data.")] = None,
    verify_scans: Annotated[int, typer.Option(min=0, help="Scans to verify on and to gate BF16 and INT8 on; 0 "
                                                          "skips verification, the gates and INT8.")] = 4,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write an INT8 OpenVINO model beside the "
                                                                ".onnx (NNCF), with its parity record.")] = True,
    calibration_data: Annotated[Optional[Path], typer.Option(
        exists=True, file_okay=False, help="dHCP-layout folder to calibrate INT8 on. Default: the training "
                                           "sessions of the checkpoint's run, else the training data.")] = None,
    calibration_scans: Annotated[int, typer.Option(min=1, help="Scans to calibrate INT8 on (never those verified "
                                                               "on).")] = 4,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace existing outputs.")] = False,
) -> None:
    """Export CHECKPOINT (or the ensemble of several) to ONNX (and TensorRT), verified against PyTorch
    on real scans."""
    from neoseg.core.io import check_can_write, check_writable
    from neoseg.export.onnx_export import ParityError
    from neoseg.export.trt_engine import EngineBuildError
    from neoseg.runtime.backends import BackendUnavailable

    with user_errors("neoseg-export"), as_user_error(BackendUnavailable, ParityError, EngineBuildError):
        from neoseg.train.members import run_checkpoints

        for option, value in (("--engine", engine), ("--timing-cache", timing_cache)):
            if value is not None and not trt:
                raise ValueError(f"{option} needs --trt (it is for the TensorRT engine); add --trt or leave out "
                                 f"{option}")
        checkpoints = run_checkpoints(checkpoints)
        if out is not None and output is not None and out != output:
            raise ValueError(f"-o/--out {out} and --output {output} differ; --output is the old spelling of --out, "
                             f"pass one")
        output = out or output
        if output is None:
            raise ValueError("missing -o/--out FILE: the ONNX model to write, e.g. -o model.onnx")
        if output.suffix != ".onnx":
            raise ValueError(f"-o {output}: the ONNX model's name must end in .onnx")
        engine = engine or output.with_suffix(".engine")
        int8 = int8 and verify_scans > 0  # INT8 needs scans to gate it on
        companions = {k: output.with_name(output.stem + suffix) for k, suffix in COMPANIONS.items()}
        for path in (output, *companions.values()):  # a companion not written anew is removed
            check_writable(path, overwrite)
        check_can_write(output)
        bf16 = verify_scans > 0 and has_openvino()
        outputs = {"onnx": output} | {k: p for k, p in companions.items() if (bf16 if k.startswith("bf16") else int8)}
        if int8:
            from neoseg.export.int8 import import_nncf

            import_nncf()  # before anything is computed
        if trt:
            from neoseg.runtime.trt_backend import gpu_identity, import_tensorrt

            import_tensorrt(), gpu_identity()  # before anything is written
            outputs["engine"] = check_writable(engine, overwrite)
        _export(checkpoints, outputs, companions, timing_cache, thresholds, data, verify_scans, calibration_data,
                calibration_scans, overwrite)


# the OpenVINO models neoseg-export writes beside the .onnx (found there by name)
COMPANIONS = {"xml": ".int8.xml", "bin": ".int8.bin", "bf16_xml": ".bf16.xml", "bf16_bin": ".bf16.bin"}


def write_failure(output: Path, e: OSError) -> str | None:
    """One line for a failure to write the export's outputs (a full disk, a failing device) that
    names the folder and its free space; None where ``e`` is not one (a scan that cannot be read)."""
    import errno
    import shutil

    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    inside = e.filename is None or Path(e.filename).resolve().is_relative_to(output.parent.resolve())
    if not (full or e.errno in (errno.EFBIG, errno.EIO, errno.EROFS)) or not inside:
        return None
    folder = next(p for p in (output.parent, *output.parent.parents) if p.exists())
    free = shutil.disk_usage(folder).free / 1e6
    why = "no space left on the device" if full else e.strerror or str(e)
    return f"cannot write {output} (and the models beside it): {why} ({free:.1f} MB free in {folder}); free " \
           f"space or choose another -o"


def has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _export(checkpoints, outputs, companions, timing_cache, thresholds, data, verify_scans, calibration_data,
            calibration_scans, overwrite) -> None:
    """Every output is written into a staging folder beside them under its final name (the INT8
    and BF16 models are found by name from the .onnx), then all appear together, or none does
    (the BF16 model is written only where plain BF16 misses its gate). Existing ``companions``
    this export does not write are removed in the same commit, and only under ``--overwrite``:
    they bear the names neoseg-export gives the OpenVINO models of the .onnx being replaced, and
    would outlive it; nothing else a user had is touched."""
    from neoseg.export.onnx_export import verification_slices
    from neoseg.export.scans import Scans, calibration_sessions, verification_sessions
    from neoseg.runtime.model import info_from_checkpoint, parse_thresholds
    from neoseg.train.ensemble import check_one_split, load_models

    from neoseg.train.checkpoint import NotACheckpoint

    try:
        loaded = load_models(checkpoints, own_thresholds=bool(thresholds))
    except NotACheckpoint as e:  # torch's own reason spans lines and advises an unsafe load
        raise ValueError(f"{e.path} is not a neoseg checkpoint (best.pt from neoseg-train) or run folder") from None
    checkpoint = checkpoints[0]  # its run's split and data choose the scans (the same for every member)
    if data is None and (verify_scans or "xml" in outputs):
        check_one_split(checkpoints)
    chosen = parse_thresholds(thresholds, len(loaded.hierarchy)) if thresholds else None
    info = info_from_checkpoint(loaded, chosen)
    verify, x, gate, calibrate = [], None, None, None
    if verify_scans:
        verify, source = verification_sessions(checkpoint, loaded.config, data, verify_scans)
        fewer = f" (fewer than --verify-scans {verify_scans}: no more there)" if len(verify) < verify_scans else ""
        typer.echo(f"verifying on {len(verify)} scans{fewer}, {source}: {', '.join(s.key for s in verify)}")
        gate = Scans.load(verify, source)
        x = verification_slices([image for image, _ in gate.images], info)
    if "xml" in outputs:  # chosen before anything is computed
        calibrate = calibration_sessions(checkpoint, loaded.config, calibration_data, calibration_scans, verify)
    output = outputs["onnx"]
    made = [p for p in (output.parent, *output.parent.parents) if not p.exists()]  # removed if it fails
    try:
        report, engine_report, written, stale = _write(loaded.model, info, outputs, companions, gate, calibrate, x,
                                                       timing_cache, overwrite)
    except OSError as e:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        message = write_failure(output, e)
        if message is None:
            raise
        raise ValueError(message) from None
    engine = outputs.get("engine")
    typer.echo(f"wrote {output} ({info.architecture}, {len(info.hierarchy)} channels, slices {info.slice_size}^2 "
               f"along axis {info.axis}, spacing {'x'.join(f'{s:g}' for s in info.spacing)} mm, "
               f"config {info.config_digest})")
    for line in report.lines() if report else ["not verified, and no INT8 model (--verify-scans 0)"]:
        typer.echo(line)
    if "xml" in outputs:
        typer.echo(f"wrote {outputs['xml']} and its .bin (INT8 OpenVINO model: keep it beside {output.name})")
    if "bf16_xml" in written:
        kept = len(report.reduced["bf16"].kept_fp32)
        typer.echo(f"wrote {outputs['bf16_xml']} and its .bin (BF16 OpenVINO model, {kept} convolutions kept in FP32: "
                   f"keep it beside {output.name})")
    if stale:
        typer.echo(f"removed {', '.join(p.name for p in stale)}, written for the model this export replaced")
    if engine is not None:
        typer.echo(f"wrote {engine} (FP16 TensorRT engine, 1..256 slices)")
        for line in engine_report.lines() if engine_report else []:
            typer.echo(line)


def _write(model, info, outputs, companions, gate, calibrate, x, timing_cache, overwrite):
    """The writing half of :func:`_export` (its staging folder and commit); returns the parity
    report, the engine's, the outputs written and the stale companions removed."""
    import os
    import tempfile

    from neoseg.core.io import atomic_paths
    from neoseg.export.onnx_export import export_onnx
    from neoseg.export.scans import Scans

    output = outputs["onnx"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".neoseg-export-", dir=output.parent) as stage:
        staged = {k: Path(stage) / p.name for k, p in outputs.items()}
        report = export_onnx(model, info, staged["onnx"], verify_on=x, overwrite=True)
        if "bf16_xml" in outputs:
            from neoseg.export.bf16 import export_bf16

            report.reduced["bf16"] = export_bf16(staged["onnx"], model, gate, log=typer.echo)
        if "xml" in outputs:
            from neoseg.export.int8 import export_int8

            report.reduced["int8"] = export_int8(staged["onnx"], info, Scans.load(*calibrate), gate, log=typer.echo)
        engine_report = None
        if "engine" in outputs:
            from neoseg.export.trt_engine import build_engine

            engine_report = build_engine(staged["onnx"], info, staged["engine"], timing_cache, verify_on=x,
                                         overwrite=True)
        written = {k: outputs[k] for k, path in staged.items() if path.exists()}
        stale = [path for k, path in companions.items() if k not in written and path.exists()]
        with atomic_paths(written, overwrite, remove=stale) as tmp:
            for k in written:
                os.replace(staged[k], tmp[k])
    return report, engine_report, written, stale


def main() -> None:
    app()
