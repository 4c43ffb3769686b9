"""Evaluation metrics of docs/method.md section 8: Dice, Hausdorff (HD100, HD95) in mm, volume difference.

Numpy/scipy only (the runtime may import this). All functions take binary masks (bool, or any
integer/float array where non-zero means "inside") of one shape and a voxel ``spacing`` in mm, one
value per axis.

Definitions (pinned by ``tests/test_metrics.py``):

* **Dice** ``2|P∩T| / (|P| + |T|)`` counted in voxels. NaN when both masks are empty, 0.0 when
  exactly one is empty.
* **Surface** of a mask: its voxels with at least one face neighbour (6-connectivity in 3D, the
  scipy default structure) outside the mask, i.e. ``mask & ~binary_erosion(mask)``; the space
  outside the array counts as outside the mask. A structure one voxel thick is all surface.
* **Surface distances**: for every surface voxel of P the Euclidean distance in mm (voxel centre to
  voxel centre, ``distance_transform_edt(..., sampling=spacing)``) to the nearest surface voxel of
  T, and likewise from T to P. Both directed sets are **pooled** into one array.
* **HD100** = max of the pooled distances (= the classic symmetric Hausdorff distance).
  **HD95** = ``np.percentile(pooled, 95)`` with numpy's default linear interpolation. This is the
  ``hd95`` of medpy (used by nnU-Net v1's evaluation). Note that MONAI's
  ``compute_hausdorff_distance(percentile=95)`` and DeepMind's ``compute_robust_hausdorff`` take
  instead the *max of the two directed* 95th percentiles, which is >= the pooled value; numbers
  from those tools are not directly comparable. Pooling makes the metric symmetric by design.
* **Empty masks.** Both empty: NaN (undefined). Exactly one empty (truth present and missed by the
  prediction, or a prediction where truth has nothing): the **penalty** ``penalty_mm``, which
  defaults to the diagonal of the whole volume's extent, ``sqrt(sum((shape_i * spacing_i)**2))``
  (see :func:`miss_penalty_mm`), i.e. larger than any distance two voxels of the volume can have,
  so a miss always scores worse than any hit. ``HD_MISS_PENALTY_MM`` is that value for the
  project's standard 256³ grid at 0.5 mm isotropic (128·√3 ≈ 221.7 mm).
* **Volume difference** ``(|P| - |T|) · prod(spacing) / 1000`` in ml (1 mm³ = 1 µl), and relative
  ``(|P| - |T|) / |T|`` (NaN when truth is empty).

Per volume (:func:`evaluate_volume`), following docs/method.md: a channel whose truth is empty gets
NaN Dice/HD (``truth_empty=True``; its predicted volume is still reported, so false positives stay
visible in ``vol_pred_ml``/``vol_diff_ml``); a channel present in truth but empty in the
prediction is ``missed``: Dice 0 and HD = the penalty, kept in every mean.

:func:`summarize` groups rows (by default by age group and structure) and reports mean and sample
standard deviation (ddof=1; 0.0 when a group has a single volume, NaN when it has none) over the
rows whose truth is present; truth-empty rows are counted in ``n_empty`` and left out of the
statistics, missed rows are counted in ``n_missed`` and kept in them.

Cost: the Hausdorff distance crops both masks to their joint bounding box (plus a one-voxel zero
margin) before eroding and running the two distance transforms, so it scales with the size of the
structure, not of the 256³ grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

# Diagonal of the 256³ grid at 0.5 mm isotropic: sqrt(3 * (256 * 0.5)**2) = 128 * sqrt(3) mm.
HD_MISS_PENALTY_MM: float = 128.0 * math.sqrt(3.0)

PRETERM_BELOW_WEEKS = 37.0  # PMA at scan: < 37 weeks preterm (28-36), >= 37 term (37-44)

_COUNT_KEYS = ("n", "n_empty", "n_missed")


# ----------------------------------------------------------------------------- validation
def _as_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(
            f"pred and truth must have the same shape, got pred {pred.shape} and truth "
            f"{truth.shape}. Resample the prediction onto the truth's voxel grid first."
        )
    return pred.astype(bool, copy=False), truth.astype(bool, copy=False)


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing must be {ndim} positive finite values in mm (one per mask axis), got "
            f"{spacing}. Take it from the image header, e.g. nibabel's header.get_zooms()[:{ndim}]."
        )
    return spacing


def miss_penalty_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Default HD penalty: the diagonal of the volume's extent, ``sqrt(sum((n_i * s_i)**2))`` mm."""
    spacing = _check_spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


