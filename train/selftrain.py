"""Self-training on top of any partial-label loss: an EMA teacher fills in unknown children.

The teacher is an exponential moving average of the student's weights (updated after every
optimizer step; BatchNorm statistics copied). Self-training begins, by default, once the plain loss
has plateaued (when early stopping would end the run): the student goes on from the best epoch's
weights, the teacher starts as a copy of them, and patience is counted afresh; so a child that the
plain loss has learnt by then is in the teacher. (``self_train_after`` N starts it after epoch N
instead: early, the teacher knows the large children only, and its confident pseudo labels teach
the student that a small child, DGM, is white matter.) From then on, each training batch's targets
are completed before the loss sees them: where a voxel's children are unknown
(it is annotated with their parent only), the teacher's most probable child becomes 1 and its
siblings 0 if the teacher gives it at least ``confidence`` of the parent's probability (its share
among the siblings); deeper levels follow top-down. Only unknown entries change, and they exist
only inside a parent the annotation marks present, so a pseudo label never places a child outside
its known parent; observed entries are never touched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from neoseg.core.hierarchy import UNKNOWN, Hierarchy


class EmaTeacher:
    """An exponential moving average of a network's weights, updated after every optimizer step.
    ``ramp``: the decay grows as (1 + n) / (10 + n) up to ``decay`` over the first updates ``n``, so
    that the average does not lean on the first weights (for ``--weight-ema``; the self-training
    teacher starts from trained weights and needs none)."""

    def __init__(self, student: nn.Module, decay: float, ramp: bool = False):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay {decay} must lie in (0, 1)")
        self.decay, self.ramp, self.updates = decay, ramp, 0
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.ramp else self.decay
        self.updates += 1
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        for t, s in zip(self.model.buffers(), student.buffers()):  # batch-norm statistics: the student's, as
            t.copy_(s)  # measured for --weight-ema (docs/training.md); not averaged

    @torch.no_grad()
    def channel_probabilities(self, image: torch.Tensor, to_channels) -> torch.Tensor:
        return torch.sigmoid(to_channels(self.model(image)).float())


@torch.no_grad()
def complete_targets(probs: torch.Tensor, target: torch.Tensor, hierarchy: Hierarchy,
                     confidence: float) -> torch.Tensor:
    """``target`` (N, C, ...) uint8 with unknown children resolved where the channel probabilities
    ``probs`` (N, C, ...) are confident enough (see the module doc); a new tensor."""
    out = target.clone()
    for parent, kids in hierarchy.sibling_groups:  # top-down: a resolved child's own children follow
        undecided = (out[:, kids] == UNKNOWN).all(dim=1) & (out[:, parent] == 1)
        if not undecided.any():
            continue
        group = probs[:, kids]
        share, winner = (group / group.sum(dim=1, keepdim=True).clamp_min(1e-12)).max(dim=1)
        sure = (undecided & (share >= confidence)).unsqueeze(1)
        one_hot = torch.zeros_like(out[:, kids]).scatter_(1, winner.unsqueeze(1), 1)
        out[:, kids] = torch.where(sure, one_hot, out[:, kids])
    return out
