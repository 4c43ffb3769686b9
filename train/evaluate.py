"""Per-structure evaluation of a torch model on whole volumes, segmented as ``neoseg-infer`` does.

The model runs as a runtime backend (:meth:`.torch_backend.TorchBackend.plain`: as it is, FP32)
under the runtime's :class:`~neoseg.runtime.pipeline.Segmenter`: the same head windows, slice
skipping, thresholds on the logits and hierarchy decoding as ``neoseg-infer``, so a score describes
what the product writes for the checkpoint. Scores compare the per-channel masks (channels at their
thresholds) with the fully labelled truth; the :class:`~neoseg.runtime.pipeline.Segmentation`
scored also holds the label map (``.labels``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neoseg.core import metrics
from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import atomic_path
from neoseg.core.labels import present_values
from neoseg.core.thresholds import check_thresholds
from neoseg.data.dhcp import Session
from neoseg.runtime.model import ModelInfo
from neoseg.runtime.pipeline import Segmentation, Segmenter

from .torch_backend import TorchBackend
from .volumes import load_session


def model_segmenter(model: nn.Module, hierarchy: Hierarchy, axis: int, size: int, device: str | torch.device = "cpu",
                    thresholds=0.5, model_spacing=None, batch: int = 32) -> Segmenter:
    """The runtime's segmenter over ``model`` (one logit per channel of ``hierarchy``), slicing
    along ``axis`` at ``size``^2, thresholds on the sigmoid (one, or one per channel).
    ``model_spacing``: the voxel size (mm) the model was trained at, to which scans of another
    are resampled as by ``neoseg-infer``; None: every scan is taken as it is."""
    info = ModelInfo(hierarchy=hierarchy, thresholds=check_thresholds(thresholds, hierarchy.names), axis=axis,
                     slice_size=size, divisor=math.gcd(size, int(getattr(model, "divisor", 32))),
                     spacing=tuple(float(s) for s in model_spacing or (1.0, 1.0, 1.0)),
                     architecture=type(model).__name__, version="", config_digest="")
    return Segmenter(TorchBackend.plain(model, info, device, batch))


def segment_canonical(segmenter: Segmenter, image: np.ndarray, spacing=None, probabilities: bool = False) -> Segmentation:
    """A canonical (RAS+) volume of voxel size ``spacing`` (mm; None: the model's, so that nothing
    is resampled) through ``segmenter``."""
    zooms = segmenter.info.spacing if spacing is None else tuple(float(s) for s in spacing)
    return segmenter.segment(image, np.diag([*zooms, 1.0]), zooms, probabilities)


def predict_volume(model: nn.Module, image: np.ndarray, hierarchy: Hierarchy, axis: int, size: int,
                   batch: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """Canonical (X, Y, Z) image -> (C, X, Y, Z) float32 sigmoid probabilities on the same grid."""
    seg = segment_canonical(model_segmenter(model, hierarchy, axis, size, device, batch=batch), image, None, True)
    return np.moveaxis(seg.probs, -1, 0)


def score(seg: Segmentation, hierarchy: Hierarchy, labels: np.ndarray, spacing) -> list[dict]:
    """One row per structure: Dice, HD95/HD100 (mm), volume difference of ``seg``'s masks against
    the fully labelled map ``labels`` (parents filled in)."""
    truth = (hierarchy.encode(labels) == 1).astype(np.uint8)
    return metrics.evaluate_volume(np.moveaxis(seg.masks, -1, 0), truth, hierarchy.names, spacing)


def evaluate_scan(model: nn.Module, hierarchy: Hierarchy, image: np.ndarray, labels: np.ndarray,
                  spacing: tuple[float, ...], axis: int, size: int, device: str | torch.device = "cpu",
                  thresholds=0.5, model_spacing=None) -> list[dict]:
    """:func:`score` of a canonical ``image`` segmented by :func:`model_segmenter`."""
    segmenter = model_segmenter(model, hierarchy, axis, size, device, thresholds, model_spacing)
    seg = segment_canonical(segmenter, image, None if model_spacing is None else spacing)
    return score(seg, hierarchy, labels, spacing)


def evaluate_sessions(model: nn.Module, hierarchy: Hierarchy, sessions: list[Session], axis: int, size: int,
                      device: str | torch.device = "cpu", thresholds=0.5, progress: bool = False,
                      model_spacing=None) -> list[dict]:
    """One row per session and structure (see :func:`evaluate_scan`)."""
    from tqdm import tqdm

    segmenter = model_segmenter(model, hierarchy, axis, size, device, thresholds, model_spacing)
    rows = []
    for session in tqdm(sessions, desc="evaluate", disable=None if progress else True, leave=False):
        image, labels, img = load_session(session)
        unnamed = hierarchy.unnamed(present_values(labels))
        if unnamed:
            raise ValueError(f"{session.labels}: label values {unnamed} are not named by hierarchy "
                             f"'{hierarchy.name}' (known: {hierarchy.label_values}); pass the matching hierarchy")
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        seg = segment_canonical(segmenter, image, None if model_spacing is None else spacing)
        for row in score(seg, hierarchy, labels, spacing):
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
