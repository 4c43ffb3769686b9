"""gzip for NIfTI files: ISA-L (python-isal) where it is installed, zlib otherwise. Both read and
write the same standard gzip format; ISA-L inflated a 256^3 float32 scan 1.2-1.6x and deflated
the runtime's outputs about 4x faster than zlib (docs/benchmarks.md, the host path).

Reading inflates straight into the caller's array, a small piece at a time (no whole-file bytes
object and no second copy), and never past the bytes asked for, so a gzip bomb cannot fill the
memory. Concatenated members (as :func:`neoseg.core.io.write_nifti` writes) are read as one stream.
"""

from __future__ import annotations

import zlib as _zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal ships wheels for the platforms we support
    _isal = None

CODECS = {"zlib": _zlib, **({"isal": _isal} if _isal is not None else {})}
PIECE = 256 << 10  # bytes read or inflated at a time: source and destination stay in the CPU's cache
_active = "isal" if _isal is not None else "zlib"


def codec() -> str:
    """The codec in use: ``isal`` or ``zlib``."""
    return _active


@contextmanager
def using(name: str) -> Iterator[None]:
    """Use codec ``name`` within the block (benchmarks and tests compare them)."""
    global _active
    if name not in CODECS:
        raise ValueError(f"gzip codec {name!r} is not available here; choose one of {', '.join(CODECS)}")
    before, _active = _active, name
    try:
        yield
    finally:
        _active = before


def compress_member(data, level: int) -> bytes:
    """``data`` as one complete gzip member."""
    z = CODECS[_active].compressobj(level, _zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
    return z.compress(data) + z.flush()


def inflate_into(path: str | Path, skip: int, out) -> int:
    """Inflate the gzip file ``path``, drop its first ``skip`` bytes and fill the writable buffer
    ``out`` with the next ones; returns how many were filled (fewer when the file ends first).
    Nothing past ``skip + len(out)`` bytes is inflated."""
    mod = CODECS[_active]
    out = memoryview(out).cast("B")
    total, done = skip + len(out), 0  # bytes wanted, bytes inflated
    z, pending = mod.decompressobj(31), b""
    with open(path, "rb", buffering=0) as f:
        while done < total:
            if not pending:
                pending = f.read(PIECE)
                if not pending:
                    break
            data = z.decompress(pending, min(total - done, PIECE))
            pending = z.unconsumed_tail
            if z.eof:  # the next member, if any (zero padding after a member is allowed, as gzip does)
                pending = z.unused_data.lstrip(b"\0")
                z = mod.decompressobj(31)
            start = max(0, skip - done)
            if start < len(data):
                out[done + start - skip:done + len(data) - skip] = data[start:] if start else data
            done += len(data)
    return max(0, done - skip)
