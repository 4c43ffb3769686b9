"""The scans one ``neoseg-infer`` call runs: a job per scan with the state of its outputs (done,
partial, another model's or scan's, edited by hand), the refusals before any work, and the plans
of file and dataset mode (the dataset-level files before and after the scans)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass
class Job:
    """One scan to segment, or to skip because its outputs exist."""

    scan: Path
    outdir: Path
    name: str  # shown in progress lines
    subject: str | None = None
    session: str | None = None
    state: str = "todo"  # todo, partial (an interrupted run's leftovers: redone), done (skipped), or other-scan /
    # other-model / edited (results of another input or model, a hand-corrected label map: refused unless --overwrite)
    overwrite: bool = False
    dicom: object = None  # a DICOM input: the chosen series (neoseg.dicom.series.Series)
    paths: dict | None = None  # a DICOM input's outputs


def file_jobs(scans: list[Path], outdir: Path, probabilities: bool, qc: bool, overwrite: bool,
              model_digest: str = "") -> list[Job]:
    """One job per scan file; a scan whose outputs are all there is skipped (unless ``overwrite``)
    and one with only some is redone, the rule of dataset mode."""
    from neoseg.runtime.files import file_digest, output_paths, output_state

    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"-o {outdir} is a file; pass a folder")
    jobs = []
    for scan in scans:
        paths = output_paths(scan, outdir, probabilities, qc)
        state = "todo" if overwrite else output_state(paths, lambda: file_digest(scan), model_digest)
        jobs.append(Job(scan, outdir, scan.name, state=state, overwrite=overwrite or state == "partial", paths=paths))
    return jobs


def refuse_collisions(jobs: list[Job]) -> None:
    """Every pair of inputs (scan files, DICOM folders) that would write the same file, and an input
    that its own results would replace, before any work."""
    planned: dict[Path, Path] = {}
    inputs = {job.scan.resolve() for job in jobs}
    for job in jobs:
        for path in job.paths.values():
            if path.resolve() in inputs:
                raise ValueError(f"{job.scan}: its results would replace the input {path} (is it a neoseg result?); "
                                 f"rename the scan or pass another -o")
            if path in planned:
                raise ValueError(f"{job.scan} and {planned[path]} would both write {path}; run them separately")
            planned[path] = job.scan


def refuse_other_results(jobs: list[Job]) -> None:
    """Results of another scan of the same name or of another model, and hand-corrected label maps,
    are neither skipped as if they were this run's nor replaced unasked."""
    edited = [j for j in jobs if j.state == "edited"]
    if edited:
        raise ValueError(f"{len(edited)} of {len(jobs)} scans have a label map edited since neoseg wrote it, and outputs "
                         f"missing that redoing them would add (e.g. {edited[0].scan}, in {edited[0].outdir}); so as "
                         f"not to replace the correction, leave out what they lack (--qc, --probabilities) or their "
                         f"--participant-label, or pass --overwrite to replace it")
    other = [j for j in jobs if j.state in ("other-scan", "other-model")]
    if other:
        first = other[0]
        made = "from another scan of that name" if first.state == "other-scan" else "by another model"
        raise ValueError(f"{len(other)} of {len(jobs)} scans have results in the output folder made from another "
                         f"scan of the same name or by another model (e.g. {first.scan}: its results in "
                         f"{first.outdir} were made {made}); pass --overwrite to redo them, or another -o")


class FilesPlan:
    """Scan files and DICOM folders: the look-up table of the label values beside the results."""

    def __init__(self, out: Path, jobs: list[Job], overwrite: bool, notice=typer.echo):
        from neoseg.core.io import check_can_write

        check_can_write(out / "dseg.tsv")  # before the model loads
        self.out, self.jobs, self.overwrite = out, jobs, overwrite
        _say_skipped(jobs, notice)

    def begin(self, info) -> None:
        from neoseg.runtime.dataset import planned_dseg_tsv

        planned_dseg_tsv(self.out, info.hierarchy, replace=self.overwrite)  # refused before any scan
        _remove_leftovers(self.jobs)

    def finish(self, info, failed) -> list[Path]:
        """dseg.tsv, once some scan's results are there (nothing is left behind when none is)."""
        from neoseg.runtime.dataset import write_dseg_tsv

        if not any(job.paths["dseg"].exists() for job in self.jobs):
            return []
        return [write_dseg_tsv(self.out, info.hierarchy, replace=self.overwrite)]


class DatasetPlan:
    """Dataset mode: which scans to run, and the dataset-level files before and after."""

    def __init__(self, root: Path, out: Path, model: Path, digest: str, participants, sessions, probabilities: bool,
                 qc: bool, overwrite: bool, say=typer.echo, notice=typer.echo):
        from neoseg.runtime import dataset as ds

        self.root, self.out, self.model, self.qc, self.say = root, out, model, qc, say
        scans = ds.find_scans(root, participants, sessions)
        if out.exists() and not out.is_dir():
            raise ValueError(f"-o {out} is a file; pass a folder")
        self.digest = digest
        ds.check_output_folder(out, root, self.digest, overwrite, bool(participants or sessions))
        self.jobs = []
        for scan in scans:
            state = "todo" if overwrite else ds.scan_state(scan, out, probabilities, qc, digest)
            self.jobs.append(Job(scan.path, scan.outdir(out), (scan.relative / scan.stem).as_posix(), scan.subject,
                                 scan.session, state, overwrite or state == "partial"))
        say(f"dataset {root}: {len(scans)} T2w scans -> {out}")
        _say_skipped(self.jobs, notice)

    def description(self, info) -> dict:
        from neoseg.core.version import neoseg_version
        from neoseg.runtime.dataset import dataset_description

        return dataset_description(neoseg_version(), self.model, self.digest, info, self.root)

    def begin(self, info) -> None:
        """Written before any scan, so an interrupted folder already says which model it holds."""
        from neoseg.runtime.dataset import write_description, write_dseg_tsv

        self.out.mkdir(parents=True, exist_ok=True)
        write_description(self.out, self.description(info))
        write_dseg_tsv(self.out, info.hierarchy, replace=True)
        _remove_leftovers(self.jobs)

    def finish(self, info, failed) -> list[Path]:
        from neoseg.runtime.report import FailedScan, write_group_files

        report = self.qc or (self.out / "index.html").exists()  # an earlier report is kept current
        written, others = write_group_files(self.out, info.hierarchy, self.description(info),
                                            [FailedScan(f.name, f.error) for f in failed], report, self.digest)
        written = [self.out / "dataset_description.json", self.out / "dseg.tsv", *written]
        self.say("dataset files: " + ", ".join(p.name for p in written))
        if others:
            typer.echo(f"neoseg-infer: warning: {others} scan(s) in {self.out} hold results made by another model: "
                       f"left out of the group files, which describe this model's; redo them with --overwrite and "
                       f"no --participant-label or --session-label", err=True)
        return written


def _say_skipped(jobs: list[Job], notice) -> None:
    done = sum(j.state == "done" for j in jobs)
    if done:
        notice(f"{done} of {len(jobs)} scans already done (skipped; --overwrite redoes them)")


def _remove_leftovers(jobs: list[Job]) -> None:
    """The temporary files a killed run left beside the results of the scans to do."""
    from neoseg.runtime.files import stem

    for job in jobs:
        if job.state != "done" and job.outdir.is_dir():
            name = job.paths["dseg"].name.removesuffix("dseg.nii.gz") if job.paths else f"{stem(job.scan)}_desc-neoseg_"
            for leftover in job.outdir.glob(f".{name}*.part*"):
                leftover.unlink(missing_ok=True)
