"""``neoseg-infer SCAN... -m MODEL -o OUTDIR``: segment scans on their own voxel grid."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import user_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)


class BackendName(str, Enum):
    auto = "auto"
    ov_cpu = "ov-cpu"
    ort_cpu = "ort-cpu"
    ort_cuda = "ort-cuda"
    ort_trt = "ort-trt"
    tensorrt = "tensorrt"
    torch_cuda = "torch-cuda"
    torch_cpu = "torch-cpu"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command()
def infer(
    scans: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="NIfTI scans (.nii/.nii.gz)")],
    model: Annotated[Path, typer.Option("-m", "--model", exists=True, dir_okay=False,
                                       help="model.onnx, an engine from neoseg-export --trt, or a .pt checkpoint")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", file_okay=False, help="folder for the results")],
    backend: Annotated[BackendName, typer.Option(help="auto picks the fastest available and says which")] =
        BackendName.auto,
    precision: Annotated[Precision, typer.Option(help="auto: BF16/FP16 on a CPU with the units for a model that passed "
                                                 "the parity gate, else FP32 (GPU paths keep their own); an explicit one "
                                                 "runs or fails")] =
        Precision.auto,
    batch: Annotated[Optional[int], typer.Option(min=1, help="slices per network call (default: 256 on GPU, "
                                                              "8 on CPU); lower it for small GPUs")] = None,
    probabilities: Annotated[bool, typer.Option(help="also write sigmoid probabilities (_probseg)")] = False,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: all cores)")] = None,
    skip_empty: Annotated[bool, typer.Option(help="compute only the slices that hold head")] = True,
    crop_plane: Annotated[bool, typer.Option(help="also cut slices to the head's box: faster for a small head in "
                                             "a large field of view; changes results at the cut")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
) -> None:
    """Segment each SCAN; write <stem>_desc-neoseg_dseg.nii.gz (labels) and _mask.nii.gz (4D, one
    volume per channel) into OUTDIR on the scan's own grid, affine and header."""
    from neoseg.core.io import check_writable
    from neoseg.runtime.backends import BackendUnavailable, open_backend
    from neoseg.runtime.engine import EngineMismatchError
    from neoseg.runtime.files import output_paths, segment_file
    from neoseg.runtime.pipeline import Segmenter

    with user_errors("neoseg-infer"), _as_user_error(BackendUnavailable, EngineMismatchError):
        planned: dict[Path, Path] = {}
        for scan in scans:  # every collision and existing output is reported before any work
            for path in output_paths(scan, outdir, probabilities).values():
                if path in planned:
                    raise ValueError(f"{scan} and {planned[path]} would both write {path}; run them separately")
                planned[path] = scan
                check_writable(path, overwrite)
        opened = open_backend(model, backend.value, threads, precision.value)
        runner = Segmenter(opened, batch, skip_empty, crop_plane)
        typer.echo(f"backend: {opened.name}, batch {runner.batch}" + (f" ({opened.note})" if opened.note else ""))
        for scan in scans:
            paths, seg = segment_file(scan, runner, outdir, overwrite, probabilities)
            total = sum(seg.timings.values())
            parts = ", ".join(f"{k} {v:.2f}" for k, v in seg.timings.items())
            typer.echo(f"{scan.name}: {total:.2f} s ({parts}); {seg.computed_slices} slices computed "
                       f"-> {paths['dseg']}")


@contextmanager
def _as_user_error(*kinds):
    """Errors of these kinds are the user's to act on (missing backend, mismatched engine)."""
    try:
        yield
    except kinds as e:
        raise ValueError(str(e)) from None


def main() -> None:
    app()
