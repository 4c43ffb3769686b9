"""Losses for multi-label targets with unknown children (docs/method.md section 3).

Targets are uint8 {0, 1, 2}: 1 present, 0 absent, 2 unknown (UNKNOWN). With
B(t, x) = t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)) computed from logits x:

- ``bce``:    -B(y, x) everywhere; the supervised baseline, refuses unknown entries.
- ``iuc``:    -B(y, x) on observed entries only; unknown entries contribute nothing.
- ``huc``:    as iuc, plus a hard pseudo-target on unknown children: inside a parent that is
              (observed or pseudo-) present, 1 for the most probable sibling and 0 for the others;
              children of an absent parent get 0.
- ``weight``: as iuc, plus unknown entries with the model's own p as target (NOT detached, as in
              the authors' prototype: detaching would zero the term's gradient).
- ``wnorm``:  as weight, with the target p_c / sum(p over the sibling group), also not detached.

Reduction ``mean`` (the paper's 1/|N| and the prototype's mean over every entry, unknown ones
included in the denominator, then over the batch) is the faithful default. ``observed`` divides
by the number of entries that carry a term instead (observed, plus pseudo-targeted ones for huc,
weight and wnorm), so the loss scale does not drift with the unknown fraction.

``labelset`` needs the softmax head (logits over the hierarchy's leaves, see :mod:`.heads`). A voxel
annotated with node n is labelled with the *set* S of leaves under n (one leaf where n is a leaf),
read off the targets as the leaves whose entry is not 0. Following the label-set losses of Fidon
et al. (MICCAI 2021) and the marginal loss of Shi et al. (MedIA 2021):

- marginal cross-entropy: -log sum_{l in S} p_l, p = softmax over the leaves; a coarse voxel
  (S = {cgm, wm, dgm}) only asks the leaves inside S to win together against every other leaf;
- leaf Dice: per leaf l over the batch, 2 sum(g p) / (sum g^2 + sum p^2) with g = 1 where S = {l}
  and p_l left out (set to 0) where S holds l and more leaves, so it cannot tell how the set's
  probability is shared out;
- ``labelset`` = cross-entropy + ``dice_weight`` x (1 - mean leaf Dice). Both terms depend on a
  coarse voxel only through the set's total probability: children learn there only to stay
  inside the set, and from each other only where fully labelled voxels tell them apart.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from neoseg.core.hierarchy import UNKNOWN, Hierarchy
from neoseg.train.config import LOSSES, REDUCTIONS, SOFTMAX_LOSSES

DICE_SMOOTH = 1.0  # voxels added to leaf Dice's numerator and denominator

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def neg_log_likelihood(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """-B(t, x), elementwise and stable; differentiable in the target too (weight, wnorm)."""
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))


def _reduce(terms: torch.Tensor, counted: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return terms.sum() / terms.numel()
    return terms.sum() / counted.sum().clamp_min(1)


def _hard_children_targets(logits: torch.Tensor, target: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
    """HUC pseudo-targets: observed entries keep theirs; unknown children are resolved top-down."""
    effective = target.clone()
    for parent, kids in hierarchy.sibling_groups:
        unknown = effective[:, kids] == UNKNOWN
        if not unknown.any():
            continue
        winner = logits[:, kids].argmax(dim=1, keepdim=True)
        one_hot = torch.zeros_like(unknown, dtype=effective.dtype).scatter_(1, winner, 1)
        inside = (effective[:, parent:parent + 1] == 1).to(effective.dtype)
        effective[:, kids] = torch.where(unknown, one_hot * inside, effective[:, kids])
    return effective


def _soft_children_targets(probs: torch.Tensor, hierarchy: Hierarchy, normalise: bool) -> torch.Tensor:
    """WEIGHT/WNORM targets for unknown entries: p itself, or p over its sibling group's sum."""
    if not normalise:
        return probs
    soft = probs
    for _, kids in hierarchy.sibling_groups:
        group = probs[:, kids]
        soft = soft.index_copy(1, torch.tensor(kids, device=probs.device),
                               group / group.sum(dim=1, keepdim=True).clamp_min(1e-7))
    return soft


