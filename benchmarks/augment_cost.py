"""What the standard augmentation policy costs per batch, as a ratio to a training step, in one
process: ``python -m neoseg.benchmarks.augment_cost [--size 64 --batch 16 --widths 8,16,32,64,128]``.

The batch is cut from one synthetic subject; the step is forward, IUC loss, backward and Adam on
the U-Net. The two are timed interleaved (median of ``--rounds``), so machine load hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def batch_of_slices(size: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, 1, size, size) images and their drawem9 targets: sagittal slices of one synthetic subject."""
    from neoseg.core.hierarchy import builtin
    from neoseg.core.preprocess import head_center, minmax_scale, plane_windows, to_slices
    from neoseg.data.synth import generate_subject

    t2, labels, _ = generate_subject(np.random.default_rng(seed), 40.0, size)
    windows = plane_windows(t2.shape, 0, size, head_center(t2))
    images, labels = to_slices(minmax_scale(t2), 0, windows), to_slices(labels, 0, windows)
    rows = np.linspace(size // 4, 3 * size // 4, batch).astype(int)
    targets = builtin().encode(labels[rows]).swapaxes(0, 1)
    return torch.from_numpy(images[rows, None].copy()), torch.from_numpy(np.ascontiguousarray(targets))


def measure(size: int, batch: int, widths: list[int], rounds: int, device: str) -> dict:
    from neoseg.core.hierarchy import builtin
    from neoseg.train.augment import make_augment
    from neoseg.train.losses import make_loss
    from neoseg.train.models import create_model

    hierarchy = builtin()
    image, target = (t.to(device) for t in batch_of_slices(size, batch))
    augment = make_augment("standard", hierarchy, 0, device)
    model = create_model("unet", 1, len(hierarchy), widths=widths).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = make_loss("iuc", hierarchy)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        loss = loss_fn(model(image), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    step(), augment(image, target)  # warm-up
    steps, augments = [], []
    for _ in range(rounds):
        steps.append(timed(step))
        augments.append(timed(lambda: augment(image, target)))
    s, a = statistics.median(steps), statistics.median(augments)
    return {"size": size, "batch": batch, "widths": widths, "device": device, "threads": torch.get_num_threads(),
            "step_s": s, "augment_s": a, "ratio": a / s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--widths", default="8,16,32,64,128")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    r = measure(args.size, args.batch, [int(w) for w in args.widths.split(",")], args.rounds, args.device)
    print(f"{r['batch']} slices of {r['size']}^2, U-Net {r['widths']}, {r['device']} ({r['threads']} threads): "
          f"training step {r['step_s'] * 1000:.1f} ms, standard augmentation {r['augment_s'] * 1000:.1f} ms, "
          f"ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
