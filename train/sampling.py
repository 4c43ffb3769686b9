"""The training batches, sharded over ranks so that they add up to one process's batches."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


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
        if self.steps is None:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:
            order = []
            while len(order) < self.steps * self.batch_size:
                order += torch.randperm(self.n, generator=self.generator).tolist()
            order = order[: self.steps * self.batch_size]
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