def leaf_sets(target: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
    """(N, L, ...) bool: the leaves each voxel's annotation allows (entry 1 or unknown)."""
    allowed = target[:, hierarchy.leaves] != 0
    if not allowed.any(dim=1).all():
        raise ValueError("targets hold voxels that allow no leaf of the hierarchy; they do not come from "
                         "hierarchy.encode")
    return allowed


def marginal_cross_entropy(leaf_logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-log(summed softmax probability of the allowed leaves), per voxel (N, ...)."""
    inside = leaf_logits.masked_fill(~allowed, float("-inf")).logsumexp(dim=1)
    return leaf_logits.logsumexp(dim=1) - inside


def leaf_dice(leaf_logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean over leaves of the batch's soft Dice (Fidon et al.'s leaf Dice), see the module doc."""
    p = torch.softmax(leaf_logits, dim=1)
    single = allowed.sum(dim=1, keepdim=True) == 1
    g = (allowed & single).to(p.dtype)
    p = torch.where(allowed & ~single, torch.zeros_like(p), p)
    dims = [0] + list(range(2, p.ndim))
    dice = (2 * (g * p).sum(dims) + DICE_SMOOTH) / ((g * g).sum(dims) + (p * p).sum(dims) + DICE_SMOOTH)
    return dice.mean()


def make_loss(name: str, hierarchy: Hierarchy, reduction: str = "mean", dice_weight: float = 1.0) -> LossFn:
    """Return ``loss(logits, target)`` for the network's output (N, C, ...) float, or (N, L, ...)
    leaf logits for the softmax-head losses, and target (N, C, ...) uint8."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; available: {', '.join(LOSSES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction '{reduction}'; available: {', '.join(REDUCTIONS)}")
    if name in SOFTMAX_LOSSES:
        return _labelset_loss(hierarchy, dice_weight)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in shape")
        unknown = target == UNKNOWN
        observed = ~unknown
        if name == "bce" and unknown.any():
            raise ValueError("bce needs fully labelled targets but these hold unknown (2) entries; "
                             "use a partial-label loss (iuc, huc, weight, wnorm) or fully labelled data")
        y = torch.where(observed, target, torch.zeros_like(target)).to(logits.dtype)
        terms = observed * neg_log_likelihood(y, logits)
        counted = observed
        if name == "huc":
            pseudo = _hard_children_targets(logits.detach(), target, hierarchy)
            resolved = unknown & (pseudo != UNKNOWN)
            terms = terms + resolved * neg_log_likelihood(pseudo.clamp_max(1).to(logits.dtype), logits)
            counted = observed | resolved
        elif name in ("weight", "wnorm"):
            soft = _soft_children_targets(torch.sigmoid(logits), hierarchy, normalise=name == "wnorm")
            terms = terms + unknown * neg_log_likelihood(soft, logits)
            counted = observed | unknown
        return _reduce(terms, counted, reduction)

    return loss


def _labelset_loss(hierarchy: Hierarchy, dice_weight: float) -> LossFn:
    if not dice_weight >= 0:
        raise ValueError(f"dice_weight {dice_weight} must be >= 0")
    n_leaves = len(hierarchy.leaves)

    def loss(leaf_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if leaf_logits.shape[1] != n_leaves or leaf_logits.shape[2:] != target.shape[2:] \
                or target.shape[1] != len(hierarchy):
            raise ValueError(f"labelset expects {n_leaves} leaf logits and {len(hierarchy)} target channels, "
                             f"got logits {tuple(leaf_logits.shape)} and targets {tuple(target.shape)}")
        allowed = leaf_sets(target, hierarchy)
        value = marginal_cross_entropy(leaf_logits, allowed).mean()
        if dice_weight:
            value = value + dice_weight * (1 - leaf_dice(leaf_logits, allowed))
        return value

    return loss
