"""The atlas recipes beyond the paper (``neoseg-train --atlas``; docs/atlas.md): each partially
labelled training session (a *target*) gets the ``--atlas-per-target`` fully labelled ones (the
*atlases*) nearest to it in scan age (:mod:`.atlas_plan`), each registered to it once per
``--atlas-warps`` setting, in parallel, cached and resumable; then

* ``propagate``: each target's unknown children are filled where the fused warped atlases are
  confident, inside its known parent (:mod:`neoseg.core.atlas_fusion`); the result is a partial label map that
  replaces the target's own, trained on by the partial-label losses;
* ``pairs``: each atlas's image and labels warped together into each target's space, with the
  target's intensities, become an extra fully labelled training session (:mod:`.atlas_pairs`);
* ``both``: the two together.

The registration itself is :mod:`neoseg.core.registration`. A target whose partial labels are simulated (a full
map coarsened, the built-in cohort) is coarsened as it is read: propagation never sees its hidden
truth, which only the quality report of ``<out>/atlas.json`` reads. Everything is written under
``<cache>/atlas/`` (each file atomically and once, named by a hash of what made it), so a resumed,
repeated or concurrent run reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import write_nifti, write_once, write_text
from neoseg.core.partial import Coded
from neoseg.core.scans import voxel_size
from neoseg.core.workers import process_pool
from neoseg.data.dhcp import LABEL_SUFFIX, T2_SUFFIX, Session
from neoseg.data.splits import Split

from neoseg.core import registration
from neoseg.core.atlas_fusion import dice_by_value, fuse, leaf_values, most_likely, open_voxels, propagate
from .atlas_pairs import hard_labels, match_intensities
from .atlas_plan import Pair, digest, plan_pairs
from .config import TrainConfig
from .recipes import pseudo_label_path, with_label_map
from .rundir import cache_folder

log = logging.getLogger("neoseg.train")

ATLAS_VERSION = 1  # bump when what is cached or written changes, so that older files are not reused
PAIRS_VERSION = 2  # bump when the synthesised pairs change (2: voxels outside the warped field of view are outside)
PARAMS = registration.WARPS["regular"]  # the default registration (each warp's parameters are part of its cache key)
FIGURES_SUFFIX = "_desc-atlas_figures.json"  # beside each propagated map: its figures for atlas.json


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
    registration.require_library()
    pairs = [pair for warp in config.atlas_warps
             for pair in plan_pairs(split, sessions, config.atlas_per_target, cache / "atlas",
                                    [ATLAS_VERSION, registration.WARPS[warp].key(), hierarchy.to_json()],
                                    config.atlas_resolution, warp)]
    began = time.monotonic()
    registered = register_pairs(pairs, hierarchy, workers, progress) if main else 0
    report = {"mode": config.atlas, "library": registration.LIBRARY, "version": registration.library_version(),
              "params": {w: dataclasses.asdict(registration.WARPS[w]) for w in config.atlas_warps},
              "resolution_mm": config.atlas_resolution,
              "skipped_levels": sorted({p.skipped for p in pairs}), "atlas_per_target": config.atlas_per_target,
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


def register_pairs(pairs: list[Pair], hierarchy: Hierarchy, workers: int | None = None, progress: bool = False) -> int:
    """Register the pairs whose result is not cached yet, ``workers`` processes at once (default:
    the CPUs this process may use; 1: in this process). Returns how many were registered."""
    from tqdm import tqdm

    todo = [p for p in pairs if not p.path.is_file()]
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo)))
    if todo:
        log.info("atlas: registering %d of %d pairs (%d cached), %d at once", len(todo), len(pairs),
                 len(pairs) - len(todo), workers)
    bar = tqdm(total=len(todo), desc="atlas registrations", disable=None if progress else True, leave=False)
    began, step = time.monotonic(), max(1, len(todo) // 10)

    def one_done(n: int) -> None:  # the bar on a terminal; a log line each tenth in a log file or batch job
        bar.update()
        if bar.disable and (n % step == 0 or n == len(todo)):
            log.info("atlas: %d of %d registered (%.0f s)", n, len(todo), time.monotonic() - began)

    if workers == 1:
        for n, pair in enumerate(todo, 1):
            try:
                register_pair(pair, hierarchy)
            except Exception as e:  # noqa: BLE001 - named and re-raised
                raise _failed(pair, e) from e
            one_done(n)
    elif todo:
        with process_pool(workers) as pool:  # a failure or Ctrl-C stops it at once; what is cached stays
            futures = {pool.submit(register_pair, p, hierarchy): p for p in todo}
            for n, done in enumerate(as_completed(futures), 1):
                error = done.exception()
                if error is not None:
                    if isinstance(error, BrokenProcessPool):
                        error = RuntimeError(registration.PROCESS_ENDED)
                    raise _failed(futures[done], error) from done.exception()
                one_done(n)
    bar.close()
    return len(todo)


def _failed(pair: Pair, error: BaseException) -> ValueError:
    """The one-line error of a failed registration, naming the pair."""
    what = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(f"atlas registration of {pair.atlas.key} to {pair.target.key} failed: {what}")


def register_pair(pair: Pair, hierarchy: Hierarchy) -> float:
    """Register one pair and cache the atlas's image (float16, divided by its largest magnitude,
    ``scale``) and soft leaf maps (probabilities as uint8, 255 = 1) in the target's grid. Returns
    its seconds."""
    from .volumes import load_session

    t0 = time.perf_counter()
    image, coded, img = target_annotation(pair.target, pair.coarsen, hierarchy)
    a_image, a_labels, a_img = load_session(pair.atlas)
    leaves = leaf_values(hierarchy)
    maps = [a_image] + [(a_labels == v).astype(np.float32) for v in leaves]
    warped = registration.warp_atlas(image, inside_parents(coded.codes, coded.table(hierarchy), hierarchy), a_image,
                                     inside_parents(a_labels, hierarchy.target_table(), hierarchy), maps,
                                     voxel_size(img), voxel_size(a_img), registration.WARPS[pair.warp],
                                     skipped=pair.skipped)
    soft = np.round(np.clip(np.stack(warped[1:]), 0, 1) * 255).astype(np.uint8)
    scale = float(np.abs(warped[0]).max()) or 1.0  # the image as float16 of [-1, 1]: half the disk of float32
    seconds = time.perf_counter() - t0
    write_once(pair.path, lambda tmp: np.savez_compressed(tmp, image=(warped[0] / scale).astype(np.float16),
                                                          scale=np.float32(scale), soft=soft,
                                                          leaves=np.asarray(leaves), seconds=np.float64(seconds)))
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
    folder = root / f"propagate-{digest([ATLAS_VERSION, sorted(p.path.name for p in pairs), confidence])}"
    by_target: dict[str, list[Pair]] = {}
    for p in pairs:
        by_target.setdefault(p.target.key, []).append(p)
    out, skipped, figures = {}, [], []
    for key, group in by_target.items():
        target = group[0].target
        if target.labels is None:  # masks only: no label map to write the children into
            skipped.append(key)
            continue
        if main:
            figures.append(_propagate_one(group, hierarchy, confidence, pseudo_label_path(folder, target)))
        out[key] = with_label_map(target, folder)
    if skipped and main:
        log.warning("--atlas propagate: %d session(s) annotated by masks only keep their own annotation (a partial "
                    "label map has no value for 'unknown outside the mask'): %s", len(skipped), ", ".join(skipped))
    stats = {"not_propagated": skipped}
    open_ = sum(f["open"] for f in figures)
    if main and open_:
        stats["unknown_share"] = round(sum(f["unknown"] for f in figures) / open_, 4)
    scored = [f["dice"] for f in figures if "dice" in f]
    if main and scored:
        stats["dice"] = {kind: _mean_by_name([_dice_row(d[kind]) for d in scored], hierarchy)
                         for kind in ("warped", "propagated")}
    return out, stats


def _propagate_one(group: list[Pair], hierarchy: Hierarchy, confidence: float, path: Path) -> dict:
    """Write one target's propagated map (once) and return its figures for the report: ``unknown``
    and ``open`` voxel counts and, for a simulated target, ``dice`` rows. The figures are kept in a
    JSON file beside the map, so a rerun reads them instead of fusing again."""
    import nibabel as nib

    from .volumes import load_labels

    stored = path.with_name(path.name.replace(LABEL_SUFFIX, FIGURES_SUFFIX))
    if path.is_file() and stored.is_file():
        return json.loads(stored.read_text())
    image, coded, img = target_annotation(group[0].target, group[0].coarsen, hierarchy)
    leaves, warped, soft = _load_warped(group)
    fused = fuse(image, warped, soft)
    labels, undecided = propagate(coded.codes, fused, leaves, hierarchy, confidence)
    open_ = open_voxels(coded.codes, leaves, hierarchy)
    write_once(path, lambda tmp: write_nifti(nib.Nifti1Image(labels.astype(hierarchy.label_dtype), img.affine), tmp))
    figures = {"unknown": int(undecided.sum()), "open": int(open_.sum())}
    if group[0].coarsen:  # the quality report: the hidden truth, read here only, after the map is made
        truth, _ = load_labels(group[0].target.labels)
        children = sorted(set(np.unique(truth[open_]).tolist()))
        warped_labels = most_likely(coded.codes, fused, leaves, hierarchy)
        figures["dice"] = {"warped": _json_row(dice_by_value(warped_labels, truth, children, open_)),
                           "propagated": _json_row(dice_by_value(labels, truth, children, open_ & ~undecided))}
    write_once(stored, lambda tmp: tmp.write_text(json.dumps(figures) + "\n"))
    return figures


def _json_row(row: dict[int, float]) -> dict[str, float | None]:
    return {str(v): None if math.isnan(d) else d for v, d in row.items()}


def _dice_row(row: dict[str, float | None]) -> dict[int, float]:
    return {int(v): math.nan if d is None else d for v, d in row.items()}


def pair_sessions(pairs: list[Pair], hierarchy: Hierarchy, root: Path, main: bool) -> list[Session]:
    """The synthesised fully labelled sessions, one per pair (and warp), in a dHCP-layout folder under ``root``
    (written where ``main`` and not yet there)."""
    folder = root / f"pairs-{digest([ATLAS_VERSION, sorted(p.path.name for p in pairs), PAIRS_VERSION])}"
    sessions = []
    for pair in pairs:
        a, t = pair.atlas, pair.target
        warp = "" if pair.warp == "regular" else pair.warp  # one session per registration of the pair
        subject, ses = f"{a.subject}to{t.subject}", f"{a.session}to{t.session}{warp}"
        anat = folder / f"sub-{subject}" / f"ses-{ses}" / "anat"
        stem = f"sub-{subject}_ses-{ses}"
        session = Session(subject, ses, anat / f"{stem}{T2_SUFFIX}", anat / f"{stem}{LABEL_SUFFIX}", t.scan_age)
        if main and not session.labels.is_file():
            _write_pair(pair, hierarchy, session)
        sessions.append(session)
    return sessions


def _write_pair(pair: Pair, hierarchy: Hierarchy, session: Session) -> None:
    """Each file once (the labels last: a pair is complete when they are there)."""
    import nibabel as nib

    image, coded, img = target_annotation(pair.target, pair.coarsen, hierarchy)
    leaves, warped, soft = _load_warped([pair])
    outside = hierarchy.outside_channel
    labels = hard_labels(soft[0], leaves, hierarchy.label_dtype,
                         0 if outside is None else hierarchy.channels[outside].value)
    codes = coded.codes.astype(np.int64)
    regions = np.where(codes < coded.first_extra, hierarchy.coarsen(np.minimum(codes, coded.first_extra - 1)), codes)
    matched = nib.Nifti1Image(match_intensities(warped[0], hierarchy.coarsen(labels), image, regions), img.affine)
    matched.set_data_dtype(np.int16)  # scaled by nibabel (slope, intercept): half the disk of float32
    write_once(session.t2, lambda tmp: write_nifti(matched, tmp))
    write_once(session.labels, lambda tmp: write_nifti(nib.Nifti1Image(labels, img.affine), tmp))


def _load_warped(group: list[Pair]) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """(leaf values, warped images, soft maps (L, ...) in [0, 1]) of the pairs' cached registrations."""
    images, soft, leaves = [], [], None
    for pair in group:
        with np.load(pair.path) as cached:  # registrations cached before the float16 image: float32, no scale
            scale = float(cached["scale"]) if "scale" in cached.files else 1.0
            images.append(cached["image"].astype(np.float32) * np.float32(scale))
            soft.append(cached["soft"].astype(np.float32) / 255)
            leaves = cached["leaves"].tolist()
    return leaves, images, soft


def _stored_seconds(path: Path) -> float:
    with np.load(path) as cached:
        return float(cached["seconds"])


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
