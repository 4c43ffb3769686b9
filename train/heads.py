"""Output heads: what the network's last layer means, and how it becomes one logit per channel.

* ``sigmoid`` (the paper): one independent logit per hierarchy channel, parents included.
* ``softmax``: one logit per *leaf* of the hierarchy; the leaves are mutually exclusive (a softmax
  over them), and every channel's probability is the summed probability of the leaves under it, so
  a parent is exactly the union of its children by construction.

Everything after the network (evaluation, pseudo labels, export, the runtime) works with one logit
per channel: :class:`ChannelLogits` turns leaf logits x into logit(P_c) = LSE(x over the leaves
under c) - LSE(x over the other leaves), so that sigmoid of it is P_c and thresholding it is the
same as thresholding P_c. It is part of the exported graph, so every runtime backend gets channel
logits without knowing about heads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neoseg.core.hierarchy import Hierarchy

from neoseg.runtime.model import HEADS
LOGIT_LIMIT = 30.0  # sigmoid(30) == 1 in float32; channel logits are clipped here instead of +-inf


def leaf_cover(hierarchy: Hierarchy) -> np.ndarray:
    """(C, L) 0/1 matrix: row c marks the leaves (in ``hierarchy.leaves`` order) under channel c
    (a leaf covers itself)."""
    leaves = hierarchy.leaves
    cover = np.zeros((len(hierarchy), len(leaves)), np.float32)
    for c in range(len(hierarchy)):
        under = {c, *hierarchy.descendants(c)}
        cover[c] = [leaf in under for leaf in leaves]
    return cover


def output_channels(head: str, hierarchy: Hierarchy) -> int:
    if head not in HEADS:
        raise ValueError(f"unknown head '{head}'; available: {', '.join(HEADS)}")
    return len(hierarchy.leaves) if head == "softmax" else len(hierarchy)


class ChannelLogits(nn.Module):
    """Leaf logits (N, L, H, W) -> channel logits (N, C, H, W) of the softmax head, computed stably:
    with e = exp(x - max x), logit(P_c) = log(sum of e under c) - log(sum of e elsewhere)."""

    def __init__(self, hierarchy: Hierarchy):
        super().__init__()
        cover = torch.from_numpy(leaf_cover(hierarchy))
        self.register_buffer("inside", cover, persistent=False)
        self.register_buffer("outside", 1 - cover, persistent=False)

    def forward(self, leaf_logits: torch.Tensor) -> torch.Tensor:
        e = torch.exp(leaf_logits - leaf_logits.amax(dim=1, keepdim=True))
        inside = torch.einsum("cl,nlhw->nchw", self.inside.to(e.dtype), e)
        outside = torch.einsum("cl,nlhw->nchw", self.outside.to(e.dtype), e)
        # a parent covering every leaf has nothing outside: log(0) = -inf, clipped to the limit
        return (torch.log(inside) - torch.log(outside)).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)


class WithChannelLogits(nn.Module):
    """A network with a softmax head, seen from outside as one logit per channel."""

    def __init__(self, net: nn.Module, hierarchy: Hierarchy):
        super().__init__()
        self.net = net
        self.to_channels = ChannelLogits(hierarchy)
        self.divisor = getattr(net, "divisor", 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_channels(self.net(x))


def channel_model(net: nn.Module, head: str, hierarchy: Hierarchy) -> nn.Module:
    """``net`` as a model with one logit per channel (itself for the sigmoid head)."""
    output_channels(head, hierarchy)  # validates the name
    return WithChannelLogits(net, hierarchy) if head == "softmax" else net
