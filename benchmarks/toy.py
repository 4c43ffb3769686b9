"""A quickly trained model for benchmarks and tests: a U-Net fitted for a few hundred steps on
fully labelled scans (plain BCE, or the label-set loss for a softmax head), cut and scaled exactly as neoseg-train does, saved as a
regular neoseg checkpoint. Outputs are therefore scan-dependent, never constant."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from neoseg.core.hierarchy import builtin
from neoseg.core.preprocess import head_center, minmax_scale, plane_windows, to_slices
from neoseg.data.dhcp import Session
from neoseg.train import checkpoint
from neoseg.train.config import TrainConfig
from neoseg.train.heads import output_channels
from neoseg.train.losses import make_loss
from neoseg.train.models import create_model
from neoseg.train.volumes import load_canonical, load_labels


def training_slices(sessions: list[Session], axis: int, size: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(N, 1, S, S) images, (N, S, S) labels of every session, and the median spacing."""
    images, labels, spacings = [], [], []
    for s in sessions:
        image, img = load_canonical(s.t2, np.float32)
        label, _ = load_labels(s.labels)
        windows = plane_windows(image.shape, axis, size, head_center(image))
        images.append(to_slices(minmax_scale(image), axis, windows))
        labels.append(to_slices(label, axis, windows))
        spacings.append(img.header.get_zooms()[:3])
    return np.concatenate(images)[:, None], np.concatenate(labels), tuple(np.median(spacings, axis=0).tolist())


def train_toy(out: str | Path, sessions: list[Session], slice_size: int, widths=(8, 16, 32), axis: int = 0,
              steps: int = 200, seconds: float | None = None, batch: int = 16, device: str = "cpu",
              seed: int = 0, loss: str = "bce") -> Path:
    """Fit a U-Net for ``steps`` steps (or ``seconds``) with ``loss`` and save it as a neoseg checkpoint."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    if device == "cpu":  # a tiny network: one thread is fastest, and immune to a busy second core
        torch.set_num_threads(1)
    try:
        return _fit(out, sessions, slice_size, widths, axis, steps, seconds, batch, device, seed, loss)
    finally:
        torch.set_num_threads(threads)


def _fit(out, sessions, slice_size, widths, axis, steps, seconds, batch, device, seed, loss) -> Path:
    hierarchy = builtin()
    images, labels, spacing = training_slices(sessions, axis, slice_size)
    targets = hierarchy.encode(labels.astype(np.int64)).swapaxes(0, 1)  # (N, C, S, S) in {0, 1}
    config = TrainConfig(axis=axis, slice_size=slice_size, widths=list(widths), loss=loss)
    model = create_model("unet", 1, output_channels(config.head, hierarchy), widths=list(widths)).to(device)
    loss_fn = make_loss(loss, hierarchy)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(images).to(device)
    y_all = torch.from_numpy(targets).to(device)
    start = time.perf_counter()
    for step in range(steps):
        if seconds is not None and time.perf_counter() - start > seconds:
            break
        idx = torch.from_numpy(rng.integers(0, len(images), batch)).to(device)
        value = loss_fn(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    model.cpu().eval()
    checkpoint.save(out, model, config, hierarchy, spacing, thresholds=[0.5] * len(hierarchy))
    return Path(out)


def toy_onnx(folder: str | Path, sessions: list[Session], slice_size: int = 32, widths=(8, 16),
             steps: int = 40, loss: str = "bce") -> tuple[Path, Path]:
    """A trained toy checkpoint and its (unverified) ONNX export in ``folder``."""
    from neoseg.export.onnx_export import export_onnx
    from neoseg.runtime.model import info_from_checkpoint

    folder = Path(folder)
    ckpt = train_toy(folder / "toy.pt", sessions, slice_size, widths=widths, steps=steps, loss=loss)
    loaded = checkpoint.load(ckpt)
    export_onnx(loaded.model, info_from_checkpoint(loaded), folder / "toy.onnx")
    return ckpt, folder / "toy.onnx"
