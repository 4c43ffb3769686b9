"""Reader for dHCP-layout derivative trees (the real release and the built-in synthetic cohort):

    ROOT/sub-<id>/ses-<sid>/anat/sub-<id>_ses-<sid>_desc-restore_T2w.nii.gz
    ROOT/sub-<id>/ses-<sid>/anat/sub-<id>_ses-<sid>_desc-drawem9_dseg.nii.gz   (full or partial)
    ROOT/sub-<id>/ses-<sid>/anat/sub-<id>_ses-<sid>_desc-<structure>_mask.nii.gz  (optional)
    ROOT/sub-<id>/sub-<id>_sessions.tsv      (session_id, scan_age in weeks PMA; optional)

A label map is *partial* where its voxels hold a parent's own value (TCV, 10 in drawem9): the
children are unknown there. A session without a label map may be annotated by masks instead,
``desc-tcv_mask`` (a parent's outline) or ``desc-brain_mask`` (the brain); masks are read only
for sessions without a label map (see :mod:`neoseg.core.partial`).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from neoseg.core.once import warn_once

T2_SUFFIX = "_desc-restore_T2w.nii.gz"
LABEL_SUFFIX = "_desc-drawem9_dseg.nii.gz"
MASK_SUFFIX = "_mask.nii.gz"  # with a desc-<structure> entity before it
AGE_COLUMNS = ("scan_age", "age_at_scan")
NIFTI_ENDINGS = (".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz")
SHOWN = 5  # files left out named in the warning; the rest counted

log = logging.getLogger("neoseg.data")


@dataclass(frozen=True)
class Session:
    subject: str  # without "sub-"
    session: str  # without "ses-"
    t2: Path
    labels: Path | None
    scan_age: float  # weeks PMA; NaN when unknown
    masks: tuple[tuple[str, Path], ...] = ()  # (structure, file) of desc-<structure>_mask files, used
    # only when ``labels`` is None

    @property
    def sources(self) -> list[Path]:
        """The annotation files training reads: the label map, else the masks."""
        return [self.labels] if self.labels is not None else [p for _, p in self.masks]

    @property
    def key(self) -> str:
        return f"sub-{self.subject}_ses-{self.session}"

    @property
    def age_group(self) -> str:
        if math.isnan(self.scan_age):
            return "unknown"
        return "preterm" if self.scan_age < 37.0 else "term"


def _read_ages(subject_dir: Path) -> dict[str, float]:
    tsv = subject_dir / f"{subject_dir.name}_sessions.tsv"
    if not tsv.is_file():
        return {}
    ages = {}
    with tsv.open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            sid = str(row.get("session_id", "")).removeprefix("ses-")
            column = next((c for c in AGE_COLUMNS if c in row), None)
            try:
                ages[sid] = float(row[column]) if column else math.nan
            except (TypeError, ValueError):
                ages[sid] = math.nan
    return ages


def find_masks(t2: Path, stem: str) -> tuple[tuple[str, Path], ...]:
    """The ``<stem>_desc-<structure>_mask.nii.gz`` files beside ``t2``, by structure name."""
    found = []
    for path in sorted(t2.parent.glob(f"{stem}_desc-*{MASK_SUFFIX}")):
        desc = path.name[len(stem) + len("_desc-"): -len(MASK_SUFFIX)]
        if desc and "_" not in desc:
            found.append((desc, path))
    return tuple(found)


def find_sessions(root: str | Path, require_labels: bool = True, mask_names: list[str] | None = None) -> list[Session]:
    """All sessions under ``root`` with a T2 and, by default, an annotation: a drawem9 label map,
    or (given ``mask_names``, the structures a mask may name) at least one such mask. Sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist; pass the root of a dHCP-layout tree "
                         f"(sub-*/ses-*/anat/*{T2_SUFFIX})")
    sessions = []
    for t2 in sorted(root.glob(f"sub-*/ses-*/anat/*{T2_SUFFIX}")):
        stem = t2.name[: -len(T2_SUFFIX)]
        subject_dir = t2.parents[2]
        subject = subject_dir.name.removeprefix("sub-")
        session = t2.parents[1].name.removeprefix("ses-")
        labels = t2.with_name(stem + LABEL_SUFFIX)
        masks = ()
        if not labels.is_file():
            labels = None
            masks = tuple(m for m in find_masks(t2, stem) if m[0] in (mask_names or ()))
            if require_labels and not masks:
                continue
        age = _read_ages(subject_dir).get(session, math.nan)
        sessions.append(Session(subject, session, t2, labels, age, masks))
    if not sessions:
        wanted = f" and *{LABEL_SUFFIX}" + (f" or a desc-<{'|'.join(mask_names)}>{MASK_SUFFIX}" if mask_names else "")
        raise ValueError(f"no sessions with *{T2_SUFFIX}" + (wanted if require_labels else "")
                         + f" found under {root}; expected sub-*/ses-*/anat/ (dHCP derivative layout)")
    if require_labels:
        _warn_left_out(root, sessions, mask_names or [])
        _warn_no_age(root, sessions)
    return sessions


