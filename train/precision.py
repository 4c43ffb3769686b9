"""Training precision: FP32, or mixed precision with an autocast forward.

``bf16`` and ``fp16`` run the network's forward pass (training and validation) under
``torch.autocast``: convolutions and matrix products compute in the reduced type, while the weights,
the optimizer state and the checkpoints stay FP32 and the loss is computed in FP32 on the logits cast
back. Export and everything downstream are unchanged. ``fp16`` adds a gradient scaler (its narrow
exponent underflows small gradients) and trains on CUDA GPUs only; ``bf16`` has FP32's exponent and
needs no scaler. ``auto`` is bf16 where the device has the units for it, else fp32. An explicitly
requested precision the device cannot run is refused with the reason; nothing falls back silently.
"""

from __future__ import annotations

import contextlib

import torch

from neoseg.runtime.cpu import cpu_flags
from neoseg.runtime.precision import HARDWARE

from .config import PRECISIONS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPUINFO_BF16 = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags, where torch cannot tell


def cpu_has_bf16() -> bool:
    """Whether this CPU has BF16 units (AVX-512 BF16 or AMX). Without them torch's BF16 autocast
    still works, but several times slower than FP32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(check) for check in checks):
        return any(check() for check in checks)
    flags = cpu_flags()
    return any(flag in flags for flag in CPUINFO_BF16)


def gpu_has_bf16(device: torch.device) -> bool:
    """Whether this CUDA GPU has BF16 units (Ampere or later; every ROCm GPU torch supports).
    Not ``torch.cuda.is_bf16_supported()``, which also counts older GPUs that emulate BF16 slowly."""
    return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision to train in on ``device``, why ``auto`` chose it or "" for an explicit one).
    Raises :class:`ValueError` with the fix for an explicit precision the device cannot run."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown training precision '{requested}'; available: {', '.join(PRECISIONS)}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    bf16 = gpu_has_bf16(device) if cuda else cpu_has_bf16()
    unit = f"this GPU ({torch.cuda.get_device_name(device)})" if cuda else "this CPU"
    if requested == "auto":
        if bf16:
            return "bf16", f"auto: {unit} has BF16 units"
        return "fp32", f"auto: {unit} has no BF16 units"
    if requested == "bf16" and not bf16:
        fix = "use --precision fp16 or fp32" if cuda else "use --precision fp32"
        need = "BF16 needs an Ampere or later GPU" if cuda else HARDWARE["bf16"]
        raise ValueError(f"--precision bf16: {unit} has no BF16 units; {need}; {fix}")
    if requested == "fp16" and not cuda:
        fix = "use --precision bf16 or fp32" if bf16 else "use --precision fp32"
        raise ValueError(f"--precision fp16 trains on CUDA GPUs only (autocast with a gradient scaler), "
                         f"not on {device}; {fix}")
    return requested, ""


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: autocast to the reduced type, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 only: the loss scaler that keeps small FP16 gradients from underflowing."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """Gradients of ``loss`` and one optimizer step; with an fp16 ``scaler`` through it (a step
    whose gradients overflowed is skipped, and the scale shrinks)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