# ----------------------------------------------------------------------------- metrics
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; NaN when both are empty, 0.0 when exactly one is empty."""
    pred, truth = _as_pair(pred, truth)
    n_pred, n_truth = np.count_nonzero(pred), np.count_nonzero(truth)
    if n_pred + n_truth == 0:
        return float("nan")
    return 2.0 * np.count_nonzero(pred & truth) / (n_pred + n_truth)


def _surface(mask: np.ndarray) -> np.ndarray:
    # Callers pass a crop with a zero margin, so the erosion's border handling never matters.
    return mask & ~ndimage.binary_erosion(mask)


def _pooled_surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Directed surface distances P->T and T->P in mm, concatenated; both masks non-empty."""
    union = pred | truth
    lo, hi = [], []
    for axis in range(union.ndim):
        hit = np.flatnonzero(np.any(union, axis=tuple(a for a in range(union.ndim) if a != axis)))
        lo.append(hit[0])
        hi.append(hit[-1] + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # Crop to the joint bounding box and pad one zero voxel on every side: the surfaces match those
    # of the full volume (outside the array counts as outside the mask), and every surface voxel of
    # both masks lies inside the crop, so the nearest-surface distances are exact.
    p = np.pad(pred[box], 1)
    t = np.pad(truth[box], 1)
    surf_p, surf_t = _surface(p), _surface(t)
    to_t = ndimage.distance_transform_edt(~surf_t, sampling=spacing)[surf_p]
    to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_t]
    return np.concatenate([to_t, to_p])


def _check_percentile(percentile: float) -> float:
    percentile = float(percentile)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile} (HD95 is 95, HD100 is 100).")
    return percentile


def hausdorff(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    percentile: float = 100.0,
    penalty_mm: float | None = None,
) -> float:
    """Symmetric Hausdorff distance in mm between the surfaces of two binary masks.

    ``percentile=100`` gives HD100 (the maximum), ``95`` gives HD95: that percentile of the pooled
    directed surface distances of both directions (medpy/nnU-Net v1 definition, see module doc).
    NaN when both masks are empty; ``penalty_mm`` (default: :func:`miss_penalty_mm` of the masks'
    shape and ``spacing``) when exactly one is empty.
    """
    pred, truth = _as_pair(pred, truth)
    spacing = _check_spacing(spacing, pred.ndim)
    percentile = _check_percentile(percentile)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return float("nan")
    if has_pred != has_truth:
        return float(miss_penalty_mm(pred.shape, spacing) if penalty_mm is None else penalty_mm)
    return float(np.percentile(_pooled_surface_distances(pred, truth, spacing), percentile))


def volume_difference(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float]:
    """``(pred - truth)`` volume in ml and relative ``(pred - truth) / truth`` (NaN if truth empty)."""
    pred, truth = _as_pair(pred, truth)
    spacing = _check_spacing(spacing, pred.ndim)
    n_pred, n_truth = np.count_nonzero(pred), np.count_nonzero(truth)
    diff_ml = (n_pred - n_truth) * math.prod(spacing) / 1000.0
    rel = (n_pred - n_truth) / n_truth if n_truth else float("nan")
    return float(diff_ml), float(rel)


def evaluate_volume(
    pred_masks: np.ndarray,
    true_masks: np.ndarray,
    names: Sequence[str],
    spacing: Sequence[float],
    penalty_mm: float | None = None,
) -> list[dict]:
    """One row per channel of ``(C, X, Y, Z)`` masks: Dice, HD95/HD100 (mm), volumes (ml), flags.

    Keys: structure, dice, hd95, hd100, vol_pred_ml, vol_true_ml, vol_diff_ml, vol_diff_rel,
    truth_empty, missed. Truth empty -> dice/hd NaN; truth present but prediction empty
    (``missed``) -> dice 0 and HD = ``penalty_mm`` (default: diagonal of the volume's extent).
    """
    pred_masks, true_masks = _as_pair(pred_masks, true_masks)
    if pred_masks.ndim < 2 or len(names) != pred_masks.shape[0]:
        raise ValueError(
            f"expected masks of shape (C, X, Y, Z) with C == len(names) == {len(names)}, got "
            f"{pred_masks.shape}. Stack one binary mask per channel along the first axis."
        )
    spacing = _check_spacing(spacing, pred_masks.ndim - 1)
    if penalty_mm is None:
        penalty_mm = miss_penalty_mm(pred_masks.shape[1:], spacing)
    voxel_ml = math.prod(spacing) / 1000.0
    nan = float("nan")
    rows = []
    for name, pred, truth in zip(names, pred_masks, true_masks):
        n_pred, n_truth = np.count_nonzero(pred), np.count_nonzero(truth)
        truth_empty, missed = n_truth == 0, n_truth > 0 and n_pred == 0
        if truth_empty:
            d = hd95 = hd100 = nan
        elif missed:
            d, hd95, hd100 = 0.0, float(penalty_mm), float(penalty_mm)
        else:
            d = dice(pred, truth)
            dist = _pooled_surface_distances(pred, truth, spacing)
            hd95, hd100 = float(np.percentile(dist, 95.0)), float(dist.max())
        rows.append({
            "structure": name,
            "dice": float(d),
            "hd95": hd95,
            "hd100": hd100,
            "vol_pred_ml": n_pred * voxel_ml,
            "vol_true_ml": n_truth * voxel_ml,
            "vol_diff_ml": (n_pred - n_truth) * voxel_ml,
            "vol_diff_rel": (n_pred - n_truth) / n_truth if n_truth else nan,
            "truth_empty": bool(truth_empty),
            "missed": bool(missed),
        })
    return rows


