"""Several trained models as one: the mean of their probabilities, per channel and voxel.

An ensemble of models trained on the same data (other seeds, other recipes, other draws of the fully
labelled subjects) averages out what each model got wrong by chance; nnU-Net ensembles its five
cross-validation folds the same way. :class:`Ensemble` is an ordinary module with one logit per
channel, ``logit(mean_i sigmoid(x_i))``, so everything that takes a model (``neoseg-eval``,
``neoseg-export``, the runtime) takes an ensemble unchanged: the decoding (thresholds, the
hierarchical argmax) sees probabilities averaged before it, never votes after it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from neoseg.core.thresholds import check_thresholds

from . import checkpoint
from .checkpoint import Loaded


class Ensemble(nn.Module):
    """``members``' channel logits (N, C, H, W) -> the logits of their mean probability."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.divisor = math.lcm(*(int(getattr(m, "divisor", 32)) for m in members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logit(p) = log p - log(1 - p), both in log space: a saturated member (p = 1 in float32) keeps
        # a finite logit, and ONNX Runtime and PyTorch agree to float precision
        logits = torch.stack([m(x) for m in self.members])
        return _log_mean_exp(-_softplus(-logits)) - _log_mean_exp(-_softplus(logits))


def _softplus(z: torch.Tensor) -> torch.Tensor:
    """log(1 + e^z) without overflow, in elementary ONNX operators: -softplus(-z) = log sigmoid(z)."""
    return torch.relu(z) + torch.log1p(torch.exp(-z.abs()))


def _log_mean_exp(v: torch.Tensor) -> torch.Tensor:
    """log(mean over the members (dim 0) of e^v), shifted by the largest so nothing underflows."""
    top = v.max(dim=0).values
    return top + torch.log(torch.exp(v - top).mean(dim=0))


def load_models(paths: list[Path], map_location: str = "cpu", own_thresholds: bool = False) -> Loaded:
    """One checkpoint as :func:`.checkpoint.load` reads it, or several as one :class:`Ensemble`.
    The members must segment alike: the same hierarchy, architecture, slice axis and size, voxel
    size and (unless the caller sets its ``own_thresholds``) thresholds; the first member's config
    stands for the ensemble's (its data and split: see :func:`check_one_split`)."""
    if len(paths) == 1:
        return checkpoint.load(paths[0], map_location)
    if len(set(Path(p).resolve() for p in paths)) < len(paths):
        raise ValueError("a checkpoint is named twice; give each member of the ensemble once")
    members = [checkpoint.load(p, map_location) for p in paths]
    first = members[0]
    _same(paths, members, "label hierarchy", lambda m: m.hierarchy.to_json(),
          "train the members on one hierarchy (--labels)")
    _same(paths, members, "architecture", lambda m: m.config.model, "ensemble models of one architecture")
    _same(paths, members, "slice axis and size", lambda m: (m.config.axis, m.config.slice_size),
          "train the members with the same --axis and --slice-size")
    _same(paths, members, "voxel size", lambda m: tuple(round(s, 6) for s in m.spacing),
          "train the members at the same voxel size")
    if not own_thresholds:
        _same(paths, members, "thresholds", _thresholds, "pass --thresholds")
    digests = [m.config.digest() for m in members]
    heads = {m.config.head for m in members}
    state = {"thresholds": _thresholds(first), "members": digests,
             "config_digest": hashlib.sha256(json.dumps(digests).encode()).hexdigest()[:16],
             "architecture": f"{first.config.model} ensemble of {len(members)}",
             "head": heads.pop() if len(heads) == 1 else "sigmoid"}
    model = Ensemble([m.model for m in members]).eval()
    return Loaded(model, first.config, first.hierarchy, first.spacing, state, model)


def _thresholds(m: Loaded) -> tuple[float, ...]:
    return check_thresholds(m.state.get("thresholds", m.config.thresholds), m.hierarchy.names)


def _same(paths: list[Path], members: list[Loaded], what: str, key, fix: str) -> None:
    values = [key(m) for m in members]
    for path, value in zip(paths[1:], values[1:]):
        if value != values[0]:
            raise ValueError(f"the ensemble's members differ in {what}: {paths[0]} and {path}; {fix}")


def check_one_split(paths: list[Path]) -> None:
    """Raise unless the runs of ``paths`` (their ``split.json``, beside each checkpoint) held out
    the same validation and test subjects: only then are the first run's held-out scans unseen by
    every member. Checked where those scans are used (no ``--data`` given)."""
    from .rundir import read_split

    if len(paths) < 2:
        return
    splits = [read_split(path) for path in paths]
    if all(s is None for s in splits):
        return
    held_out = [None if s is None else (sorted(s[0]["val"]), sorted(s[0]["test"])) for s in splits]
    for path, value in zip(paths[1:], held_out[1:]):
        if value != held_out[0]:
            raise ValueError(f"the ensemble's members held out different scans ({paths[0]} and {path}: their "
                             f"split.json differ or one is missing), so no scan is held out from all of them; "
                             f"train the members with one --split-seed, or pass --data FOLDER of scans none "
                             f"of them trained on")
