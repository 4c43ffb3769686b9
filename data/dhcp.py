"""Reader for dHCP-layout derivative trees (the real release and the built-in synthetic cohort):

    ROOT/sub-<id>/ses-<sid>/anat/sub-<id>_ses-<sid>_desc-restore_T2w.nii.gz
    ROOT/sub-<id>/ses-<sid>/anat/sub-<id>_ses-<sid>_desc-drawem9_dseg.nii.gz
    ROOT/sub-<id>/sub-<id>_sessions.tsv      (session_id, scan_age in weeks PMA; optional)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

T2_SUFFIX = "_desc-restore_T2w.nii.gz"
LABEL_SUFFIX = "_desc-drawem9_dseg.nii.gz"
AGE_COLUMNS = ("scan_age", "age_at_scan")


@dataclass(frozen=True)
class Session:
    subject: str  # without "sub-"
    session: str  # without "ses-"
    t2: Path
    labels: Path | None
    scan_age: float  # weeks PMA; NaN when unknown

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


def find_sessions(root: str | Path, require_labels: bool = True) -> list[Session]:
    """All sessions under ``root`` with a T2 (and, by default, a drawem9 label map), sorted."""
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
        if not labels.is_file():
            if require_labels:
                continue
            labels = None
        age = _read_ages(subject_dir).get(session, math.nan)
        sessions.append(Session(subject, session, t2, labels, age))
    if not sessions:
        raise ValueError(f"no sessions with *{T2_SUFFIX}" + (f" and *{LABEL_SUFFIX}" if require_labels else "")
                         + f" found under {root}; expected sub-*/ses-*/anat/ (dHCP derivative layout)")
    return sessions