# ----------------------------------------------------------------------------- reporting
def age_group(scan_age_weeks: float | None) -> str:
    """``"preterm"`` below 37.0 weeks PMA, ``"term"`` from 37.0 on, ``"unknown"`` for None/NaN.

    Ages outside the cohort's 28-44 weeks are still classified by the 37-week edge.
    """
    if scan_age_weeks is None or not math.isfinite(float(scan_age_weeks)):
        return "unknown"
    return "preterm" if float(scan_age_weeks) < PRETERM_BELOW_WEEKS else "term"


def _is_truth_empty(row: dict) -> bool:
    if "truth_empty" in row:
        return bool(row["truth_empty"])
    if "dice" in row:
        return math.isnan(float(row["dice"]))
    raise ValueError(f"row has neither 'truth_empty' nor 'dice', cannot tell empty truth: {row}")


def summarize(
    rows: Iterable[dict],
    by: tuple[str, ...] = ("age_group", "structure"),
    metrics: tuple[str, ...] = ("dice", "hd95", "hd100", "vol_diff_ml"),
) -> list[dict]:
    """Mean and sample std (ddof=1) of each metric per group of rows, groups in first-seen order.

    Each output dict holds the ``by`` keys, ``n`` (rows with truth present, the ones the statistics
    use), ``n_empty`` (truth-empty rows, left out), ``n_missed`` (missed rows, kept in with Dice 0
    and the HD penalty) and ``<metric>_mean`` / ``<metric>_std``. std is 0.0 when n == 1; mean and
    std are NaN when n == 0. A NaN metric in a row whose truth is present raises ``ValueError``.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        missing = [k for k in (*by, *metrics) if k not in row]
        if missing:
            raise ValueError(
                f"row lacks key(s) {missing} needed to summarize by {by} over {metrics}; "
                f"add them to the rows (e.g. row['age_group'] = age_group(scan_age_weeks)). "
                f"Row keys: {sorted(row)}"
            )
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        present = [r for r in members if not _is_truth_empty(r)]
        summary = dict(zip(by, key))
        summary.update(
            n=len(present),
            n_empty=len(members) - len(present),
            n_missed=sum(bool(r.get("missed", False)) for r in present),
        )
        for m in metrics:
            values = np.array([float(r[m]) for r in present], dtype=float)
            if np.isnan(values).any():
                raise ValueError(
                    f"metric {m!r} is NaN in a row of group {dict(zip(by, key))} whose truth is "
                    f"present; only truth-empty rows may hold NaN (mark them truth_empty=True)."
                )
            n = values.size
            summary[f"{m}_mean"] = float(values.mean()) if n else float("nan")
            summary[f"{m}_std"] = (
                float(values.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan"))
            )
        out.append(summary)
    return out


def _cell(mean: float, std: float, metric: str) -> str:
    if math.isnan(mean):
        return "–"
    digits = 3 if metric == "dice" else 2
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(summary: Sequence[dict], metrics: tuple[str, ...] = ("dice", "hd95")) -> str:
    """A markdown table: one row per structure, columns ``"<group> <metric>"`` as ``mean ± std``.

    The group is every key of the summary besides ``structure``, the counts and the statistics
    (e.g. ``age_group``), joined by spaces. Dice gets 3 decimals, the mm/ml metrics 2; a
    ``"<group> n"`` column gives the volumes used and, in brackets, missed and truth-empty counts.
    """
    if not summary:
        raise ValueError("summary is empty: nothing to tabulate (did summarize() get any rows?)")
    stat_keys = {f"{m}_{s}" for row in summary for m in _metric_names(row) for s in ("mean", "std")}
    group_keys = [k for k in summary[0] if k != "structure" and k not in _COUNT_KEYS and k not in stat_keys]
    if "structure" not in summary[0]:
        raise ValueError("summary rows have no 'structure' key; summarize with by=(..., 'structure').")
    for m in metrics:
        if f"{m}_mean" not in summary[0]:
            raise ValueError(f"metric {m!r} is not in the summary; summarize(..., metrics=) must include it.")
    structures, groups, cells = [], [], {}
    for row in summary:
        group = " ".join(str(row[k]) for k in group_keys)
        if row["structure"] not in structures:
            structures.append(row["structure"])
        if group not in groups:
            groups.append(group)
        cells[row["structure"], group] = row
    header = ["structure"]
    for g in groups:
        header += [f"{g} {m}".strip() for m in metrics] + [f"{g} n".strip()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in structures:
        line = [str(s)]
        for g in groups:
            row = cells.get((s, g))
            if row is None:
                line += ["–"] * (len(metrics) + 1)
                continue
            line += [_cell(row[f"{m}_mean"], row[f"{m}_std"], m) for m in metrics]
            extra = [f"{row[k]} {k[2:]}" for k in ("n_missed", "n_empty") if row.get(k)]
            line.append(f"{row['n']}" + (f" ({', '.join(extra)})" if extra else ""))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _metric_names(row: dict) -> list[str]:
    return [k[: -len("_mean")] for k in row if k.endswith("_mean")]
