"""The atlas recipes beyond the paper (``neoseg-train --atlas``; docs/atlas.md): every fully
labelled training session (an *atlas*) is registered to every partially labelled one (a *target*),
once, in parallel, cached and resumable; then

* ``propagate``: each target's unknown children are filled where the fused warped atlases are
  confident, inside its known parent (:mod:`.atlas_fusion`); the result is a partial label map that
  replaces the target's own, trained on by the partial-label losses;
* ``pairs``: each atlas's image and labels warped together into each target's space, with the
  target's intensities, become an extra fully labelled training session (:mod:`.atlas_pairs`);
* ``both``: the two together.

The registration itself is :mod:`.registration`. A target whose partial labels are simulated (a full
map coarsened, the built-in cohort) is coarsened as it is read: propagation never sees its hidden
truth, which only the quality report of ``<out>/atlas.json`` reads. Everything is written under
``<cache>/atlas/`` (each file atomically, named by a hash of what made it), so a resumed or repeated
run reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import atomic_path, atomic_paths, save_nifti, write_nifti, write_text
from neoseg.core.partial import Coded
from neoseg.data.dhcp import LABEL_SUFFIX, T2_SUFFIX, Session
from neoseg.data.splits import Split

from . import registration
from .atlas_fusion import dice_by_value, fuse, leaf_values, most_likely, open_voxels, propagate
from .atlas_pairs import hard_labels, match_intensities
from .config import TrainConfig
from .recipes import pseudo_label_path, with_label_map
from .rundir import cache_folder

log = logging.getLogger("neoseg.train")

ATLAS_VERSION = 1  # bump when what is cached or written changes, so that older files are not reused
PARAMS = registration.RegistrationParams()  # the registration every pair gets (part of its cache key)


@dataclass(frozen=True)
class Pair:
    atlas: Session
    target: Session
    coarsen: bool  # the target's partial labels are simulated: its full map is coarsened as read
    path: Path  # the cached registration (.npz)


def atlas_sessions(config: TrainConfig, split: Split, sessions: list[Session], partial: list[bool],
                   hierarchy: Hierarchy, out: Path, ranks, progress: bool = False) -> tuple[list[Session], list[bool]]:
    """:func:`with_atlas` in a run of one or more processes (``ranks``, train/ranks.py): rank 0
    registers and writes, then the others name the same files."""
    if config.atlas == "none":
        return sessions, partial
    error, result = None, (sessions, partial)
    if ranks.main:
        try:
            result = with_atlas(config, split, sessions, partial, cache_folder(config, out), out, hierarchy,
                                progress=progress)
        except Exception as e:  # noqa: BLE001 - every rank stops with it, see after_main
            error = e
    ranks.after_main(error)
    if not ranks.main:
        result = with_atlas(config, split, sessions, partial, cache_folder(config, out), out, hierarchy, main=False)
    return result


def with_atlas(config: TrainConfig, split: Split, sessions: list[Session], partial: list[bool], cache: Path,
               out: Path, hierarchy: Hierarchy, main: bool = True, progress: bool = False,
               workers: int | None = None) -> tuple[list[Session], list[bool]]:
    """The training sessions and partial flags of ``config``'s atlas recipe: ``sessions`` with the
    propagated maps in place of the targets' own (``propagate``), plus the synthesised pairs
    (``pairs``). ``main``: this process registers and writes (and writes ``<out>/atlas.json``);
    other ranks only name the files it wrote. ``config.atlas == "none"``: unchanged."""
    if config.atlas == "none":
        return sessions, partial
    pairs = plan_pairs(split, hierarchy, cache / "atlas")
    began = time.monotonic()
    registered = register_pairs(pairs, hierarchy, workers, progress) if main else 0
    report = {"mode": config.atlas, "library": registration.LIBRARY, "version": registration.library_version(),
              "params": dataclasses.asdict(PARAMS),
              "atlases": sorted({p.atlas.key for p in pairs}), "targets": len({p.target.key for p in pairs}),
              "pairs": len(pairs), "registered": registered, "cached": len(pairs) - registered,
              "seconds": round(sum(_stored_seconds(p.path) for p in pairs), 1) if main else None}
    if config.atlas in ("propagate", "both"):
        replaced, stats = propagated_sessions(pairs, hierarchy, config.atlas_confidence, cache / "atlas", main)
        sessions = [replaced.get(s.key, s) for s in sessions]
        partial = [False if s.key in replaced else p for s, p in zip(sessions, partial)]
        report.update(confidence=config.atlas_confidence, **stats)
    if config.atlas in ("pairs", "both"):
        extra = pair_sessions(pairs, hierarchy, cache / "atlas", main)
        sessions, partial = sessions + extra, partial + [False] * len(extra)
    if main:
        report["wall_seconds"] = round(time.monotonic() - began, 1)
        write_text(out / "atlas.json", json.dumps(report, indent=2) + "\n", overwrite=True)
        log.info("atlas %s: %d registrations (%d new, %.0f s of registration in all), %s", config.atlas, len(pairs),
                 registered, report["seconds"], _summary(report))
    return sessions, partial


def plan_pairs(split: Split, hierarchy: Hierarchy, root: Path) -> list[Pair]:
    """Every (fully labelled, partially labelled) pair of the split's training sessions."""
    atlases = [s for s in split.train if split.is_full(s)]
    targets = [s for s in split.train if not split.is_full(s)]
    if not atlases or not targets:
        raise ValueError(f"--atlas needs at least one fully labelled and one partially labelled training session; "
                         f"found {len(atlases)} and {len(targets)} (raise or lower --full-fraction)")
    registration.require_library()
    key = [ATLAS_VERSION, PARAMS.key(), hierarchy.to_json()]
    return [Pair(a, t, split.coarsened(t), root / "registrations" / (
        f"{a.key}--{t.key}-{_digest([key, _identity(a), _identity(t), split.coarsened(t)])}.npz"))
        for t in targets for a in atlases]


