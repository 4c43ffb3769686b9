"""Whole datasets: find the T2w scans of a BIDS or dHCP-layout tree, mirror its layout in a BIDS
derivatives folder, tell finished scans from interrupted ones, and write the dataset-level files
(``dataset_description.json``, ``dseg.tsv``, the group ``volumes.tsv``)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import check_can_write, write_text

from .files import file_digest, output_paths, output_state, stem
from .volumes import read_volumes_tsv

BIDS_VERSION = "1.9.0"
T2W_PATTERNS = ("sub-*/anat/*_T2w.nii.gz", "sub-*/anat/*_T2w.nii", "sub-*/ses-*/anat/*_T2w.nii.gz",
                "sub-*/ses-*/anat/*_T2w.nii")
DATASET_FILES = ("dataset_description.json", "dseg.tsv", "volumes.tsv", "volumes.json", "index.html")
PREFERRED_DESC = "desc-restore"  # dHCP's bias-corrected T2w, preferred over the raw one of a session


@dataclass(frozen=True)
class DatasetScan:
    path: Path  # the T2w image
    relative: Path  # its folder relative to the dataset root: sub-X[/ses-Y]/anat
    subject: str  # without "sub-"
    session: str | None  # without "ses-"

    @property
    def stem(self) -> str:
        return stem(self.path)

    def outdir(self, out: str | Path) -> Path:
        return Path(out) / self.relative


def find_scans(root: str | Path, participants: list[str] | None = None,
               sessions: list[str] | None = None) -> list[DatasetScan]:
    """The T2w scans under ``root`` (``sub-*/[ses-*/]anat/*_T2w.nii[.gz]``), sorted, optionally
    only those of some participants / sessions (labels with or without the ``sub-``/``ses-``
    prefix). Where one scan has several T2w images that map to the same output name (dHCP's
    ``desc-restore_T2w`` beside the raw ``T2w``), the restored one is taken."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist")
    want_sub = _labels(participants, "sub-")
    want_ses = _labels(sessions, "ses-")
    by_output: dict[Path, list[DatasetScan]] = {}
    for pattern in T2W_PATTERNS:
        for path in root.glob(pattern):
            if path.name.startswith("."):
                continue
            relative = path.parent.relative_to(root)
            subject = relative.parts[0].removeprefix("sub-")
            session = relative.parts[1].removeprefix("ses-") if len(relative.parts) == 3 else None
            if not path.name.startswith(f"sub-{subject}_"):
                continue  # not a BIDS name of this subject
            scan = DatasetScan(path, relative, subject, session)
            by_output.setdefault(relative / scan.stem, []).append(scan)
    if not by_output:
        raise ValueError(f"no T2w scans found under {root}; expected a BIDS or dHCP-layout dataset "
                         f"(sub-*/[ses-*/]anat/*_T2w.nii.gz)")
    scans = sorted((min(group, key=_preference) for group in by_output.values()), key=lambda s: str(s.path))
    found_subjects = {s.subject for s in scans}
    if want_sub is not None:
        missing = sorted(want_sub - found_subjects)
        if missing:
            raise ValueError(f"--participant-label {', '.join(missing)}: no such subject under {root} "
                             f"(found {_few(sorted(found_subjects))})")
        scans = [s for s in scans if s.subject in want_sub]
    if want_ses is not None:
        scans = [s for s in scans if s.session in want_ses]
        if not scans:
            raise ValueError(f"--session-label {', '.join(sorted(want_ses))}: no T2w scan of these sessions "
                             f"under {root}" + (" for the chosen participants" if want_sub else ""))
    return scans


def _preference(scan: DatasetScan) -> tuple[int, str]:
    entities = scan.path.name.split("_")
    if PREFERRED_DESC in entities:
        return 0, scan.path.name
    return (1 if not any(e.startswith("desc-") for e in entities) else 2), scan.path.name


def _labels(values: list[str] | None, prefix: str) -> set[str] | None:
    if not values:
        return None
    return {v.strip().removeprefix(prefix) for text in values for v in text.split(",") if v.strip()}


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# ---- what is done --------------------------------------------------------------------------
def scan_state(scan: DatasetScan, out: str | Path, probabilities: bool, qc: bool, model_digest: str = "") -> str:
    """:func:`~.files.output_state` of ``scan``'s results in ``out``."""
    return output_state(output_paths(scan.path, scan.outdir(out), probabilities, qc),
                        lambda: file_digest(scan.path), model_digest)


def existing_outputs(scan: DatasetScan, out: str | Path) -> list[Path]:
    """Every neoseg output of ``scan`` that exists, whatever options made it."""
    return [p for p in output_paths(scan.path, scan.outdir(out), True, True).values() if p.exists()]


# ---- dataset-level files -------------------------------------------------------------------
def dataset_description(version: str, model: Path, digest: str, info, source: Path) -> dict:
    """BIDS derivative ``dataset_description.json``; the model's digest says which model made it."""
    return {
        "Name": "neoseg segmentations",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "neoseg",
            "Version": version,
            "Description": f"Neonatal brain segmentation with model {model.name} ({digest})",
            "Model": {"File": model.name, "Digest": digest, "Architecture": info.architecture,
                      "Hierarchy": info.hierarchy.name, "ExportedBy": f"neoseg {info.version}",
                      "ConfigDigest": info.config_digest},
        }],
        "SourceDatasets": [{"URL": source.resolve().as_uri()}],
    }


def check_output_folder(out: Path, root: Path, digest: str, overwrite: bool, selected: bool = False) -> None:
    """Refuse an output folder that is the dataset itself or a folder in it outside its
    ``derivatives``, one that cannot be written, another dataset, or results of another model
    (unless ``overwrite``: then every scan is redone)."""
    where, dataset = out.resolve(), root.resolve()
    if where.is_relative_to(dataset) and (where == dataset / "derivatives" or
                                          not where.is_relative_to(dataset / "derivatives")):
        what = {dataset: "the input dataset", dataset / "derivatives": "the dataset's derivatives folder itself"}.get(
            where, "inside the input dataset, outside its derivatives")
        raise ValueError(f"-o {out} is {what}; write derivatives elsewhere, e.g. {root / 'derivatives' / 'neoseg'}")
    check_can_write(out / "dataset_description.json")
    description = out / "dataset_description.json"
    if not description.is_file():
        taken = [name for name in DATASET_FILES if (out / name).exists()]
        if taken and not overwrite:
            raise ValueError(f"{out} already holds {', '.join(taken)} but no neoseg dataset_description.json; "
                             f"choose an empty folder, or pass --overwrite to replace them")
        return
    try:
        generated = json.loads(description.read_text()).get("GeneratedBy", [{}])[0]
    except (json.JSONDecodeError, AttributeError, IndexError, TypeError):
        generated = {}
    if generated.get("Name") != "neoseg":
        raise ValueError(f"{out} holds another dataset ({description} was not written by neoseg); "
                         f"choose an empty folder such as {root / 'derivatives' / 'neoseg'}")
    previous = generated.get("Model", {}).get("Digest")
    if previous != digest and not overwrite:
        redo = ("to redo the selected scans with this model (the others' results then drop out of the group "
                "tables)") if selected else "to redo every scan with this model"
        raise ValueError(f"{out} holds results of another model ({previous}, this one is {digest}); choose "
                         f"another -o, or pass --overwrite {redo}")


def write_description(out: Path, description: dict) -> None:
    write_text(out / "dataset_description.json", json.dumps(description, indent=2) + "\n", overwrite=True)


def dseg_tsv(hierarchy: Hierarchy, colours: dict[str, str]) -> str:
    """BIDS look-up table of the ``_dseg`` values: the leaves (the values a label map holds)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["index", "name", "color"])
    for i in hierarchy.leaves:
        c = hierarchy.channels[i]
        writer.writerow([c.value, c.name, colours.get(c.name, "#000000")])
    return buf.getvalue()


def planned_dseg_tsv(out: Path, hierarchy: Hierarchy, replace: bool = False) -> tuple[Path, str]:
    """``out/dseg.tsv`` (what the ``_dseg`` values mean, beside every run's label maps) and its
    text. Another label set's table may be replaced only with ``replace``: the label maps already
    there need it."""
    from .qc import structure_colours

    path, text = out / "dseg.tsv", dseg_tsv(hierarchy, structure_colours(hierarchy))
    if path.is_file() and not replace and path.read_text() != text:
        raise ValueError(f"{path} describes other labels (another model's results are in {out}); choose another "
                         f"-o, or pass --overwrite to replace it")
    return path, text


def write_dseg_tsv(out: Path, hierarchy: Hierarchy, replace: bool = False) -> Path:
    path, text = planned_dseg_tsv(out, hierarchy, replace)
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, text, overwrite=True)
    return path


@dataclass
class FinishedScan:
    """A scan whose outputs are all in the derivatives folder."""

    scan: DatasetScan
    volumes: dict[str, float]  # structure -> ml
    seconds: float | None  # segmentation time from the sidecar (read to decode), if recorded
    qc: Path | None  # relative to the derivatives folder


def finished_scans(out: Path, scans: list[DatasetScan], model: str = "") -> tuple[list[FinishedScan], int]:
    """The scans of ``scans`` with a volumes table in ``out``, with what the group files need, and
    how many were left out as made by another model than ``model`` (a digest; '' takes every one)."""
    done, others = [], 0
    for scan in scans:
        paths = output_paths(scan.path, scan.outdir(out), True, True)
        if not paths["volumes"].is_file() or not paths["sidecar"].is_file():
            continue
        try:
            sidecar = json.loads(paths["sidecar"].read_text())
            timings = sidecar.get("Timings") or {}
            seconds = float(sum(timings.values())) if timings else None
            made_by = (sidecar.get("Model") or {}).get("digest")
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            seconds, made_by = None, None
        if model and made_by and made_by != model:  # another model's (a run cut short, or of some participants)
            others += 1
            continue
        qc = paths["qc"].relative_to(out) if paths["qc"].is_file() else None
        done.append(FinishedScan(scan, read_volumes_tsv(paths["volumes"]), seconds, qc))
    return done, others


def group_volumes_tsv(finished: list[FinishedScan], structures: list[str]) -> str:
    """One row per scan, one column per structure (ml)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["participant_id", "session_id", "scan", *structures])
    for f in finished:
        s = f.scan
        writer.writerow([f"sub-{s.subject}", f"ses-{s.session}" if s.session else "n/a", s.stem,
                         *(f"{f.volumes[k]:.4f}" if k in f.volumes else "n/a" for k in structures)])
    return buf.getvalue()


def group_volumes_json(structures: list[str]) -> dict:
    """BIDS column descriptions of the group table."""
    columns = {"participant_id": {"Description": "subject"}, "session_id": {"Description": "session (n/a: none)"},
               "scan": {"Description": "output name stem of the T2w scan"}}
    for name in structures:
        columns[name] = {"Description": f"volume of {name} in the neoseg label map", "Units": "ml"}
    return columns


def dataset_scans_in(out: Path) -> list[DatasetScan]:
    """The scans that have neoseg results in a derivatives folder (whatever the input selection),
    so that group files cover every run into the same folder."""
    scans = []
    for pattern in ("sub-*/anat/*_desc-neoseg_volumes.tsv", "sub-*/ses-*/anat/*_desc-neoseg_volumes.tsv"):
        for path in out.glob(pattern):
            relative = path.parent.relative_to(out)
            subject = relative.parts[0].removeprefix("sub-")
            session = relative.parts[1].removeprefix("ses-") if len(relative.parts) == 3 else None
            name = path.name.replace("_desc-neoseg_volumes.tsv", "_T2w.nii.gz")  # stem() gives the same
            scans.append(DatasetScan(path.with_name(name), relative, subject, session))
    return sorted(scans, key=lambda s: str(s.relative / s.stem))
