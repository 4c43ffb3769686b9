"""``neoseg-infer SCAN... | DATASET | DICOM_FOLDER... -m MODEL [-o FOLDER]``: segment scans, a whole BIDS /
dHCP dataset, or DICOM series, on the scans' own voxel grids."""

from __future__ import annotations

import os
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (ATLAS_WARPS_HELP, USER_ERRORS, as_user_error, atlas_fusion, make_app, user_errors,
                     user_message)
from .infer_jobs import DatasetPlan, FilesPlan, Job, file_jobs, refuse_collisions, refuse_other_results
from .progress import Progress
from .summary import Summary

app = make_app()


class BackendName(str, Enum):
    auto = "auto"
    ov_cpu = "ov-cpu"
    ort_cpu = "ort-cpu"
    ort_cuda = "ort-cuda"
    ort_trt = "ort-trt"
    tensorrt = "tensorrt"
    torch_cuda = "torch-cuda"
    torch_cpu = "torch-cpu"


class Repeats(str, Enum):
    refuse = "refuse"
    first = "first"
    last = "last"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    int8 = "int8"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command()
def infer(
    inputs: Annotated[list[Path], typer.Argument(metavar="SCAN... | DATASET | DICOM_FOLDER...", show_default=False,
                                                 help="NIfTI scans (.nii, .nii.gz, .hdr/.img), one BIDS / dHCP-layout "
                                                      "dataset folder (sub-*/anat/ or sub-*/ses-*/anat/ *_T2w.nii.gz), "
                                                      "or DICOM series or study folders (needs the dicom extra).")],
    model: Annotated[Optional[Path], typer.Option("-m", "--model", exists=True, dir_okay=False,
                                                 help="Model file: model.onnx, an engine from neoseg-export --trt, "
                                                      "or a .pt checkpoint. Required, except for --dry-run.")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", file_okay=False,
                                                help="Output folder (created if missing). For a DATASET: its "
                                                     "derivatives folder, default DATASET/derivatives/neoseg; "
                                                     "required for scans and DICOM folders, except with "
                                                     "--dry-run.")] = None,
    outdir: Annotated[Optional[Path], typer.Option("--outdir", file_okay=False, hidden=True,
                                                   help="Old spelling of --out.")] = None,
    backend: Annotated[BackendName, typer.Option(help="Inference backend; auto picks the fastest available and "
                                                 "says which.")] = BackendName.auto,
    precision: Annotated[Precision, typer.Option(help="auto: INT8, BF16 (or FP16) on a CPU that runs it fast, for a "
                                                 "model that passed the parity gate, else FP32 (GPU paths keep their "
                                                 "own); an explicit one runs or fails.")] =
        Precision.auto,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Slices per network call (default: 256 on GPU, "
                                                              "8 on CPU); lower it for small GPUs.")] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities/--no-probabilities",
                                                help="Also write sigmoid probabilities (_probseg).")] = False,
    qc: Annotated[bool, typer.Option("--qc/--no-qc", help="Also write a QC picture per scan (_qc.png) and, for a "
                                                          "dataset, the report index.html.")] = False,
    participant_label: Annotated[Optional[list[str]], typer.Option(
        "--participant-label", "--participant_label", show_default=False,
        help="Dataset mode: only these subjects (with or without sub-; repeat or comma-separate).")] = None,
    session_label: Annotated[Optional[list[str]], typer.Option(
        "--session-label", "--session_label", show_default=False,
        help="Dataset mode: only these sessions (with or without ses-).")] = None,
    json_summary: Annotated[Optional[Path], typer.Option("--json", dir_okay=False,
                                                         help="Also write a machine-readable summary of the run "
                                                              "to this file.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads of the network and of the work around it, and --atlas registrations run at "
                    "once (default: all cores).")] = None,
    skip_empty: Annotated[bool, typer.Option("--skip-empty/--no-skip-empty",
                                             help="Compute only the slices that hold head.")] = True,
    crop_plane: Annotated[bool, typer.Option("--crop-plane/--no-crop-plane",
                                             help="Also cut slices to the head's box: faster for a small head in "
                                             "a large field of view; changes results at the cut.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite",
                                            help="Redo every scan and replace its outputs (without it, scans whose "
                                                 "outputs are all there are skipped).")] = False,
    dicom_seg: Annotated[bool, typer.Option("--dicom-seg/--no-dicom-seg", help="DICOM input: also write a DICOM SEG "
                                            "(_desc-neoseg_seg.dcm) and the volumes keyed by study and series "
                                            "UIDs (_desc-neoseg_volumes.json).")] = False,
    series_description: Annotated[Optional[list[str]], typer.Option(
        show_default=False,
        help="DICOM study: the T2w series' description or protocol name matches this regular expression "
             "(case-insensitive; repeat for any of several; default: t2, less scouts, localizers, FLAIR, T2*).")] = None,
    plane: Annotated[Optional[list[str]], typer.Option(
        show_default=False,
        help="DICOM study: only series in this slice plane: axial, sagittal, coronal or oblique (repeatable).")] = None,
    max_voxel_size: Annotated[Optional[float], typer.Option(
        min=0, help="DICOM study: only series whose voxels are at most this large (mm) along every axis.")] = None,
    series_number: Annotated[Optional[list[int]], typer.Option(
        show_default=False,
        help="DICOM study: the T2w series is the one with this SeriesNumber (repeatable: any of them); the "
             "default description patterns are then dropped.")] = None,
    repeats: Annotated[Repeats, typer.Option(
        help="DICOM study: when several series pass that are repeats of one acquisition (same description, "
             "protocol, plane and voxel size), refuse them, or take the first or last by series number.")] =
        Repeats.refuse,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="DICOM input: list the series found and which one "
                                          "the rules choose, then stop.")] = False,
    atlas: Annotated[Optional[Path], typer.Option(
        file_okay=False, show_default=False,
        help="A dHCP-layout folder whose fully labelled sessions are registered to each scan inside the parent "
             "the network found, their children blended with the network's (needs Greedy: the atlas extra; "
             "per atlas and scan, seconds at 2 mm, minutes at 0.5 mm).")] = None,
    atlas_per_scan: Annotated[int, typer.Option(min=1, help="--atlas: the atlases registered to each scan, those "
                                                            "nearest to it in brain size.")] = 3,
    atlas_weight: Annotated[str, typer.Option(help="--atlas: the atlases' share of each child's probability, "
                                                   "0 to 1: one for every child, or per child, e.g. "
                                                   "0.5,wm=0,cgm=0.")] = "0.5",
    atlas_warps: Annotated[str, typer.Option(help=ATLAS_WARPS_HELP)] = "regular",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only: no progress bar and no "
                                                              "line per scan (--json keeps the timings).")] = False,
) -> None:
    """Segment each SCAN, or every T2w scan of a DATASET; write <stem>_desc-neoseg_dseg.nii.gz
    (labels) with its _dseg.json, _mask.nii.gz (4D, one volume per channel), _mask.json and
    _volumes.tsv on the scan's own grid, affine and header, and dseg.tsv (the label values) in the
    output folder. A dataset's results mirror its sub-*/ses-*/anat/ folders, with
    dataset_description.json and a group volumes.tsv. A DICOM folder (one series, or a study whose
    T2w series the rules shown by --dry-run choose) gives the same outputs, named after the folder,
    and with --dicom-seg a DICOM SEG. A rerun skips finished scans; --overwrite redoes them."""
    import neoseg.train.torch_backend  # noqa: F401 - provides torch-cpu/torch-cuda for .pt checkpoints
    from neoseg.runtime.backends import BackendUnavailable, open_backend
    from neoseg.runtime.engine import EngineMismatchError
    from neoseg.runtime.files import file_digest
    from neoseg.runtime.pipeline import Segmenter

    say = (lambda line: None) if quiet else typer.echo
    notice = lambda line: typer.echo(line, err=quiet)  # noqa: E731 - what a rerun skipped: said even with -q
    with user_errors("neoseg-infer"), as_user_error(BackendUnavailable, EngineMismatchError):
        out = _output_folder(out, outdir)
        summary = Summary(json_summary, overwrite)
        _check_inputs(inputs)
        inputs = _once(inputs)
        root = _dataset_root(inputs)
        dicom = [] if root is not None else _dicom_folders(inputs)
        scans = [p for p in inputs if root is None and p not in dicom]
        _check_dicom_options(bool(dicom), dicom_seg, dry_run, series_description, plane, max_voxel_size,
                             series_number, repeats != Repeats.refuse)
        if root is not None and out is None:
            out = root / "derivatives" / "neoseg"
        if not dry_run and (model is None or out is None):
            raise ValueError(f"missing {'-m MODEL' if model is None else '-o/--out FOLDER'}: "
                             + ("the model.onnx (or engine, or .pt checkpoint) to segment with" if model is None
                                else "the folder for the results"))
        if root is None and (participant_label or session_label):
            raise ValueError("--participant-label and --session-label select scans of a dataset; pass one "
                             "dataset folder instead of scan files")
        digest = file_digest(model) if model is not None else ""
        if root is not None:
            plan = DatasetPlan(root, out, model, digest, participant_label, session_label, probabilities, qc,
                               overwrite, say, notice)
            jobs = plan.jobs
        else:
            jobs = []
            if dicom:
                from neoseg.cli.dicom_inputs import dicom_jobs, series_rules

                rules = series_rules(series_description, plane, max_voxel_size, series_number, repeats.value)
                jobs = dicom_jobs(dicom, out, probabilities, qc, overwrite, dicom_seg, dry_run, rules, digest)
            if dry_run:
                return
            jobs = file_jobs(scans, out, probabilities, qc, overwrite, digest) + jobs
            jobs.sort(key=lambda job: inputs.index(job.scan))  # in the order given
            refuse_collisions(jobs)
            plan = FilesPlan(out, jobs, overwrite, notice)
        refuse_other_results(jobs)
        opened = open_backend(model, backend.value, threads, precision.value)
        if model.suffix == ".pt":  # the torch backend opened it, so torch is there for the training code
            from neoseg.train.members import note_lone_member
            note_lone_member(model, f"this command runs it alone; `neoseg-export {model.parent}` makes one model "
                                    f"of all of them")
        fusion = None
        if atlas is not None:
            fusion = atlas_fusion(atlas, opened.info.hierarchy, atlas_per_scan, atlas_weight, atlas_warps)
        runner = Segmenter(opened, batch, skip_empty, crop_plane, host_threads=threads, atlas=fusion,
                           model_digest=digest)
        say(f"backend: {opened.name}, batch {runner.batch}" + (f" ({opened.note})" if opened.note else ""))
        if fusion is not None:
            weights = ", ".join(f"{name} {w:g}" for name, w in fusion.named_weights().items())
            say(f"atlas fusion: {len(fusion.atlases)} fully labelled session(s) in {atlas}, "
                f"{min(atlas_per_scan, len(fusion.atlases))} per scan, warps {','.join(fusion.warps)}, "
                f"weights {weights}")
        summary.begin(model, runner.backend.name, root, out)
        plan.begin(runner.info)
        try:
            _run(jobs, runner, probabilities, qc, summary, say_failures=root is not None or len(jobs) > 1,
                 quiet=quiet)
        finally:  # also when interrupted: what is done is summarised
            summary.head["dataset_files"] = [str(p) for p in plan.finish(runner.info, summary.failed)]
            summary.write()
        failed = summary.failed
        if failed and root is None and len(jobs) == 1:
            raise ValueError(failed[0].error)  # one scan: its own one-line error, as always
        if failed:
            names = ", ".join(f.name for f in failed[:10]) + (" ..." if len(failed) > 10 else "")
            typer.echo(f"neoseg-infer: error: {len(failed)} of {len(jobs)} scans failed: {names}", err=True)
            raise typer.Exit(1)


