"""Safe file output: nothing a user had is overwritten unasked, nothing is left half-written."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputExistsError(FileExistsError):
    """Raised when an output exists and overwriting was not asked for."""


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; remove it, choose another output, or pass --overwrite")
    return path


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.
    The temporary name keeps the suffixes (.nii.gz) so writers that look at them still work."""
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(f"{path} appeared while writing; it was left untouched")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_nifti(img, path: str | Path, overwrite: bool = False) -> Path:
    """Write a nibabel image atomically."""
    import nibabel as nib

    with atomic_path(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
