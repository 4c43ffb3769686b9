"""How a run's weights start: from another run's checkpoint (fine-tuning, or a start from a model
with another head), or with the output biases at the training labels' priors."""

from __future__ import annotations

import numpy as np
import torch

from neoseg.core import hierarchy as hier

from . import checkpoint
from .config import TrainConfig
from .dataset import SliceDataset
from .heads import head_conversion, output_channels


def load_initial_weights(model: torch.nn.Module, config: TrainConfig, hierarchy: hier.Hierarchy) -> None:
    """Copy the weights of ``config.init_from``, a checkpoint of the same network and hierarchy.
    Its head may differ (an IUC sigmoid model starting a label-set softmax one, or back): every
    weight but the output layer's is copied, and the output layer becomes the source's followed
    by :func:`~neoseg.train.heads.head_conversion`, so the started model decides as the source did
    as closely as a linear layer can."""
    start = checkpoint.load(config.init_from)
    if (start.config.model, start.config.model_kwargs()) != (config.model, config.model_kwargs()):
        raise ValueError(f"init_from {config.init_from} holds a '{start.config.model}' {start.config.model_kwargs()} "
                         f"but this run trains a '{config.model}' {config.model_kwargs()}; the networks must match "
                         f"(only the head may differ): pass the same --model and --widths as that run")
    if start.hierarchy.names != hierarchy.names:
        raise ValueError(f"init_from {config.init_from} predicts {start.hierarchy.names}, this run {hierarchy.names}")
    source = start.config.head
    if source == config.head:
        model.load_state_dict(start.net.state_dict())
        return
    old = output_layer(start.net, output_channels(source, hierarchy))
    new = output_layer(model, output_channels(config.head, hierarchy))
    head_names = {name for name, m in model.named_modules() if m is new}
    body = {k: v for k, v in start.net.state_dict().items() if k.rsplit(".", 1)[0] not in head_names}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or {k.rsplit(".", 1)[0] for k in missing} != head_names:
        raise ValueError(f"init_from {config.init_from}: its network differs from this run's beyond the output layer "
                         f"(missing {missing}, unexpected {unexpected})")
    matrix, offset = (torch.as_tensor(a, dtype=torch.float64)
                      for a in head_conversion(source, config.head, hierarchy))
    with torch.no_grad():
        weight = old.weight.double().reshape(old.weight.shape[0], -1)
        new.weight.copy_((matrix @ weight).reshape(new.weight.shape))
        new.bias.copy_(matrix @ old.bias.double() + offset)


def output_layer(model: torch.nn.Module, channels: int) -> torch.nn.Module:
    """The last convolution or linear layer of ``model`` with ``channels`` biased outputs."""
    heads = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None
             and getattr(m, "out_channels", getattr(m, "out_features", None)) == channels]
    if not heads:
        raise ValueError(f"found no output layer with {channels} biased outputs in {type(model).__name__}")
    return heads[-1]


def set_prior_bias(model: torch.nn.Module, dataset: SliceDataset, head: str = "sigmoid") -> None:
    """Set the output layer's biases to each channel's prior log odds log(p / (1 - p)) over the
    training slices (sigmoid head), or to the leaves' log priors log p (softmax head). A channel's
    p is its fraction of 1s among its observed (not unknown) target entries, except for children:
    partially labelled slices hide them exactly where their parent is present, so that fraction
    underestimates them; a child's p is p(parent) x p(child | parent), the latter counted on the
    fully labelled slices (the same number as the plain fraction when all are full). Really partial
    slices (parent values, masks) count like simulated ones, through their target rows."""
    table = dataset.table.astype(np.int64)
    every, full = np.zeros(len(table), np.int64), np.zeros(len(table), np.int64)
    for s, (stack, is_full) in enumerate(zip(dataset.stacks, dataset.full)):
        counts = np.bincount(dataset.codes(s, np.asarray(stack.labels).ravel()), minlength=len(table))[: len(table)]
        every += counts
        if is_full:
            full += counts
    positive = (every[:, None] * (table == 1)).sum(axis=0)
    observed = (every[:, None] * (table != hier.UNKNOWN)).sum(axis=0)
    p = positive / np.maximum(observed, 1)
    full_positive = (full[:, None] * (table == 1)).sum(axis=0)
    for parent, kids in dataset.hierarchy.sibling_groups:  # top-down
        if full_positive[parent] > 0:
            p[kids] = p[parent] * full_positive[kids] / full_positive[parent]
    p = np.clip(p, 1e-4, 1 - 1e-4)
    if head == "softmax":
        leaves = dataset.hierarchy.leaves
        bias, channels = np.log(p[leaves] / p[leaves].sum()), len(leaves)
    else:
        bias, channels = np.log(p / (1 - p)), table.shape[1]
    try:
        head = output_layer(model, channels)
    except ValueError as e:
        raise ValueError(f"prior_bias: {e}") from None
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