def _dataset_root(inputs: list[Path]) -> Path | None:
    """The dataset folder, when the one input is a BIDS / dHCP-layout dataset; a dataset given with
    other inputs is refused."""
    datasets = [p for p in inputs if p.is_dir() and any(q.is_dir() for q in p.glob("sub-*"))]
    if datasets and len(inputs) > 1:
        raise ValueError(f"{datasets[0]} is a dataset folder (sub-* folders): pass it alone, not with other "
                         f"datasets, scan files or DICOM folders")
    return datasets[0] if datasets else None


def _dicom_folders(inputs: list[Path]) -> list[Path]:
    """The folders among the inputs, each a DICOM series or study folder (the other inputs are scan
    files); a folder of neither kind is refused."""
    from neoseg.dicom.detect import is_dicom_folder

    folders = [p for p in inputs if p.is_dir()]
    bare = next((p for p in folders if not is_dicom_folder(p)), None)
    if bare is not None:
        scans = sorted(q.name.lower() for q in bare.iterdir() if q.name.lower().endswith((".nii", ".nii.gz")))
        pattern = bare / ("*.nii.gz" if scans and scans[0].endswith(".gz") else "*.nii")
        fix = f"it holds NIfTI files: pass them ({pattern})" if scans else \
            "pass a dataset, DICOM series or study folders, or NIfTI scans"
        raise ValueError(f"{bare} is neither a BIDS / dHCP-layout dataset (no sub-* folders) nor a DICOM folder (no "
                         f"DICOM Part 10 files, i.e. with the DICM marker); {fix}")
    return folders


