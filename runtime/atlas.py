"""Atlas fusion at inference (``neoseg-infer --atlas DIR``): the fully labelled sessions of a
dHCP-layout folder (the *atlases*) are registered to each scan inside the parent the network found,
and their warped children are blended with the network's.

Per scan, after the network: the ``per_scan`` atlases whose parent volume is nearest to the scan's
(the network's parent mask; brain size stands in for the age a scan does not state) are registered
to it with Greedy, T2 and parent outline as two channels (:mod:`neoseg.core.registration`, as
``neoseg-train --atlas``), and fused per voxel by local similarity (:mod:`neoseg.core.atlas_fusion`).
For each parent and its children, a child's atlas probability is its share of the fused children
times the network's parent probability; the child's probability becomes

    (1 - weight) * network + weight * atlas

wherever the warped atlases cover the parent (elsewhere the network's stays). The weight is one
for every child, or one per child (``"0.5,wm=0,cgm=0"``: :func:`parse_weights`), chosen on
validation scans: where the network is already good at a child, the atlases can only blur it.
Masks of the children are thresholded again and the voxels the network labelled inside a parent
take the most probable child again, down to a leaf; every other channel and voxel keeps the
network's result.

Why: with one fully labelled subject, a network learns the deep grey matter from labels that
registration propagated, and ends up less accurate there than registering the subject to the scan
itself; the blend raised the deep grey matter of every model measured (docs/atlas.md). It costs a
registration per atlas and scan, each on one thread, several at once in their own processes
(seconds at 2 mm, about a minute at 0.5 mm, which is registered at 1 mm: :data:`RESOLUTION_MM`).
numpy, nibabel, SimpleITK and Greedy only: no torch.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neoseg.core import registration
from neoseg.core.atlas_fusion import fuse
from neoseg.core.hierarchy import Hierarchy
from neoseg.core.labels import MAX_LABEL_VALUE, as_label_map, present_values
from neoseg.core.partial import partial_values
from neoseg.core.scans import check_same_grid, read_labels, read_scan, voxel_size

RESOLUTION_MM = 1.0  # finest registration level, as neoseg-train --atlas-resolution's default
EPS = 1e-6


@dataclass(frozen=True)
class Atlas:
    """One fully labelled session: its files and the volume (mm³) inside its top parents."""

    key: str
    t2: Path
    labels: Path
    parent_mm3: float


class AtlasFusion:
    """The atlases of one run of the runtime, and how each scan's results are blended with them."""

    def __init__(self, atlases: list[Atlas], hierarchy: Hierarchy, per_scan: int = 3, weight: float | str = 0.5,
                 warps=("regular",)):
        if not hierarchy.sibling_groups:
            raise ValueError(f"--atlas blends children with their parent, but hierarchy '{hierarchy.name}' has no "
                             f"parent with children; leave --atlas out")
        if per_scan < 1:
            raise ValueError(f"--atlas-per-scan must be at least 1, got {per_scan}")
        self.groups = hierarchy.sibling_groups
        self.kids = [k for _, kids in self.groups for k in kids]
        self.weights = parse_weights(str(weight), hierarchy, self.kids)  # child channel -> weight
        self.warps = registration.parse_warps(warps)  # each atlas registered once per warp, all fused
        registration.require_library()
        self.atlases, self.hierarchy, self.per_scan = atlases, hierarchy, per_scan
        self.tops = [p for p, _ in self.groups if p not in self.kids]  # parents that are nobody's child
        # keep_last: the last scan's fused atlases are kept, so that the same scan is blended again (other
        # weights) without registering it again (neoseg-eval --atlas-weight choose); off: nothing is held
        self.keep_last, self._last = False, None

    @classmethod
    def from_sessions(cls, sessions, hierarchy: Hierarchy, per_scan: int = 3, weight: float | str = 0.5,
                      warps=("regular",), where: str = "the atlas sessions") -> "AtlasFusion":
        """The fully labelled ones of ``sessions`` (``neoseg.data.dhcp.Session``: a label map that
        leaves no child unknown) as atlases; ``where`` names them in the error where there is none."""
        unknown, atlases = partial_values(hierarchy), []
        table = hierarchy.target_table()
        inside = table[:, [p for p, _ in hierarchy.sibling_groups]].max(axis=1) == 1  # values inside a parent
        for s in sessions:
            if s.labels is None:
                continue
            checked = read_labels(s.labels, max_value=MAX_LABEL_VALUE)
            labels = as_label_map(checked.data, s.labels)
            values = present_values(labels)
            unnamed = hierarchy.unnamed(values)
            if unnamed:
                raise ValueError(f"{s.labels}: label values {unnamed} are not named by hierarchy '{hierarchy.name}'; "
                                 f"pass a folder of sessions labelled with the model's hierarchy")
            if unknown.intersection(values):
                continue  # partially labelled: no children to give
            counts = np.bincount(labels.ravel(), minlength=len(table))[:len(table)]
            atlases.append(Atlas(s.key, s.t2, s.labels, float(counts[inside].sum()) * float(np.prod(checked.zooms))))
        if not atlases:
            raise ValueError(f"{where}: no fully labelled session (a T2 with a _dseg that names every child, no "
                             f"parent's own value) to use as an atlas; pass a folder that holds one")
        return cls(atlases, hierarchy, per_scan, weight, warps)

    def choose(self, parent_mm3: float) -> list[Atlas]:
        """The ``per_scan`` atlases whose parent volume is nearest to ``parent_mm3`` (ties by key)."""
        return sorted(self.atlases, key=lambda a: (abs(a.parent_mm3 - parent_mm3), a.key))[:self.per_scan]

    def refine(self, image: np.ndarray, spacing, labels: np.ndarray, masks: np.ndarray, probs: np.ndarray,
               thresholds, workers: int = 1) -> dict:
        """Blend the children of one scan in place. ``image`` (X, Y, Z) canonical, of voxel size
        ``spacing``; ``labels`` (X, Y, Z), ``masks`` and ``probs`` (X, Y, Z, C) the network's results
        on the same grid (views into the outputs). Returns what was done, for the sidecar. Each
        registration runs on one thread: seeded, Greedy then gives the same result every time
        (with several threads it does not); up to ``workers`` of them run at once, each in its own
        process (Greedy silences its output per process). With ``keep_last``, the same scan again
        (same image, parent, atlases and warps) reuses its registrations."""
        began = time.perf_counter()
        inside = np.zeros(labels.shape, bool)
        for p in self.tops:
            inside |= masks[..., p].astype(bool)
        if not inside.any():
            return {"atlases": [], "weights": self.named_weights(), "warps": self.warps,
                    "note": "no parent found: the network's result kept"}
        chosen = self.choose(float(inside.sum()) * float(np.prod(spacing)))
        key = self._scan_key(image, inside, spacing, chosen) if self.keep_last else None
        last = self._last
        if key is None or last is None or last[0] != key:
            table = self.hierarchy.target_table()
            jobs = [_Job(image, inside, tuple(spacing), atlas, warp, table, self.kids, self.tops)
                    for atlas in chosen for warp in self.warps]
            warped = _register_all(jobs, workers)
            last = (key, fuse(image, [w[0] for w in warped], [w[1] for w in warped]))  # (len(kids), X, Y, Z)
            self._last = last if self.keep_last else None
        self._blend(last[1], labels, masks, probs, thresholds)
        return {"atlases": [a.key for a in chosen], "weights": self.named_weights(), "warps": self.warps,
                "seconds": round(time.perf_counter() - began, 2)}

    def _scan_key(self, image: np.ndarray, inside: np.ndarray, spacing, chosen: list[Atlas]) -> tuple:
        """What the fused atlases of a scan depend on: its image and parent, the atlases and warps."""
        digest = hashlib.sha1(np.ascontiguousarray(image))
        digest.update(np.packbits(inside))
        return (digest.hexdigest(), image.shape, image.dtype.str, tuple(spacing), tuple(a.key for a in chosen),
                tuple(self.warps))

    def named_weights(self) -> dict[str, float]:
        return {self.hierarchy.names[k]: w for k, w in self.weights.items()}

    def _blend(self, fused: np.ndarray, labels, masks, probs, thresholds) -> None:
        row = {k: i for i, k in enumerate(self.kids)}
        for parent, kids in self.groups:  # top-down: a nested parent is blended before its children
            atlas = fused[[row[k] for k in kids]]
            total = atlas.sum(axis=0)
            covered = total > EPS
            share = atlas / np.maximum(total, EPS)
            for i, k in enumerate(kids):
                w = self.weights[k]
                blended = (1 - w) * probs[..., k] + w * share[i] * probs[..., parent]
                probs[..., k] = np.where(covered, blended, probs[..., k])
                masks[..., k] = probs[..., k] >= thresholds[k]
        self._relabel(labels, probs)

    def _relabel(self, labels: np.ndarray, probs: np.ndarray) -> None:
        """The voxels labelled under a top parent take its most probable child again, down to a leaf."""
        h = self.hierarchy
        for top in self.tops:
            where = np.isin(labels, [h.channels[c].value for c in h.descendants(top) if c in h.leaves])
            if where.any():
                labels[where] = h.descend(np.full(int(where.sum()), top), probs[where].T).astype(labels.dtype)