def _warn_no_age(root: Path, sessions: list[Session]) -> None:
    """Name the sessions without a scan age: the atlases registered to them are chosen by name, not
    by the nearest age, and evaluation puts them in an 'unknown' age group."""
    unknown = [s for s in sessions if math.isnan(s.scan_age)]
    if not unknown:
        return
    shown = ", ".join(s.key for s in unknown[:SHOWN]) + (f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN
                                                         else "")
    warn_once(log, ("age", str(root), tuple(s.key for s in unknown)),
              "%s: %d of %d session(s) without a scan age (a number in the %s column of "
              "sub-<id>/sub-<id>_sessions.tsv): %s; their atlases are chosen by name, not by age, and they are "
              "evaluated as age group 'unknown'", root, len(unknown), len(sessions), AGE_COLUMNS[0], shown)


def _warn_left_out(root: Path, sessions: list[Session], mask_names: list[str]) -> None:
    """Say which scans and annotations under ``root`` no session uses, and why: a T2 without an
    annotation, an annotation without its T2, or a T2 / label map named or placed otherwise than
    the layout (in a folder where no session was found). Other files (a release's T1w, other
    segmentations, masks beside a label map) are not named."""
    used = {p for s in sessions for p in (s.t2, s.labels, *(m for _, m in s.masks)) if p is not None}
    folders = {p.parent for p in used}
    left = []
    for path in sorted(root.glob("sub-*/**/*")):
        if path in used or not path.name.lower().endswith(NIFTI_ENDINGS) or not path.is_file():
            continue
        why = _why_left_out(path, mask_names, path.parent in folders)
        if why:
            left.append((path, why))
    if not left:
        return
    shown = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in left[:SHOWN])
    warn_once(log, ("left out", str(root), tuple(str(p) for p, _ in left)),
              "%s: %d scan or annotation file(s) not used: %s%s", root, len(left), shown,
              f"; and {len(left) - SHOWN} more" if len(left) > SHOWN else "")


def _why_left_out(path: Path, mask_names: list[str], beside_a_session: bool) -> str | None:
    """Why a scan or annotation file is not used, or None for a file neoseg does not look for."""
    name, in_layout = path.name, path.parent.name == "anat" and path.parents[1].name.startswith("ses-")
    masks = [f"_desc-{m}{MASK_SUFFIX}" for m in mask_names]
    if in_layout and name.endswith(T2_SUFFIX):
        others = sorted(p.name for p in path.parent.glob(f"{name[: -len(T2_SUFFIX)]}_desc-*{MASK_SUFFIX}"))
        if others:  # masks this command does not read (an atlas folder needs label maps)
            return f"a T2 with masks only ({', '.join(others)}): this command needs a *{LABEL_SUFFIX}" \
                + (" or *" + " or *".join(masks) if masks else "")
        return f"a T2 without an annotation: no *{LABEL_SUFFIX}" + (" or *" + " or *".join(masks) if masks else "") \
            + " beside it"
    for suffix in (LABEL_SUFFIX, *masks):
        if in_layout and name.endswith(suffix) and not beside_a_session:
            return f"an annotation without its T2 {name[: -len(suffix)]}{T2_SUFFIX}"
    if not beside_a_session and ("_T2w." in name or "_desc-drawem9_dseg." in name):
        return f"not read: neoseg reads sub-*/ses-*/anat/*{T2_SUFFIX} and *{LABEL_SUFFIX}"
    return None
