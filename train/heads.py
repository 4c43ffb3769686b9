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


def head_conversion(source: str, target: str, hierarchy: Hierarchy) -> tuple[np.ndarray, np.ndarray]:
    """(M, b) such that ``M @ y + b`` turns the logits y of a ``source`` head into logits of a
    ``target`` head that decide as alike as a linear map can: the output layer of a model that
    starts from another head's (:func:`neoseg.train.init.load_initial_weights`).

    * sigmoid -> softmax: a leaf's logit is the log of its probability taken down its path,
      log P(root) + sum of log P(node | parent), each P(node | parent) a softmax over the node's
      siblings' channel logits with the log-sum-exp replaced by its linear lower bound (the mean
      plus log of the count): x_l = z_root + sum over the path below the root of
      (z_node - mean of the siblings' z - log(siblings)). So leaves under one parent are ordered as
      their channels are, and the root's channel logit carries over.
    * softmax -> sigmoid: a channel's logit is logit(P_c) = LSE(x under c) - LSE(x elsewhere)
      (:class:`ChannelLogits`), each log-sum-exp replaced the same way; a leaf channel is thus ordered
      as its leaf logit. A channel over every leaf gets the clipped +LOGIT_LIMIT.
    * the same head: the identity."""
    output_channels(source, hierarchy), output_channels(target, hierarchy)  # validates the names
    leaves, channels = hierarchy.leaves, len(hierarchy)
    if source == target:
        n = output_channels(source, hierarchy)
        return np.eye(n, dtype=np.float64), np.zeros(n)
    if source == "sigmoid":
        matrix, offset = np.zeros((len(leaves), channels)), np.zeros(len(leaves))
        for row, leaf in enumerate(leaves):
            path = [*reversed(hierarchy.ancestors(leaf)), leaf]
            matrix[row, path[0]] += 1
            for node in path[1:]:
                siblings = hierarchy.children(hierarchy.parent(node))
                matrix[row, node] += 1
                matrix[row, siblings] -= 1 / len(siblings)
                offset[row] -= np.log(len(siblings))
        return matrix, offset
    cover = leaf_cover(hierarchy).astype(np.float64)
    matrix, offset = np.zeros((channels, len(leaves))), np.zeros(channels)
    for c in range(channels):
        inside, outside = cover[c] > 0, cover[c] == 0
        if not outside.any():
            offset[c] = LOGIT_LIMIT
            continue
        matrix[c, inside], matrix[c, outside] = 1 / inside.sum(), -1 / outside.sum()
        offset[c] = np.log(inside.sum()) - np.log(outside.sum())
    return matrix, offset
