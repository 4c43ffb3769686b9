"""Telling a DICOM folder from a NIfTI dataset without the ``dicom`` extra installed."""

from __future__ import annotations

from pathlib import Path


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble)."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".") and is_dicom(p))


def is_dicom_folder(folder: Path) -> bool:
    """A folder that is no BIDS / dHCP dataset (no sub-*) and holds a DICOM file (stops at the first)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("sub-*")):
        return False
    return any(p.is_file() and not p.name.startswith(".") and is_dicom(p) for p in folder.rglob("*"))