def register_pairs(pairs: list[Pair], hierarchy: Hierarchy, workers: int | None = None, progress: bool = False) -> int:
    """Register the pairs whose result is not cached yet, ``workers`` processes at once (default:
    the CPUs this process may use; 1: in this process). Returns how many were registered."""
    from tqdm import tqdm

    todo = [p for p in pairs if not p.path.is_file()]
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo)))
    bar = tqdm(total=len(todo), desc="atlas registrations", disable=None if progress else True, leave=False)
    if workers == 1:
        for pair in todo:
            register_pair(pair, hierarchy)
            bar.update()
    elif todo:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(register_pair, p, hierarchy): p for p in todo}
            for done in as_completed(futures):
                if done.exception() is not None:  # stop at once: the queued pairs are not run first
                    pool.shutdown(wait=True, cancel_futures=True)
                    pair = futures[done]
                    raise ValueError(f"atlas registration of {pair.atlas.key} to {pair.target.key} failed: "
                                     f"{done.exception()}") from done.exception()
                bar.update()
    bar.close()
    return len(todo)


def register_pair(pair: Pair, hierarchy: Hierarchy) -> float:
    """Register one pair and cache the atlas's image and soft leaf maps in the target's grid
    (probabilities as uint8, 255 = 1). Returns its seconds."""
    from .volumes import load_session

    t0 = time.perf_counter()
    image, coded, img = target_annotation(pair.target, pair.coarsen, hierarchy)
    a_image, a_labels, a_img = load_session(pair.atlas)
    leaves = leaf_values(hierarchy)
    maps = [a_image] + [(a_labels == v).astype(np.float32) for v in leaves]
    warped = registration.warp_atlas(image, inside_parents(coded.codes, coded.table(hierarchy), hierarchy), a_image,
                                     inside_parents(a_labels, hierarchy.target_table(), hierarchy), maps,
                                     _zooms(img), _zooms(a_img), PARAMS)
    soft = np.round(np.clip(np.stack(warped[1:]), 0, 1) * 255).astype(np.uint8)
    seconds = time.perf_counter() - t0
    with atomic_path(pair.path, overwrite=True) as tmp:
        np.savez_compressed(tmp, image=warped[0].astype(np.float32), soft=soft, leaves=np.asarray(leaves),
                            seconds=np.float64(seconds))
    return seconds


def target_annotation(session: Session, coarsen: bool, hierarchy: Hierarchy) -> tuple[np.ndarray, Coded, object]:
    """A target's T2, annotation codes and canonical image: as its files say, or, for a simulated
    partial session, its map coarsened to the parents (what the training sees of it)."""
    from .volumes import load_coded

    image, coded, img = load_coded(session, hierarchy)
    if coarsen:
        coded = Coded(hierarchy.coarsen(coded.codes), (), coded.first_extra)
    return image, coded, img


def inside_parents(codes: np.ndarray, table: np.ndarray, hierarchy: Hierarchy) -> np.ndarray:
    """Voxels known to lie inside a parent (any channel with children): the registration's second channel."""
    parents = [p for p, _ in hierarchy.sibling_groups]
    return (table[codes][..., parents] == 1).any(axis=-1)


def propagated_sessions(pairs: list[Pair], hierarchy: Hierarchy, confidence: float, root: Path,
                        main: bool) -> tuple[dict[str, Session], dict]:
    """Per target key, the session with its propagated partial map (written under ``root`` where
    ``main``), and the report: the share of parent voxels left unknown and, for simulated targets,
    the Dice of the warped and of the propagated (confident) children against the hidden truth."""
    folder = root / f"propagate-{_digest([ATLAS_VERSION, sorted(p.path.name for p in pairs), confidence])}"
    by_target: dict[str, list[Pair]] = {}
    for p in pairs:
        by_target.setdefault(p.target.key, []).append(p)
    out, skipped, counts, dice = {}, [], [0, 0], {"warped": [], "propagated": []}
    for key, group in by_target.items():
        target = group[0].target
        if target.labels is None:  # masks only: no label map to write the children into
            skipped.append(key)
            continue
        if main:  # fused again on a rerun (cheap), for the report; the map is written once
            _propagate_one(group, hierarchy, confidence, pseudo_label_path(folder, target), counts, dice)
        out[key] = with_label_map(target, folder)
    if skipped and main:
        log.warning("--atlas propagate: %d session(s) annotated by masks only keep their own annotation (a partial "
                    "label map has no value for 'unknown outside the mask'): %s", len(skipped), ", ".join(skipped))
    stats = {"not_propagated": skipped}
    if main and counts[1]:
        stats["unknown_share"] = round(counts[0] / counts[1], 4)
    if main and dice["warped"]:
        stats["dice"] = {kind: _mean_by_name(rows, hierarchy) for kind, rows in dice.items()}
    return out, stats


