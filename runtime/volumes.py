"""Structure volumes of a label map: voxels and millilitres per channel of the hierarchy.

Volumes are counted on the written label map (``_dseg``), so they agree with what a viewer shows:
a leaf counts the voxels that carry one of its label values, a parent (TCV) the voxels of itself
and all its descendants. TCV is therefore exactly CGM + WM + DGM.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import Hierarchy

COLUMNS = ("structure", "label", "voxels", "volume_ml")
PER_VALUE_COUNTS = 16  # up to this many label values are counted one by one (see _counts)


@dataclass(frozen=True)
class Volume:
    structure: str
    label: int | None  # the channel's canonical label value (None for a parent without one)
    voxels: int
    ml: float


def structure_volumes(labels: np.ndarray, zooms, hierarchy: Hierarchy) -> list[Volume]:
    """One :class:`Volume` per channel, in hierarchy order; ``zooms`` are the voxel sizes in mm."""
    voxel_ml = float(np.prod(np.asarray(zooms, np.float64)[:3])) / 1000.0
    count_of = _counts(labels, {v for c in hierarchy.channels for v in c.values})
    out = []
    for i, channel in enumerate(hierarchy.channels):
        members = [i] + hierarchy.descendants(i)
        n = sum(count_of.get(v, 0) for m in members for v in hierarchy.channels[m].values)
        out.append(Volume(channel.name, channel.value, int(n), n * voxel_ml))
    return out


def _counts(labels: np.ndarray, values: set[int]) -> dict[int, int]:
    """Voxels per label value, for ``values`` (others may be missing). Order K: no transposing copy
    of a Fortran-ordered map. A few values are counted one pass each; bincount converts the whole
    map to int64 first, which costs as much as about 40 such passes."""
    flat = np.asarray(labels).ravel(order="K")
    if len(values) <= PER_VALUE_COUNTS:
        return {v: int(np.count_nonzero(flat == v)) for v in values}
    return dict(enumerate(np.bincount(flat).tolist()))  # label maps hold small non-negative integers


def volumes_tsv(volumes: list[Volume]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for v in volumes:
        writer.writerow([v.structure, "n/a" if v.label is None else v.label, v.voxels, f"{v.ml:.4f}"])
    return buf.getvalue()


def read_volumes_tsv(path: str | Path) -> dict[str, float]:
    """structure -> ml, from a file written by :func:`volumes_tsv`."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not set(COLUMNS) <= set(rows[0]):
        raise ValueError(f"{path} is not a neoseg volumes table (expected columns {', '.join(COLUMNS)})")
    return {r["structure"]: float(r["volume_ml"]) for r in rows}
