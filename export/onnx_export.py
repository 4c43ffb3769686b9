"""Checkpoint -> self-describing ONNX model, verified against PyTorch before it is kept.

The graph maps (N, 1, H, W) float32 slices to (N, C, H, W) logits; the sigmoid is left to the
runtime, which thresholds logits directly (sigmoid(x) >= t <=> x >= logit(t)). N is dynamic, and
so are H and W for the fully convolutional U-Net. Everything inference needs is in the model's
``metadata_props`` (see :class:`neoseg.runtime.model.ModelInfo`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from neoseg.core.io import atomic_path
from neoseg.core.preprocess import head_center, minmax_scale, plane_windows, to_slices
from neoseg.runtime.model import INPUT, OUTPUT, ModelInfo
from neoseg.runtime.precision import PARITY_DICE, ParityRecord

from .parity import agreement

FP32_DICE = 0.999  # ONNX Runtime FP32 must agree with PyTorch FP32 at least this well per structure
FP32_ATOL = 1e-2  # largest tolerated logit difference


class ParityError(RuntimeError):
    """An exported model disagrees with its source beyond tolerance."""


@dataclass
class ParityReport:
    reference: str
    candidate: str
    n_slices: int
    max_abs_diff: float | None  # largest logit difference; None where not comparable
    dice: dict[str, float]  # per structure, thresholded masks of candidate vs reference
    reduced: dict[str, ParityRecord] = field(default_factory=dict)  # reduced precision vs FP32, stored in the model

    def failures(self, min_dice: float, atol: float | None = None) -> list[str]:
        bad = [f"{k} Dice {v:.5f} < {min_dice}" for k, v in self.dice.items() if not v >= min_dice]
        if atol is not None and self.max_abs_diff is not None and not self.max_abs_diff <= atol:
            bad.append(f"largest logit difference {self.max_abs_diff:.3g} > {atol}")
        return bad

    def lines(self) -> list[str]:
        head = f"{self.candidate} vs {self.reference} on {self.n_slices} slices"
        if self.max_abs_diff is not None:
            head += f": largest logit difference {self.max_abs_diff:.3g}"
        lines = [head, "  Dice agreement: " + ", ".join(f"{k} {v:.4f}" for k, v in self.dice.items())]
        for precision, record in self.reduced.items():
            verdict = "--precision auto may use it where the CPU runs it fast" if record.passed else \
                f"below {PARITY_DICE}: --precision auto passes it over"
            lines.append(f"  {precision}: {record.describe()}; {verdict}")
        return lines


def verification_slices(images: list[np.ndarray], info: ModelInfo, per_volume: int = 16) -> np.ndarray:
    """(N, 1, S, S) float32 slices cut as in training, evenly spread over each volume's head."""
    out = []
    for image in images:
        windows = plane_windows(image.shape, info.axis, info.slice_size, head_center(image))
        slices = to_slices(minmax_scale(image), info.axis, windows)
        fg = np.flatnonzero(slices.reshape(len(slices), -1).max(axis=1) > info.head_fraction)
        pick = fg if len(fg) else np.arange(len(slices))
        out.append(slices[pick[np.linspace(0, len(pick) - 1, min(per_volume, len(pick))).astype(int)]])
    return np.concatenate(out)[:, None]


def verification_volumes(config, data: Path | None, n: int) -> list:
    """The first ``n`` scans of ``data`` (dHCP layout), else of the checkpoint's training data
    (``config``), canonical (``neoseg-export`` chooses its scans with :mod:`.scans`)."""
    from neoseg.train.volumes import load_canonical

    return [load_canonical(s.t2, np.float32)[0] for s in scan_sessions(config, data, "verify the export on",
                                                                         "pass --data ROOT or --verify-scans 0")[:n]]


def scan_sessions(config, data: Path | None, purpose: str, fix: str) -> list:
    """The sessions of ``data`` (dHCP layout), else of the checkpoint's training data (``config``);
    ``purpose`` and ``fix`` complete the error where there are none."""
    from neoseg.data.dhcp import find_sessions

    if data is not None:
        sessions = find_sessions(data, require_labels=False)
    else:
        from neoseg.train.config import dataset_sessions
        try:
            sessions = dataset_sessions(config, progress=False)
        except (ImportError, ValueError, OSError) as e:
            raise ValueError(f"cannot find the training scans to {purpose} ({e}); {fix}") from None
    if not sessions:
        raise ValueError(f"no scans to {purpose}; {fix}")
    return sessions


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 8) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def export_onnx(model: torch.nn.Module, info: ModelInfo, out: str | Path, verify_on: np.ndarray | None = None,
                overwrite: bool = False) -> ParityReport | None:
    """Write ``model`` to ``out`` with ``info`` as metadata. With ``verify_on`` ((N, 1, S, S)
    slices), ONNX Runtime must match PyTorch (:data:`FP32_DICE`, :data:`FP32_ATOL`) or nothing
    is written and :class:`ParityError` says by how much it missed; the agreement of BF16 and FP16
    with FP32 on the same slices is measured and stored in the model (it gates
    ``--precision auto``)."""
    from .reduced import reduced_parity

    model = model.eval().cpu()
    reference = reduced = None
    if verify_on is not None:
        reference = torch_logits(model, verify_on)
        reduced = reduced_parity(model, info, verify_on, reference)
        info = replace(info, reduced_precision=json.dumps({k: asdict(v) for k, v in reduced.items()}))
    size = info.slice_size
    spatial = {0: "batch", 2: "height", 3: "width"} if info.flexible else {0: "batch"}
    with atomic_path(out, overwrite) as tmp:
        with warnings.catch_warnings():  # the tracer's notes on shape checks baked into the graph
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.zeros(2, 1, size, size), str(tmp), input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=17, dynamo=False,
                              dynamic_axes={INPUT: spatial, OUTPUT: spatial})
        proto = onnx.load(str(tmp))
        proto.producer_name, proto.producer_version = "neoseg", info.version
        del proto.metadata_props[:]
        for key, value in info.to_metadata().items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = None
        if verify_on is not None:
            report = compare_onnx(tmp, model, info, verify_on, reference)
            report.reduced = reduced
            bad = report.failures(FP32_DICE, FP32_ATOL)
            if bad:
                raise ParityError(f"ONNX export disagrees with PyTorch ({'; '.join(bad)}); nothing was written")
    return report


def compare_onnx(path: str | Path, model: torch.nn.Module, info: ModelInfo, x: np.ndarray,
                 reference: np.ndarray | None = None) -> ParityReport:
    """ONNX Runtime (CPU, FP32) vs PyTorch FP32 (``reference`` logits, computed when None) on the
    same slices."""
    from neoseg.runtime.ort_backend import OrtBackend

    ref = torch_logits(model, x) if reference is None else reference
    backend = OrtBackend(Path(path), "ort-cpu")
    got = np.concatenate([backend.run(x[i:i + 8]) for i in range(0, len(x), 8)])
    t = info.logit_thresholds
    dice = agreement(info.hierarchy.masks(got, t, 1), info.hierarchy.masks(ref, t, 1), info.hierarchy.names, axis=1)
    return ParityReport("PyTorch FP32", "ONNX Runtime FP32", len(x), float(np.abs(got - ref).max()), dice)
