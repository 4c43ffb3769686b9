"""The paper's two baselines (section 5.1.1-5.1.2, docs/method.md section 7); their configs are in
:mod:`.recipes`.

* **Supervised**: BCE on the fully labelled training subjects only (:func:`~.recipes.supervised_config`).
* **Semi-supervised** (pseudo-labelling with the known parent): the supervised model predicts the
  partially labelled training scans; the prediction is corrected with the partial label map, which
  is exact everywhere except inside a parent (TCV), where it does not tell the children apart:
  outside the parent the known label is kept (no child outside TCV), inside it exactly one child is
  chosen, the most probable (:func:`correct_with_parent`). The supervised model is then fine-tuned
  with BCE on the fully labelled plus the pseudo-labelled scans (:func:`~.recipes.semi_supervised_config`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from neoseg.core.hierarchy import Hierarchy
from neoseg.data.dhcp import Session

from . import checkpoint
from .evaluate import predict_volume
from .recipes import pseudo_label_path
from .volumes import load_canonical, load_labels

log = logging.getLogger("neoseg.train")


def correct_with_parent(probs: np.ndarray, partial_labels: np.ndarray, hierarchy: Hierarchy) -> np.ndarray:
    """Pseudo label map from sigmoid outputs ``probs`` (C, ...) and a partial label map (...).

    A voxel whose partial label names a leaf keeps it; a voxel labelled with a parent gets the most
    probable of the parent's children, descending group by group to a leaf. So no child is ever
    placed outside its known parent, and inside it exactly one child is. Returns source label values.
    """
    partial_labels = np.asarray(partial_labels)
    if probs.shape[1:] != partial_labels.shape or probs.shape[0] != len(hierarchy):
        raise ValueError(f"probabilities {probs.shape} do not match {len(hierarchy)} channels over the label map "
                         f"{partial_labels.shape}")
    node_of_value = np.full(max(hierarchy.label_values) + 1, -1, np.int64)
    for i, channel in enumerate(hierarchy.channels):
        node_of_value[list(channel.values)] = i
    node = node_of_value[partial_labels]
    if (node < 0).any():
        bad = np.unique(partial_labels[node < 0]).tolist()
        raise ValueError(f"partial label map holds values {bad} that hierarchy '{hierarchy.name}' does not name")
    return hierarchy.descend(node, probs)


def write_pseudo_labels(supervised_checkpoint: str | Path, sessions: list[Session], out: str | Path,
                        device: str | torch.device = "cpu", progress: bool = False) -> Path:
    """Predict each session with the supervised model, correct the prediction with the session's
    partial labels (its label map coarsened to the parents) and write the result as a dHCP-layout
    ``*_desc-drawem9_dseg.nii.gz`` under ``out`` (canonical orientation, the T2's grid), the folder
    that ``TrainConfig.pseudo_labels`` names. Existing maps are replaced."""
    import nibabel as nib
    from tqdm import tqdm

    from neoseg.core.io import save_nifti

    loaded = checkpoint.load(supervised_checkpoint, map_location=str(device))
    model, hierarchy, config = loaded.model.to(device), loaded.hierarchy, loaded.config
    for session in tqdm(sessions, desc="pseudo labels", disable=None if progress else True, leave=False):
        image, img = load_canonical(session.t2, np.float32)
        labels, _ = load_labels(session.labels)
        partial = hierarchy.coarsen(labels)
        probs = predict_volume(model, image, hierarchy, config.axis, config.slice_size, device=device)
        pseudo = correct_with_parent(probs, partial, hierarchy).astype(hierarchy.label_dtype)
        save_nifti(nib.Nifti1Image(pseudo, img.affine), pseudo_label_path(out, session), overwrite=True)
    log.info("wrote %d pseudo label maps to %s", len(sessions), out)
    return Path(out)
