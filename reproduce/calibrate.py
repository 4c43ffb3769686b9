"""How long the unfinished runs will take at most: slice passes per run and training speed."""

from __future__ import annotations

import time
from pathlib import Path

from .grid import RunSpec
from .profiles import Profile


def slice_passes(spec: RunSpec, profile: Profile, sessions, cache: Path) -> float:
    """Training slices one run processes at most (its epoch cap), plus its validation passes at a
    third of the cost (no backward pass); the pseudo-labelling of a semi-supervised run and the
    evaluation of an evaluation run (which trains nothing: 0) are left out."""
    if spec.evaluates:
        return 0.0
    from neoseg.data.splits import make_split
    from neoseg.core.hierarchy import builtin
    from neoseg.train.volumes import VolumeCache

    split = make_split(sessions, spec.fraction, seed=0, draw=spec.draw)
    stacks = VolumeCache(cache, 0, profile.slice_size[spec.model], builtin())
    count = lambda ss: sum(len(stacks.get(s).image) for s in ss)  # noqa: E731
    own = [s for s in split.train if spec.kind != "supervised" or split.is_full(s)]
    per_epoch = profile.steps_per_epoch * profile.batch_size if profile.steps_per_epoch else count(own)
    return profile.epochs[spec.model] * spec.budget * (per_epoch + count(split.val) / 3)


def calibrate(profile: Profile, device: str, steps: int = 3) -> float:
    """Training slices per second of one run (U-Net, the profile's batch, slice size and threads)."""
    import torch

    from neoseg.core.hierarchy import builtin
    from neoseg.train.losses import make_loss
    from neoseg.train.models import create_model

    threads = torch.get_num_threads()
    if profile.threads and device == "cpu":
        torch.set_num_threads(profile.threads)
    try:
        hierarchy = builtin()
        model = create_model("unet", 1, len(hierarchy), widths=list(profile.widths)).to(device)
        optimizer, loss = torch.optim.Adam(model.parameters()), make_loss("iuc", hierarchy)
        size, n = profile.slice_size["unet"], profile.batch_size
        image = torch.rand(n, 1, size, size, device=device)
        target = torch.randint(0, 3, (n, len(hierarchy), size, size), dtype=torch.uint8, device=device)
        for i in range(steps + 1):
            if i == 1:  # the first step warms up
                began = time.perf_counter()
            optimizer.zero_grad()
            loss(model(image), target).backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * n / (time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)