def _propagate_one(group: list[Pair], hierarchy: Hierarchy, confidence: float, path: Path, counts: list[int],
                   dice: dict) -> None:
    import nibabel as nib

    from .volumes import load_labels

    image, coded, img = target_annotation(group[0].target, group[0].coarsen, hierarchy)
    leaves, warped, soft = _load_warped(group)
    fused = fuse(image, warped, soft)
    labels, undecided = propagate(coded.codes, fused, leaves, hierarchy, confidence)
    open_ = open_voxels(coded.codes, leaves, hierarchy)
    counts[0] += int(undecided.sum())
    counts[1] += int(open_.sum())
    if not path.is_file():
        save_nifti(nib.Nifti1Image(labels.astype(hierarchy.label_dtype), img.affine), path)
    if group[0].coarsen:  # the quality report: the hidden truth, read here only
        truth, _ = load_labels(group[0].target.labels)
        children = sorted(set(np.unique(truth[open_]).tolist()))
        warped_labels = most_likely(coded.codes, fused, leaves, hierarchy)
        dice["warped"].append(dice_by_value(warped_labels, truth, children, open_))
        dice["propagated"].append(dice_by_value(labels, truth, children, open_ & ~undecided))


def pair_sessions(pairs: list[Pair], hierarchy: Hierarchy, root: Path, main: bool) -> list[Session]:
    """The synthesised fully labelled sessions, one per pair, in a dHCP-layout folder under ``root``
    (written where ``main`` and not yet there)."""
    folder = root / f"pairs-{_digest([ATLAS_VERSION, sorted(p.path.name for p in pairs)])}"
    sessions = []
    for pair in pairs:
        a, t = pair.atlas, pair.target
        subject, ses = f"{a.subject}to{t.subject}", f"{a.session}to{t.session}"
        anat = folder / f"sub-{subject}" / f"ses-{ses}" / "anat"
        stem = f"sub-{subject}_ses-{ses}"
        session = Session(subject, ses, anat / f"{stem}{T2_SUFFIX}", anat / f"{stem}{LABEL_SUFFIX}", t.scan_age)
        if main and not session.labels.is_file():
            _write_pair(pair, hierarchy, session)
        sessions.append(session)
    return sessions


def _write_pair(pair: Pair, hierarchy: Hierarchy, session: Session) -> None:
    import nibabel as nib

    image, coded, img = target_annotation(pair.target, pair.coarsen, hierarchy)
    leaves, warped, soft = _load_warped([pair])
    labels = hard_labels(soft[0], leaves, hierarchy.label_dtype)
    codes = coded.codes.astype(np.int64)
    regions = np.where(codes < coded.first_extra, hierarchy.coarsen(np.minimum(codes, coded.first_extra - 1)), codes)
    matched = match_intensities(warped[0], hierarchy.coarsen(labels), image, regions)
    with atomic_paths({"t2": session.t2, "labels": session.labels}, overwrite=True) as tmp:
        write_nifti(nib.Nifti1Image(matched, img.affine), tmp["t2"])
        write_nifti(nib.Nifti1Image(labels, img.affine), tmp["labels"])


def _load_warped(group: list[Pair]) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """(leaf values, warped images, soft maps (L, ...) in [0, 1]) of the pairs' cached registrations."""
    images, soft, leaves = [], [], None
    for pair in group:
        with np.load(pair.path) as cached:
            images.append(cached["image"])
            soft.append(cached["soft"].astype(np.float32) / 255)
            leaves = cached["leaves"].tolist()
    return leaves, images, soft


def _stored_seconds(path: Path) -> float:
    with np.load(path) as cached:
        return float(cached["seconds"])


def _identity(session: Session) -> list:
    ident = []
    for p in [session.t2, *session.sources]:
        st = Path(p).stat()
        ident += [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]
    return ident


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _zooms(img) -> tuple[float, float, float]:
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def _mean_by_name(rows: list[dict[int, float]], hierarchy: Hierarchy) -> dict[str, float]:
    name = {v: c.name for c in hierarchy.channels for v in c.values}
    values = sorted({v for r in rows for v in r})
    return {name[v]: round(float(np.nanmean([r.get(v, math.nan) for r in rows])), 4) for v in values}


def _summary(report: dict) -> str:
    parts = []
    if "unknown_share" in report:
        parts.append(f"{100 * report['unknown_share']:.0f} % of the parents' voxels left unknown")
    for kind, scores in report.get("dice", {}).items():
        parts.append(f"{kind} children Dice " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    return "; ".join(parts) or "done"