def _check_dicom_options(dicom: bool, seg: bool, dry_run: bool, *rules) -> None:
    if dicom:
        return
    given = [name for name, on in (("--dicom-seg", seg), ("--dry-run", dry_run), ("--series-description", rules[0]),
                                   ("--plane", rules[1]), ("--max-voxel-size", rules[2] is not None),
                                   ("--series-number", rules[3]), ("--repeats", rules[4])) if on]
    if given:
        raise ValueError(f"{given[0]} applies to DICOM input; pass DICOM series or study folders")


def _output_folder(out: Path | None, old: Path | None) -> Path | None:
    if out is not None and old is not None and out != old:
        raise ValueError(f"-o/--out {out} and --outdir {old} differ; --outdir is the old spelling of --out, pass one")
    return out or old


_FLAG_WORDS = {"true", "false", "yes", "no", "on", "off", "0", "1"}


def _check_inputs(inputs: list[Path]) -> None:
    """Every input exists, before anything is loaded; a stray true/false after a flag is named as such."""
    for path in inputs:
        if path.exists():
            continue
        if path.name.lower() in _FLAG_WORDS:
            raise ValueError(f"'{path}' is not a scan: on/off options take no value (write --qc or --no-qc, "
                             f"not --qc {path})")
        raise ValueError(f"{path} does not exist; pass NIfTI scans, one dataset folder or DICOM folders")


