"""Sizes in plain words for one-line messages (shapes, byte counts, data types), and the memory this
process can still allocate. Numpy only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


# ---- plain-text formatting --------------------------------------------------------------------
def plain_shape(shape) -> str:
    """``(12, 5, 7)``, never ``(np.int64(12), ...)``."""
    return "(" + ", ".join(str(int(n)) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def human_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def dtype_name(dtype: np.dtype) -> str:
    if dtype.fields:
        return {3: "RGB24", 4: "RGBA32"}.get(len(dtype.fields), "structured")
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
    return f"{dtype.newbyteorder('=').name}{' big-endian' if big else ''}"


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- memory -------------------------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup (container) limit;
    None where the system does not say."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:  # cgroup v2: a container's limit, less what it uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = max(0, int(limit) - used)
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail
