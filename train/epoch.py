"""One pass over a loader: training (with an optimizer) or validation; the loss and a 2D Dice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from neoseg.core import hierarchy as hier

from .precision import autocast, optimizer_step
from .ranks import Ranks


@dataclass(frozen=True)
class EpochContext:
    """What every epoch of a run shares. ``to_channels`` turns the network's output into channel
    logits (softmax head); ``precision`` (resolved, see :mod:`.precision`) is the forward pass's,
    the loss is FP32 always, and ``scaler`` (fp16) scales it for the backward pass; ``augment``, an
    :class:`~neoseg.train.augment.Augmenter`, transforms the training batches."""

    model: torch.nn.Module
    loss_fn: Callable
    device: torch.device | str
    ranks: Ranks = Ranks()
    to_channels: Callable | None = None
    precision: str = "fp32"
    optimizer: torch.optim.Optimizer | None = None
    scaler: object | None = None
    augment: Callable | None = None
    progress: bool = False


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean over slices
    dice: float  # macro Dice over the channels present (observed entries, pooled over the pass)
    channel_dice: np.ndarray  # per channel, NaN where a channel is absent

    def mean_dice(self, channels: list[int]) -> float:
        values = self.channel_dice[channels]
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else math.nan


def dice_2d(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed intersections and sizes per channel (observed entries only), for a macro Dice."""
    pred = logits > 0
    truth = target == 1
    observed = target != hier.UNKNOWN
    inter = (pred & truth & observed).sum(dim=(0, 2, 3))
    size = ((pred & observed).sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3)))
    return inter, size


def run_epoch(ctx: EpochContext, loader, desc: str = "", train: bool = False, complete: Callable | None = None,
              after_step: Callable | None = None) -> EpochStats:
    """One pass over ``loader``; with ``train`` it steps ``ctx.optimizer`` (on augmented batches).
    ``complete(image, target)`` fills in targets before the loss (self-training), ``after_step()``
    runs after each optimizer step. Sums over all ranks."""
    from tqdm import tqdm

    ranks = ctx.ranks
    ctx.model.train(train)
    total, count, inter, size = 0.0, 0, 0, 0
    with torch.set_grad_enabled(train):
        # disable=None: no bar when stderr is no terminal (a log file gets the epoch's log line only)
        bar = tqdm(loader, desc=desc, disable=None if ctx.progress else True, leave=False, unit="batch")
        for image, target, _ in bar:
            image, target = image.to(ctx.device, non_blocking=True), target.to(ctx.device, non_blocking=True)
            if train and ctx.augment is not None:
                image, target = ctx.augment(image, target, *ranks.share(len(image)))
            if complete is not None:
                target = complete(image, target)
            with autocast(ctx.precision, ctx.device):
                logits = ctx.model(image)
            logits = logits.float()  # the loss (and the softmax head's channel logits) in FP32
            loss = ctx.loss_fn(logits, target)
            if train:
                _step(ctx, loss, len(image))
                if after_step is not None:
                    after_step()
            total += loss.item() * len(image)
            count += len(image)
            channels = logits.detach() if ctx.to_channels is None else ctx.to_channels(logits.detach())
            i, s = dice_2d(channels, target)
            inter, size = inter + i, size + s
            bar.set_postfix(loss=f"{total / count:.4f}")
    if ranks.world > 1:
        total, count = ranks.sum(torch.tensor([total, float(count)])).tolist()
        inter, size = ranks.sum(torch.as_tensor(inter)), ranks.sum(torch.as_tensor(size))
    inter, size = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (inter, size))
    per_channel = torch.where(size > 0, 2 * inter / size.clamp(min=1), math.nan).numpy()
    present = per_channel[~np.isnan(per_channel)]
    return EpochStats(total / max(count, 1), float(present.mean()) if count and len(present) else math.nan,
                      per_channel)


def _step(ctx: EpochContext, loss: torch.Tensor, n: int) -> None:
    ranks = ctx.ranks
    if ranks.world > 1:  # DDP averages gradients over ranks: weight each share by its size
        n_global = ranks.sum(torch.tensor([float(n)])).item()
        loss = loss * (ranks.world * n / n_global)
    optimizer_step(loss, ctx.optimizer, ctx.scaler)
