"""Per-structure evaluation of a model on whole volumes, segmented exactly as ``neoseg-infer`` does.

A model runs as a runtime backend under the runtime's :class:`~neoseg.runtime.pipeline.Segmenter`:
a checkpoint's torch model through :meth:`.torch_backend.TorchBackend.plain` (FP32), an exported
``.onnx`` through :func:`neoseg.runtime.backends.open_backend`. A session's T2 is read and checked
by the runtime and segmented by :func:`neoseg.runtime.files.segment_checked` on its own grid, at
the model's spacing, so the scores describe the files ``neoseg-infer`` writes. Each structure is
scored twice, each row naming its ``output``:

- ``dseg``: the label map (``_dseg.nii.gz``, the hierarchical argmax users read), a parent as the
  union of its children;
- ``mask``: the per-channel masks at the thresholds (``_mask.nii.gz``; the paper's metric).

The truth is the session's annotation: a full label map scores every structure; a partial one (a
parent's own value, masks) only the structures it knows at every voxel (:mod:`neoseg.core.partial`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neoseg.core import metrics
from neoseg.core.hierarchy import UNKNOWN, Hierarchy
from neoseg.core.io import atomic_path
from neoseg.core.labels import MAX_LABEL_VALUE, as_label_map, present_values
from neoseg.core.partial import code_session
from neoseg.core.scans import Scan, labels_on_scan_grid, read_labels, read_scan
from neoseg.core.thresholds import check_thresholds
from neoseg.data.dhcp import Session
from neoseg.runtime.files import segment_checked
from neoseg.runtime.model import ModelInfo
from neoseg.runtime.pipeline import Segmentation, Segmenter

from .config import TrainConfig
from .torch_backend import TorchBackend

OUTPUTS = {"dseg": "the label map (`_dseg`, what neoseg-infer writes)",
           "mask": "the per-structure masks at the thresholds (`_mask`, the paper's metric)"}


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


def checkpoint_segmenter(checkpoints: list[Path], device: str = "auto", thresholds: str | None = None,
                         own_split: bool = False) -> tuple[Segmenter, TrainConfig]:
    """The runtime's segmenter over ``best.pt`` checkpoints (one, or several as an ensemble) on
    ``device`` (auto, cpu, cuda, cuda:N), at ``thresholds`` (text: one or one per channel; None: the
    checkpoint's own), and the training config it records (an ensemble's first member's; with
    ``own_split`` the members must have held out the same scans)."""
    from neoseg.runtime.model import parse_thresholds

    from .ensemble import check_one_split, load_models
    from .ranks import resolve_device

    if own_split:
        check_one_split(checkpoints)
    loaded = load_models(checkpoints, own_thresholds=bool(thresholds))
    config = loaded.config
    chosen = parse_thresholds(thresholds, len(loaded.hierarchy)) if thresholds \
        else loaded.state.get("thresholds", config.thresholds)
    return model_segmenter(loaded.model, loaded.hierarchy, config.axis, config.slice_size, resolve_device(device),
                           chosen, loaded.spacing), config


def run_atlas_fusion(config: TrainConfig, hierarchy: Hierarchy, per_scan: int = 3, weight: str = "0.5",
                     warps=("regular",), exclude: set[str] = frozenset()):
    """Atlas fusion (:class:`neoseg.runtime.atlas.AtlasFusion`) with the fully labelled training
    sessions of the run ``config`` describes as atlases (``neoseg-eval --atlas run``), less the
    session keys of ``exclude`` (the sessions evaluated: no scan is its own atlas)."""
    from neoseg.runtime.atlas import AtlasFusion

    from .recipes import dataset_split

    split = dataset_split(config, hierarchy=hierarchy)
    atlases = [s for s in split.train if split.is_full(s) and s.key not in exclude]
    return AtlasFusion.from_sessions(atlases, hierarchy, per_scan, weight, warps,
                                     where="the run's fully labelled training sessions (less those evaluated)")


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


@dataclass(frozen=True)
class Truth:
    """What an annotation says: ``codes`` (a label map, or mask codes) whose target rows are
    ``table`` (codes x channels, {0, 1, 2})."""

    codes: np.ndarray
    table: np.ndarray

    @classmethod
    def of_labels(cls, hierarchy: Hierarchy, labels: np.ndarray) -> "Truth":
        return cls(np.asarray(labels), hierarchy.target_table())

    @property
    def known(self) -> np.ndarray:
        """(C,) bool: the channels known at every voxel (every channel of a full label map)."""
        rows = self.table[present_values(as_label_map(self.codes))]
        return (rows != UNKNOWN).all(axis=0) & (rows != 255).all(axis=0)

    def mask(self, channel: int) -> np.ndarray:
        return (self.table[:, channel] == 1)[self.codes]


def score(seg: Segmentation, hierarchy: Hierarchy, truth: Truth, spacing) -> list[dict]:
    """Rows of Dice, HD95/HD100 (mm) and volume difference per known structure, for the label map
    (``output`` dseg) and for the masks (``output`` mask) of ``seg``."""
    known = np.flatnonzero(truth.known)
    names = [hierarchy.names[c] for c in known]
    true = np.stack([truth.mask(c) for c in known]).astype(np.uint8)
    dseg = hierarchy.encode(seg.labels)[known] == 1
    masks = np.moveaxis(seg.masks, -1, 0)[known]
    rows = []
    for output, pred in (("dseg", dseg), ("mask", masks)):
        rows += [{"output": output, **row} for row in metrics.evaluate_volume(pred, true, names, spacing)]
    return rows


def session_truth(session: Session, hierarchy: Hierarchy, scan: Scan) -> Truth:
    """A session's annotation on its T2's stored grid (reoriented where stored otherwise), checked
    to lie on that grid."""
    if session.labels is not None:
        data = as_label_map(labels_on_scan_grid(read_labels(session.labels, max_value=MAX_LABEL_VALUE), scan),
                            session.labels)
        unnamed = hierarchy.unnamed(present_values(data))
        if unnamed:
            raise ValueError(f"{session.labels}: label values {unnamed} are not named by hierarchy "
                             f"'{hierarchy.name}' (known: {hierarchy.label_values}); pass the matching hierarchy")
        return Truth.of_labels(hierarchy, data)
    masks = [(name, labels_on_scan_grid(read_labels(path, max_value=MAX_LABEL_VALUE), scan))
             for name, path in session.masks]
    coded = code_session(hierarchy, None, masks, [str(p) for _, p in session.masks])
    return Truth(coded.codes, coded.table(hierarchy))


def evaluate_sessions(segmenter: Segmenter, sessions: list[Session], progress: bool = False) -> list[dict]:
    """One row per session, output and known structure: each T2 read and segmented as
    ``neoseg-infer`` does, scored against its annotation (see the module's docstring)."""
    from tqdm import tqdm

    hierarchy = segmenter.info.hierarchy
    rows = []
    for session in tqdm(sessions, desc="evaluate", disable=None if progress else True, leave=False):
        checked = read_scan(session.t2)
        truth = session_truth(session, hierarchy, checked)
        seg = segment_checked(checked, segmenter)
        for row in score(seg, hierarchy, truth, checked.zooms):
            rows.append({"subject": session.subject, "session": session.session, "scan_age": session.scan_age,
                         "age_group": session.age_group, **row})
    return rows


def write_rows(path: str | Path, rows: list[dict], overwrite: bool = True) -> None:
    with atomic_path(path, overwrite) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict], structures: list[str] | None = None, hierarchy: Hierarchy | None = None) -> str:
    """Markdown: per output (the label map first), mean ± std per age group of Dice and HD95 for
    each structure; first, which sessions are partially labelled and (given the ``hierarchy``)
    which of its structures no session scores."""
    parts = []
    scored: dict[tuple, set] = {}
    for r in rows:
        scored.setdefault((r["subject"], r["session"]), set()).add(r["structure"])
    most = len(hierarchy) if hierarchy is not None else max((len(v) for v in scored.values()), default=0)
    partial = sum(len(v) < most for v in scored.values())
    if partial:
        parts.append(f"{partial} of {len(scored)} sessions are partially labelled: each is scored only on the "
                     f"structures its annotation knows at every voxel (the n columns count the sessions of each cell).")
    unscored = [] if hierarchy is None else [n for n in hierarchy.names if not any(n in v for v in scored.values())]
    if unscored and scored:
        parts.append(f"**Not scored: {', '.join(unscored)}**: no session here labels them (none is fully labelled "
                     f"where they are); score them on fully labelled sessions, e.g. `neoseg-eval MODEL --data FOLDER`.")
    for output, what in OUTPUTS.items():
        chosen = [r for r in rows if r.get("output", "mask") == output
                  and (structures is None or r["structure"] in structures)]
        if chosen:
            table = metrics.format_table(metrics.summarize(chosen), metrics=("dice", "hd95"))
            parts.append(f"Dice and HD95 (mm) of {what}:\n\n{table}")
    return "\n\n".join(parts)