def _once(inputs: list[Path]) -> list[Path]:
    """Each input once (a file named twice, or by two spellings), in the order first given."""
    seen: dict[str, Path] = {}
    for path in inputs:
        seen.setdefault(os.path.abspath(path), path)  # not resolved: two links to one file are two scans
    return list(seen.values())


def _run(jobs: list[Job], runner, probabilities: bool, qc: bool, summary: Summary, say_failures: bool = True,
         quiet: bool = False) -> None:
    """Every job in turn; a failing scan is reported (unless ``say_failures`` is off: a single scan's
    error is the command's own) and the others go on. ``quiet``: failures only, no bar."""
    from neoseg.runtime.files import output_paths, segment_file

    with Progress(len(jobs), bar=False if quiet else None, quiet=quiet) as progress:
        try:
            for job in jobs:
                if job.state == "done":
                    summary.add(job, "skipped", job.paths or output_paths(job.scan, job.outdir, probabilities, qc))
                    progress.done(f"{job.name}: skipped (finished earlier)")
                    continue
                progress.start(job.name)
                try:
                    if job.dicom is not None:
                        from neoseg.dicom.run import segment_series

                        paths, seg = segment_series(job.dicom, job.scan, runner, job.paths, job.overwrite,
                                                    probabilities, qc)
                    else:
                        paths, seg = segment_file(job.scan, runner, job.outdir, job.overwrite, probabilities, qc)
                except Exception as e:  # noqa: BLE001 - one scan's failure must not stop the others
                    error = user_message(e) if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {e}"
                    if not isinstance(e, USER_ERRORS):  # a bug: keep its traceback for the report
                        traceback.print_exc()
                    summary.add(job, "failed", error=error)
                    if say_failures:
                        progress.done(f"{job.name}: FAILED: {error}", err=True)
                    continue
                for warning in seg.warnings:
                    typer.echo(f"neoseg-infer: warning: {warning}", err=True)
                summary.add(job, "done", paths, timings=seg.timings, computed_slices=seg.computed_slices)
                total = sum(seg.timings.values())
                parts = ", ".join(f"{k} {v:.2f}" for k, v in seg.timings.items())
                redo = " (redone: some outputs were missing)" if job.state == "partial" else ""
                progress.done(f"{job.name}: {total:.2f} s ({parts}); {seg.computed_slices} slices computed "
                              f"-> {paths['dseg']}{redo}")
        finally:  # interrupted: the rest is recorded as not run
            for job in jobs[len(summary.outcomes):]:
                summary.add(job, "not run")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