@dataclass(frozen=True)
class _Job:
    """One registration of an atlas to a scan, as a worker process receives it."""

    image: np.ndarray
    inside: np.ndarray  # the scan's top parents, as the network found them
    spacing: tuple
    atlas: Atlas
    warp: str
    table: np.ndarray  # the hierarchy's target table: label value -> channel rows
    kids: list
    tops: list


def _register_all(jobs: list[_Job], workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_register` of every job, in order; up to ``workers`` processes at once."""
    if workers <= 1 or len(jobs) == 1:
        return [_register(job) for job in jobs]
    from concurrent.futures.process import BrokenProcessPool

    from neoseg.core.workers import process_pool

    try:
        with process_pool(min(workers, len(jobs))) as pool:  # a failure or Ctrl-C stops it at once
            return list(pool.map(_register, jobs))
    except BrokenProcessPool as e:  # a registration process killed (e.g. out of memory at 0.5 mm)
        raise ValueError(f"--atlas: {registration.PROCESS_ENDED} ({e}); run fewer at once (--threads 1), or "
                         f"segment without --atlas") from e


def _register(job: _Job) -> tuple[np.ndarray, np.ndarray]:
    """The atlas registered to the scan on one thread: its warped image and children (K, X, Y, Z) in [0, 1]."""
    a_image, a_labels, a_spacing = _load(job.atlas)
    rows = job.table[a_labels]
    maps = [a_image] + [(rows[..., k] == 1).astype(np.float32) for k in job.kids]
    try:
        warped = registration.warp_atlas(
            job.image, job.inside, a_image, (rows[..., job.tops] == 1).any(axis=-1), maps, job.spacing, a_spacing,
            registration.WARPS[job.warp], threads=1,
            skipped=registration.skipped_levels(job.spacing, RESOLUTION_MM))
    except Exception as e:  # noqa: BLE001 - Greedy's own errors, as one line
        what = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"--atlas: registering {job.atlas.key} to the scan failed ({what}); segment it "
                         f"without --atlas, or with other atlases") from e
    return warped[0], np.clip(np.stack(warped[1:]), 0, 1)


def parse_weights(text: str, hierarchy: Hierarchy, kids: list[int]) -> dict[int, float]:
    """``--atlas-weight``: a number for every child, and/or ``name=number`` for one, comma-separated
    (``"0.5"``, ``"0.5,wm=0,cgm=0"``, ``"dgm=0.75"``: children not named get 0.5 unless a bare
    number says otherwise); each in [0, 1], at least one above 0."""
    names = {hierarchy.names[k]: k for k in kids}
    default, named = 0.5, {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not 0 <= number <= 1 or (name and name not in names):
            raise ValueError(f"--atlas-weight: '{item}' is not a weight in [0, 1]" + (
                f" for a child ({', '.join(names)})" if name else "") + "; e.g. 0.5 or 0.5,wm=0,cgm=0")
        if name:
            named[names[name]] = number
        else:
            default = number
    weights = {k: named.get(k, default) for k in kids}
    if not any(weights.values()):
        raise ValueError("--atlas-weight: every child's weight is 0, so the atlases would change nothing; "
                         "give at least one a weight above 0, or leave --atlas out")
    return weights


def _load(atlas: Atlas) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """An atlas's T2 (float32) and label map, canonical, on one grid."""
    image = nib.as_closest_canonical(read_scan(atlas.t2, nonfinite="refuse").image)
    labels = nib.as_closest_canonical(read_labels(atlas.labels, max_value=MAX_LABEL_VALUE).image)
    check_same_grid(atlas.labels, labels, image, atlas.t2)
    data = np.asarray(labels.dataobj)
    return np.asarray(image.dataobj, np.float32), as_label_map(data, atlas.labels), voxel_size(image)
