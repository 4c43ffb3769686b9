"""Safe file output: nothing a user had is overwritten unasked, nothing is left half-written."""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from . import gz

K = TypeVar("K")


def files_digest(*paths: str | Path) -> str:
    """SHA-256 (hex) of the files' bytes, in order: what a model or a scan was, to tell it from another."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class OutputExistsError(FileExistsError):
    """Raised when an output exists and overwriting was not asked for."""


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; remove it, choose another output, or pass --overwrite")
    return path


def check_can_write(path: str | Path) -> Path:
    """Refuse, before any work, an output whose folder cannot be written (permissions, a read-only
    or immutable folder): a file is made and removed where the output's nearest existing folder is."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".neoseg-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{path}: cannot write in {folder} ({e.strerror or e}); choose another output folder, or "
                         f"fix its permissions") from None
    return path


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.
    The temporary name keeps the suffixes (.nii.gz) so writers that look at them still work."""
    with atomic_paths({0: path}, overwrite) as tmp:
        yield tmp[0]


@contextmanager
def atomic_paths(paths: Mapping[K, str | Path], overwrite: bool = False,
                 remove: Iterable[str | Path] = ()) -> Iterator[dict[K, Path]]:
    """Temporary paths beside a set of outputs. When the block succeeds they all appear at once,
    as far as a file system allows: each is moved in place, and if one move fails, those already
    moved are removed and any file they replaced (``overwrite``) is put back. When the block fails,
    nothing appears. Without ``overwrite`` an output that appeared meanwhile is never replaced.
    ``remove``: files of the output set being replaced that the new one lacks; they go with the
    same commit (and come back if it fails), and need ``overwrite`` like a replaced file."""
    final = {k: check_writable(p, overwrite) for k, p in paths.items()}
    stale = [check_writable(p, overwrite) for p in remove]
    tmps: dict[K, Path] = {}
    try:
        for k, path in final.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[k] = _temp_beside(path, ".part")
        yield dict(tmps)
        _commit(tmps, final, overwrite, stale)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def write_once(path: str | Path, write: Callable[[Path], None]) -> bool:
    """Write one content-keyed cache file atomically (``write`` fills the temporary path it is
    given) unless it is there. One that appears meanwhile (another process sharing the cache)
    holds the same result and is kept: nothing is ever overwritten, so a process reading the
    cache never finds a file missing. Returns whether this call wrote it."""
    path = Path(path)
    if path.is_file():
        return False
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except OutputExistsError:
        if path.is_file():
            return False
        raise  # something else (a folder) is in the way
    return True


def _temp_beside(path: Path, tag: str) -> Path:
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{tag}{suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _commit(tmps: dict, final: dict, overwrite: bool, stale: list[Path]) -> None:
    mode = 0o666 & ~_umask()  # mkstemp makes 0600; outputs get the usual permissions
    for tmp in tmps.values():
        os.chmod(tmp, mode)
    if overwrite and len(final) == 1 and not stale:  # one file: a rename replaces it in one step, so
        (k, path), = final.items()                   # a process reading it never finds it missing
        os.replace(tmps[k], path)
        return
    placed: list[Path] = []  # outputs that now hold new content
    saved: list[tuple[Path, Path]] = []  # (backup, output) of replaced files
    try:
        for path in stale:
            _set_aside(path, overwrite, saved)
        for k, path in final.items():
            _set_aside(path, overwrite, saved)
            _place(tmps[k], path)
            placed.append(path)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        for backup, path in saved:
            os.replace(backup, path)
        raise
    for backup, _ in saved:
        backup.unlink(missing_ok=True)


def _set_aside(path: Path, overwrite: bool, saved: list[tuple[Path, Path]]) -> None:
    """Move an existing ``path`` to a backup beside it, noted in ``saved``."""
    if os.path.lexists(path):
        if not overwrite:  # appeared while we were writing
            raise OutputExistsError(f"{path} appeared while writing; it was left untouched")
        backup = _temp_beside(path, ".old")
        os.replace(path, backup)
        saved.append((backup, path))


def _place(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` without replacing a file that appeared there meanwhile (a hard
    link is created only where no file is; file systems without links get a rename)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path} appeared while writing; it was left untouched") from None
    except OSError:
        os.replace(tmp, path)
    else:
        tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


GZIP_CHUNK = 8 << 20  # bytes compressed per thread and gzip member
GZIP_LEVEL = 1  # nibabel's own default: large label volumes compress well even at level 1


def load_nifti(path: str | Path):
    """Load a NIfTI file (.nii, .nii.gz, .hdr/.img; NIfTI-1 or -2) fully into memory as a single-file
    image, after :mod:`neoseg.core.scans` has checked its header (size, shape, type, orientation);
    ``.nii.gz`` is decompressed with ISA-L when present, never beyond the size the header claims."""
    from .scans import load_image

    return load_image(path)


def write_nifti(img, path: str | Path, threads: int | None = None) -> None:
    """Write a NIfTI-1 image; ``.nii.gz`` is compressed in parallel: threads transpose the data to
    the file's order and compress it in chunks, written as concatenated gzip members (RFC 1952
    allows any number; gzip, zlib's gzread, nibabel, ITK and FSL read them as one stream).
    Images that need nibabel's scaling or carry header extensions take nibabel's own path."""
    write_niftis([(img, path)], threads)


def write_niftis(images: Iterable[tuple[object, str | Path]], threads: int | None = None) -> None:
    """:func:`write_nifti` for several (image, path) pairs, whose chunks all share one set of
    threads: a small label map and a large mask are compressed side by side."""
    gzipped = []
    for img, path in images:
        if Path(path).suffix == ".gz":
            gzipped.append((img, Path(path)))
        else:
            img.to_filename(str(path))
    if not gzipped:
        return
    workers = max(1, threads or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        # numpy copies and ISA-L / zlib release the GIL, so the threads run in parallel
        jobs = [(path, [pool.submit(_compress, part) for part in _nifti_parts(img)]) for img, path in gzipped]
        try:
            for path, members in jobs:
                with path.open("wb") as f:
                    for member in members:
                        f.write(member.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _compress(part) -> bytes:
    return _gzip_member(part() if callable(part) else part)


def _nifti_parts(img) -> list:
    """The uncompressed file as pieces: the header block, then each 3D volume's bytes in
    Fortran order (callables, so the threads do any transposing)."""
    import nibabel as nib
    import numpy as np

    data = np.asanyarray(img.dataobj)
    header = img.header.copy()
    simple = (isinstance(img, nib.Nifti1Image) and not isinstance(img, nib.Nifti2Image)
              and not header.extensions and data.dtype == header.get_data_dtype() and data.ndim >= 3)
    if not simple:
        raw = memoryview(img.to_bytes())
        return [raw[i:i + GZIP_CHUNK] for i in range(0, len(raw), GZIP_CHUNK)]
    header.set_data_shape(data.shape)
    header.set_slope_inter(None, None)  # the data is stored as is
    header["vox_offset"] = 352  # 348-byte header + 4-byte extension flag
    volumes = data.reshape(data.shape[:3] + (-1,), order="F")
    parts: list = [header.binaryblock + b"\0\0\0\0"]
    for v in range(volumes.shape[3]):
        slab_z = max(1, GZIP_CHUNK // max(1, volumes[..., 0, v].nbytes))  # z planes per chunk
        for z in range(0, data.shape[2], slab_z):
            parts.append(lambda v=v, z=z: _fortran_bytes(volumes[:, :, z:z + slab_z, v]))
    return parts


def _fortran_bytes(block):
    """``block``'s bytes in Fortran order: the block itself (as a buffer, no copy) when it lies so
    in memory, as the runtime's outputs do."""
    return block.T if block.flags.f_contiguous else block.tobytes(order="F")


def _gzip_member(chunk) -> bytes:
    return gz.compress_member(chunk, GZIP_LEVEL)


def save_nifti(img, path: str | Path, overwrite: bool = False) -> Path:
    """Write a nibabel image atomically (parallel gzip for ``.nii.gz``)."""
    with atomic_path(path, overwrite) as tmp:
        write_nifti(img, tmp)
    return Path(path)
