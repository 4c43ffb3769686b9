"""Reduced-precision parity of a network, measured on any CPU.

BF16 and FP16 inference on CPUs (oneDNN under OpenVINO and PyTorch) stores weights and
activations in the reduced type and accumulates in FP32. This is emulated here in FP32, so it runs
at FP32 speed on every CPU (PyTorch's own BF16 kernels on a CPU without BF16 units are ~40x slower
than FP32): BatchNorm is folded into the convolutions as the runtimes do, then every convolution's
weights, inputs and outputs are rounded to the reduced type. The result is stored in the exported
model (``neoseg.reduced_precision``) and gates ``--precision auto``
(:mod:`neoseg.runtime.precision`); the parity benchmark measures the real runtime path where the
hardware has it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from neoseg.runtime.backend import Backend
from neoseg.runtime.model import ModelInfo
from neoseg.runtime.precision import ParityRecord

from .parity import agreement

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ROUNDED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _round(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).to(torch.float32)


REMEDIES = {"head in fp32": (-1,), "first and head in fp32": (0, -1)}  # layers kept in FP32, by index


def emulated(model: nn.Module, precision: str, keep_fp32: tuple[int, ...] = ()) -> nn.Module:
    """A copy of ``model`` (eval, BatchNorm folded) computing as a ``precision`` runtime does;
    the layers ``keep_fp32`` (indices among its convolutions, -1 the output head) stay in FP32."""
    from neoseg.train.torch_backend import fold_batchnorm

    dtype = DTYPES[precision]
    out = fold_batchnorm(copy.deepcopy(model).eval().cpu())
    layers = [m for m in out.modules() if isinstance(m, ROUNDED)]
    kept = {id(layers[k]) for k in keep_fp32}
    for module in layers:
        if id(module) not in kept:
            module.weight.data = _round(module.weight.data, dtype)
            module.register_forward_pre_hook(lambda _m, args: tuple(_round(a, dtype) for a in args))
            module.register_forward_hook(lambda _m, _args, result: _round(result, dtype))
    return out


def full_resolution_layers(model: nn.Module, size: int, levels: int = 1) -> tuple[int, ...]:
    """Indices (as :func:`emulated` takes them) of ``model``'s convolutions whose output keeps at
    least the input's in-plane size ``size`` halved ``levels - 1`` times: those
    ``neoseg.export.bf16`` keeps in FP32."""
    layers = [m for m in model.modules() if isinstance(m, ROUNDED)]
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, _a, r: sizes.__setitem__(id(m), tuple(r.shape[-2:]))) for m in layers]
    try:
        with torch.no_grad():
            model.eval().cpu()(torch.zeros(1, 1, size, size))
    finally:
        for h in hooks:
            h.remove()
    least = size >> (levels - 1)
    return tuple(i for i, m in enumerate(layers) if min(sizes.get(id(m), (0, 0))) >= least)


class EmulatedBackend(Backend):
    """A runtime backend computing ``precision`` emulated in FP32 (:func:`emulated`), for the gate and
    the parity benchmark on CPUs without the units; ``keep_fp32`` as :func:`emulated` takes it."""

    def __init__(self, model: nn.Module, info: ModelInfo, precision: str, keep_fp32: tuple[int, ...] = (),
                 label: str = ""):
        self.net = emulated(model, precision, keep_fp32)
        self.info, self.precision, self.batch = info, precision, 8
        self.fixed_size = None if info.flexible else info.slice_size
        self.name = f"{precision} emulated (torch)" + (f", {label}" if label else "")

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        return self.net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


@torch.no_grad()
def reduced_parity(model: nn.Module, info: ModelInfo, x: np.ndarray, reference: np.ndarray | None = None,
                   batch: int = 8, remedy: str | None = None) -> dict[str, ParityRecord]:
    """Per reduced precision, the worst per-structure Dice of its masks against FP32's on the
    slices ``x`` ((N, 1, S, S)); ``reference`` are FP32 logits when already computed; ``remedy``
    (a key of :data:`REMEDIES`) keeps those layers in FP32."""
    def logits(net):
        return np.concatenate([net(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])

    h, t = info.hierarchy, info.logit_thresholds
    ref = h.masks(logits(model.eval().cpu()) if reference is None else reference, t, 1)
    keep = REMEDIES[remedy] if remedy else ()
    records = {}
    for precision in DTYPES:  # INT8 is measured on the real runtime path (export/int8.py)
        dice = agreement(h.masks(logits(emulated(model, precision, keep)), t, 1), ref, h.names, axis=1)
        worst = min(dice, key=dice.get)
        records[precision] = ParityRecord(
            min_dice=round(float(dice[worst]), 6), worst=worst, slices=len(x),
            measured_with=f"{precision} emulated in torch {torch.__version__.split('+')[0]} (rounded weights and "
                          f"activations, FP32 accumulation{', ' + remedy if remedy else ''})")
    return records
