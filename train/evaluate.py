"""Whole-volume prediction with a torch model and per-structure evaluation of sessions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neoseg.core import metrics
from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import atomic_path
from neoseg.core.labels import present_values
from neoseg.core.preprocess import from_slices, head_center, minmax_scale, plane_windows, to_slices
from neoseg.core.thresholds import check_thresholds
from neoseg.data.dhcp import Session

from .volumes import load_session


@torch.no_grad()
def predict_volume(model: nn.Module, image: np.ndarray, hierarchy: Hierarchy, axis: int, size: int,
                   batch: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """Canonical (X, Y, Z) image -> (C, X, Y, Z) float32 sigmoid probabilities on the same grid."""
    model.eval()
    windows = plane_windows(image.shape, axis, size, head_center(image))
    slices = to_slices(minmax_scale(image), axis, windows)
    out = np.empty((len(slices), len(hierarchy), size, size), np.float32)
    for start in range(0, len(slices), batch):
        x = torch.from_numpy(slices[start:start + batch, None]).to(device)
        out[start:start + batch] = torch.sigmoid(model(x).float()).cpu().numpy()
    probs = from_slices(out, image.shape, axis, windows)
    inside = from_slices(np.ones((len(slices), size, size), np.uint8), image.shape, axis, windows)
    fill = hierarchy.outside_channel
    if fill is not None:
        probs[fill][inside == 0] = 1.0
    return probs


def evaluate_scan(model: nn.Module, hierarchy: Hierarchy, image: np.ndarray, labels: np.ndarray,
                    spacing: tuple[float, ...], axis: int, size: int, device: str | torch.device = "cpu",
                    thresholds=0.5) -> list[dict]:
    """One row per structure for a canonical ``image`` and its label map: Dice, HD95/HD100 (mm),
    volume difference; truth is the fully labelled map (parents filled in), prediction the
    sigmoid at ``thresholds`` (one, or one per channel, in [1e-6, 1 - 1e-6])."""
    thresholds = np.asarray(check_thresholds(thresholds, hierarchy.names), np.float32)
    probs = predict_volume(model, image, hierarchy, axis, size, device=device)
    pred = hierarchy.masks(probs, thresholds)
    truth = (hierarchy.encode(labels) == 1).astype(np.uint8)
    return metrics.evaluate_volume(pred, truth, hierarchy.names, spacing)


def evaluate_sessions(model: nn.Module, hierarchy: Hierarchy, sessions: list[Session], axis: int, size: int,
                      device: str | torch.device = "cpu", thresholds=0.5, progress: bool = False) -> list[dict]:
    """One row per session and structure (see :func:`evaluate_scan`)."""
    from tqdm import tqdm

    check_thresholds(thresholds, hierarchy.names)
    rows = []
    for session in tqdm(sessions, desc="evaluate", disable=None if progress else True, leave=False):
        image, labels, img = load_session(session)
        unnamed = hierarchy.unnamed(present_values(labels))
        if unnamed:
            raise ValueError(f"{session.labels}: label values {unnamed} are not named by hierarchy "
                             f"'{hierarchy.name}' (known: {hierarchy.label_values}); pass the matching hierarchy")
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        for row in evaluate_scan(model, hierarchy, image, labels, spacing, axis, size, device, thresholds):
            rows.append({"subject": session.subject, "session": session.session, "scan_age": session.scan_age,
                         "age_group": session.age_group, **row})
    return rows


def write_rows(path: str | Path, rows: list[dict], overwrite: bool = True) -> None:
    with atomic_path(path, overwrite) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict], structures: list[str] | None = None) -> str:
    """Markdown: mean ± std per age group of Dice and HD95 for each structure."""
    if structures is not None:
        rows = [r for r in rows if r["structure"] in structures]
    return metrics.format_table(metrics.summarize(rows), metrics=("dice", "hd95"))
