"""Training step time in FP32 and in mixed precision, in one process:
``python -m neoseg.benchmarks.train_precision [--out DIR]``.

A step is what ``neoseg-train`` does per batch (train/epoch.py): the forward pass under the
precision's autocast, the IUC loss in FP32, backward and Adam (with the gradient scaler for fp16);
the median of ``--repeats`` steps after ``--warmup``. Two cases: the cpu profile's U-Net (widths
8..128) on 16 slices of 64², and the default U-Net (16..256) on 8 slices of 256², both cut from
one synthetic subject. On a CPU it times fp32 and bf16 (bf16 only where the CPU has BF16 units:
elsewhere torch's BF16 kernels are far slower than FP32 and would take minutes here); on a CUDA GPU
fp32 (torch's defaults, TF32 convolutions), bf16 where the GPU has it, and fp16.
"""

from __future__ import annotations

import argparse

import torch

from .augment_cost import batch_of_slices
from .common import machine, median_seconds, table, write_results

CASES = [  # name, U-Net widths, slice size, slices per batch
    ("cpu profile U-Net (8..128), 64²", [8, 16, 32, 64, 128], 64, 16),
    ("default U-Net (16..256), 256²", [16, 32, 64, 128, 256], 256, 8),
]


def precisions_here(device: torch.device) -> tuple[list[str], str]:
    """(precisions to time on ``device``, fp32 first; a note on what is left out and why)."""
    from neoseg.train.precision import cpu_has_bf16, gpu_has_bf16

    if device.type == "cuda":
        if gpu_has_bf16(device):
            return ["fp32", "bf16", "fp16"], ""
        return ["fp32", "fp16"], "bf16 not timed: this GPU has no BF16 units"
    if cpu_has_bf16():
        return ["fp32", "bf16"], ""
    return ["fp32"], "bf16 not timed: this CPU has no BF16 units (AVX-512 BF16 or AMX)"


def time_step(widths: list[int], image: torch.Tensor, target: torch.Tensor, precision: str,
              device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of one training step of a fresh U-Net (same initial weights every call)."""
    from neoseg.core.hierarchy import builtin
    from neoseg.train.losses import make_loss
    from neoseg.train.models import create_model
    from neoseg.train.precision import autocast, grad_scaler, optimizer_step

    hierarchy = builtin()
    torch.manual_seed(0)
    model = create_model("unet", 1, len(hierarchy), widths=widths).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = make_loss("iuc", hierarchy)
    scaler = grad_scaler(precision, device)

    def step():
        with autocast(precision, device):
            logits = model(image)
        optimizer_step(loss_fn(logits.float(), target), optimizer, scaler)

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return median_seconds(step, repeats, warmup, sync)


def measure(device: torch.device, repeats: int, warmup: int) -> tuple[list[dict], str]:
    precisions, note = precisions_here(device)
    rows = []
    for name, widths, size, batch in CASES:
        image, target = (t.to(device) for t in batch_of_slices(size, batch))
        fp32 = None
        for precision in precisions:
            seconds = time_step(widths, image, target, precision, device, repeats, warmup)
            fp32 = fp32 or seconds
            rows.append({"case": name, "batch": batch, "precision": precision, "ms_per_step": 1000 * seconds,
                         "speedup_vs_fp32": fp32 / seconds})
    return rows, note


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write train_precision.json and .md here")
    p.add_argument("--device", default="auto", help="auto (the GPU if torch sees one), cpu or cuda")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per case and precision (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    rows, note = measure(device, args.repeats, args.warmup)
    info = {**machine(), "device": str(device), "threads": torch.get_num_threads()}
    markdown = (f"Training step (forward, FP32 IUC loss, backward, Adam) on {device}, {info['threads']} thread{'s' * (info['threads'] != 1)}, "
                f"median of {args.repeats} after {args.warmup} warm-up; {info['cpu']}, torch {torch.__version__}"
                + (f", {info['gpu']}" if "gpu" in info else "") + (f". {note}" if note else "") + "\n\n"
                + table(["case", "slices", "precision", "ms / step", "× FP32 speed"],
                        [[r["case"], r["batch"], r["precision"], round(r["ms_per_step"], 1),
                          round(r["speedup_vs_fp32"], 2)] for r in rows]))
    print(markdown)
    if args.out:
        write_results(args.out, "train_precision", {"machine": info, "repeats": args.repeats, "warmup": args.warmup,
                                                    "note": note, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
