"""The training batches, sharded over ranks so that they add up to one process's batches.

:class:`ShardedBatches` shuffles every slice alike (the paper's sampling); :class:`MixedBatches`
puts a fixed number of fully labelled slices into every batch (``--full-share``), so that the
children get a gradient at every step however few the fully labelled sessions are. Every draw
comes from the one ``generator`` at the start of an epoch, so its state, saved in last.pt, is all
that a resumed run needs to draw the same batches.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Sampler

log = logging.getLogger("neoseg.train")


class ShardedBatches(Sampler):
    """Batch sampler: global batches of ``batch_size`` slice indices from shuffles drawn with
    ``generator``; rank ``rank`` of ``world`` yields its contiguous share of each, so ``world``
    processes see together exactly the batches that one process would. ``steps`` fixes the
    batches per epoch (drawn from as many fresh shuffles as needed; the rest of the last shuffle
    is dropped), else an epoch is one shuffle. A global batch with fewer slices than ranks (at
    most the last of an epoch) is skipped by every rank."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                 steps: int | None = None):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank, self.world, self.steps = rank, world, steps

    def global_batches(self) -> list[list[int]]:
        count = self.n if self.steps is None else self.steps * self.batch_size
        order = _stream(list(range(self.n)), count, self.generator)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [b for b in batches if len(b) >= self.world]

    def __iter__(self):
        for batch in self.global_batches():
            share, extra = divmod(len(batch), self.world)
            start = self.rank * share + min(self.rank, extra)
            yield batch[start:start + share + (self.rank < extra)]

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return self.n // self.batch_size + (self.n % self.batch_size >= self.world)


class MixedBatches(ShardedBatches):
    """:class:`ShardedBatches` whose every global batch holds ``per_batch`` slices of ``full`` (the
    fully labelled sessions' slice indices, drawn from as many fresh shuffles of them as the epoch
    needs: oversampled, since they are few) and ``batch_size - per_batch`` of ``partial`` (the
    others). An epoch is one pass over the partial slices (the last batch may hold fewer of
    them), or ``steps`` batches drawn from fresh shuffles of them; the full slices are spread
    evenly through each batch, so every rank's share holds some of them where ``per_batch`` is at
    least ``world``. With ``--atlas pairs`` the synthesised pairs are fully labelled sessions too,
    and so are drawn for ``full``."""

    def __init__(self, full: list[int], partial: list[int], batch_size: int, per_batch: int,
                 generator: torch.Generator, rank: int = 0, world: int = 1, steps: int | None = None):
        if not (full and partial and 0 < per_batch < batch_size):
            raise ValueError(f"mixed batches need fully and partially labelled slices and 0 < full slices per batch "
                             f"< batch size; got {len(full)} and {len(partial)} slices, {per_batch} of {batch_size}")
        super().__init__(len(full) + len(partial), batch_size, generator, rank, world, steps)
        self.full, self.partial, self.per_batch = list(full), list(partial), per_batch

    @property
    def partial_per_batch(self) -> int:
        return self.batch_size - self.per_batch

    def global_batches(self) -> list[list[int]]:
        m = self.partial_per_batch
        order = _stream(self.partial, len(self.partial) if self.steps is None else self.steps * m, self.generator)
        chunks = [order[i:i + m] for i in range(0, len(order), m)]
        picks = _stream(self.full, len(chunks) * self.per_batch, self.generator)
        batches = [_interleave(picks[j * self.per_batch:(j + 1) * self.per_batch], chunk)
                   for j, chunk in enumerate(chunks)]
        return [b for b in batches if len(b) >= self.world]

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        whole, rest = divmod(len(self.partial), self.partial_per_batch)
        return whole + int(rest > 0 and self.per_batch + rest >= self.world)


def training_batches(full: list[bool], batch_size: int, full_share: float, generator: torch.Generator,
                     rank: int = 0, world: int = 1, steps: int | None = None) -> ShardedBatches:
    """The training run's batch sampler over slices flagged ``full`` (fully labelled) or not: with
    ``full_share`` > 0 and both kinds present, :class:`MixedBatches` with round(full_share x
    batch_size) full slices per batch (at least 1, at most batch_size - 1); otherwise (and, with
    a warning, when there is nothing to mix) :class:`ShardedBatches`, the plain shuffle."""
    if full_share <= 0:
        return ShardedBatches(len(full), batch_size, generator, rank, world, steps)
    full_ids = [i for i, f in enumerate(full) if f]
    partial_ids = [i for i, f in enumerate(full) if not f]
    if not (full_ids and partial_ids):
        if rank == 0:
            log.warning("full_share %g: the training slices are all %s labelled, so there is nothing to mix; "
                        "sampling them as without it", full_share, "fully" if full_ids else "partially")
        return ShardedBatches(len(full), batch_size, generator, rank, world, steps)
    per_batch = min(max(1, round(full_share * batch_size)), batch_size - 1)
    if rank == 0:
        log.info("full_share %g: %d of every %d slices from the %d fully labelled slices; an epoch is one pass "
                 "over the %d partially labelled ones", full_share, per_batch, batch_size, len(full_ids),
                 len(partial_ids))
    return MixedBatches(full_ids, partial_ids, batch_size, per_batch, generator, rank, world, steps)


def _stream(items: list[int], count: int, generator: torch.Generator) -> list[int]:
    """The first ``count`` items of fresh shuffles of ``items``, one after the other."""
    out: list[int] = []
    while items and len(out) < count:
        out += [items[j] for j in torch.randperm(len(items), generator=generator).tolist()]
    return out[:count]


def _interleave(full: list[int], partial: list[int]) -> list[int]:
    """``full`` spread evenly among ``partial`` (the k-th at the middle of the k-th of len(full) equal parts)."""
    n = len(full) + len(partial)
    at = {(2 * k + 1) * n // (2 * len(full)): f for k, f in enumerate(full)}
    rest = iter(partial)
    return [at[p] if p in at else next(rest) for p in range(n)]
