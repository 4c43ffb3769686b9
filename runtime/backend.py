"""What every execution backend is: (N, 1, H, W) float32 slices in, (N, C, H, W) float32 logits
out. The concrete backends import this module; :mod:`.backends` opens and chooses among them."""

from __future__ import annotations

import numpy as np

from .model import ModelInfo


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


class Backend:
    """Base: ``info`` (the model's metadata), ``name`` (what actually runs), ``precision`` (its
    numeric precision) and ``note`` (why that one), ``batch`` (default slices per call) and
    ``fixed_size`` (None when any multiple of ``info.divisor`` is accepted)."""

    info: ModelInfo
    name: str
    precision: str = "fp32"
    note: str = ""
    batch: int = 256
    fixed_size: int | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def fixed_precision(runs: str, requested: str, what: str, hint: str = "") -> str:
    """For a path that runs only ``runs``: the precision, or why ``requested`` cannot run."""
    if requested not in ("auto", runs):
        raise BackendUnavailable(f"{what} runs {runs} only, not {requested}" + (f"; {hint}" if hint else ""))
    return runs
