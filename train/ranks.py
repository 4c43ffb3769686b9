"""Where training runs: the device, and this process's place among torchrun's processes.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank draws the same global batches and takes its
contiguous share of each (:class:`~neoseg.train.sampling.ShardedBatches`); losses and Dice are
summed across ranks (:meth:`Ranks.sum`), and only rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from .rundir import RunExistsError


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when torch sees one; under torchrun ``auto``/``cuda`` is this rank's GPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (float64 on the CPU of this process)."""
        values = values.detach().to("cpu", torch.float64)
        if self.world > 1:
            if torch.distributed.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
                on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
                torch.distributed.all_reduce(on_gpu)
                return on_gpu.cpu()
            torch.distributed.all_reduce(values)
        return values

    def share(self, n: int) -> tuple[int, int]:
        """(first row, size) of the global batch whose contiguous share of ``n`` rows is this
        rank's (the shares of :class:`ShardedBatches`)."""
        if self.world == 1:
            return 0, n
        total = int(self.sum(torch.tensor([float(n)])).item())
        share, extra = divmod(total, self.world)
        return self.rank * share + min(self.rank, extra), total

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def after_main(self, error: BaseException | None) -> None:
        """Where the other ranks wait for a step of rank 0 (``error``: how it failed, if it did):
        every rank raises rank 0's error, the same kind and message for a user error, instead of
        waiting at a barrier for a rank that is gone."""
        if self.world > 1:
            kind = None if error is None else next((k for k in (FileExistsError, ValueError) if isinstance(error, k)),
                                                   RuntimeError)
            sent = [None if error is None else (kind.__name__, type(error).__name__, str(error))]
            torch.distributed.broadcast_object_list(sent, src=0)
            if not self.main and sent[0] is not None:
                kind, name, message = sent[0]
                if kind == "FileExistsError":
                    raise RunExistsError(message)
                if kind == "ValueError":
                    raise ValueError(message)
                raise RuntimeError(f"rank 0 failed during setup: {name}: {message}")
        if error is not None:
            raise error


def init_ranks(device: torch.device) -> tuple[Ranks, bool]:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on
    GPU). Returns the ranks and whether this call created the group (and so must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), False
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # the long timeout covers the final barrier, while rank 0 evaluates the test set
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return Ranks(dist.get_rank(), dist.get_world_size()), created

