"""Which atlas is registered to which target (train/atlas.py): each partially labelled training
session (a *target*) gets the ``per_target`` fully labelled ones (the *atlases*) nearest to it in
scan age, and each (atlas, target) pair its cache file, named by a hash of what makes its result."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from neoseg.core.scans import voxel_size
from neoseg.data.dhcp import Session
from neoseg.data.splits import Split


@dataclass(frozen=True)
class Pair:
    atlas: Session
    target: Session
    coarsen: bool  # the target's partial labels are simulated: its full map is coarsened as read
    path: Path  # the cached registration (.npz)
    skipped: int = 0  # finest pyramid levels left out: the target is finer than the registration's resolution
    warp: str = "regular"  # which of registration.WARPS registers it


def nearest_atlases(target: Session, atlases: list[Session], k: int) -> list[Session]:
    """The ``k`` atlases nearest to ``target`` in scan age (weeks); an unknown age (NaN, of either)
    sorts last, ties by session key, so the choice is deterministic. ``k`` >= their number: all."""
    def distance(atlas: Session) -> tuple:
        gap = abs(atlas.scan_age - target.scan_age)
        return (math.isnan(gap), 0.0 if math.isnan(gap) else gap, atlas.key)

    return sorted(atlases, key=distance)[:k]


def plan_pairs(split: Split, sessions: list[Session], per_target: int, root: Path, key,
               resolution: float | None = None, warp: str = "regular") -> list[Pair]:
    """The pairs to register among ``sessions`` (those the run trains on): per target, its
    ``per_target`` nearest atlases. ``key``: what every pair's cache name also depends on
    (registration parameters, label tree, ...); files go to ``root/registrations``.
    ``resolution`` (mm): targets finer than it skip the pyramid's finest levels (read from their
    headers; None: none skipped). A pair that skips none keeps the cache name it always had.
    ``warp``: the registration (registration.WARPS) the pairs get; ``key`` holds its parameters."""
    from neoseg.core.registration import skipped_levels

    atlases = [s for s in sessions if split.is_full(s)]
    targets = [s for s in sessions if not split.is_full(s)]
    if not atlases or not targets:
        raise ValueError(f"--atlas needs at least one fully labelled and one partially labelled training session; "
                         f"found {len(atlases)} and {len(targets)} (raise or lower --full-fraction)")
    pairs = []
    for t in targets:
        skipped = 0 if resolution is None else skipped_levels(_voxel_size(t.t2), resolution)
        for a in nearest_atlases(t, atlases, per_target):
            made_of = [key, identity(a), identity(t), split.coarsened(t)]
            if skipped:
                made_of.append({"skipped_levels": skipped})
            name = f"{a.key}--{t.key}-{digest(made_of)}.npz"
            pairs.append(Pair(a, t, split.coarsened(t), root / "registrations" / name, skipped, warp))
    return pairs


def _voxel_size(path: Path) -> tuple[float, float, float]:
    """A scan's voxel size (mm), from its header alone."""
    import nibabel as nib

    return voxel_size(nib.load(str(path)))


def identity(session: Session) -> list:
    """What a session's result depends on: its files' paths, sizes and modification times."""
    ident = []
    for p in [session.t2, *session.sources]:
        st = Path(p).stat()
        ident += [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]
    return ident


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
