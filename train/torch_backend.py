"""The runtime's PyTorch backends, which live with the training code they need.

``torch-cpu`` / ``torch-cuda`` (``neoseg-infer -m best.pt``) open a training checkpoint, BatchNorm
folded into the convolutions, channels-last, FP16 on CUDA with the whole batch replayed as one
captured CUDA graph; importing this module makes :func:`neoseg.runtime.backends.open_backend`
offer them. :meth:`TorchBackend.plain` wraps an in-memory model as it is (FP32), so training's
evaluation decodes volumes through the runtime's :class:`~neoseg.runtime.pipeline.Segmenter`
like ``neoseg-infer`` does. torch is imported when a backend is opened, not with this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neoseg.runtime import backends
from neoseg.runtime.backend import Backend, BackendUnavailable
from neoseg.runtime.model import ModelInfo, info_from_checkpoint

TORCH_MISSING = ("torch is not installed: pip install -e '.[train]' in the neoseg checkout "
                 "('.[train-gpu]' where neoseg was installed with the gpu extra)")


def fold_batchnorm(model):
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in a Sequential into it."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return model


def open_checkpoint(path: Path, backend: str = "torch-cuda", threads: int | None = None,
                    precision: str | None = None) -> "TorchBackend":
    """``backend`` torch-cuda (``precision`` fp16 by default, or fp32; CUDA graphs) or torch-cpu
    (fp32 by default, or bf16 where oneDNN has BF16 kernels for the CPU). ``threads`` is not used:
    torch sizes its own thread pool."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(TORCH_MISSING) from None
    device = backend.removeprefix("torch-")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("torch sees no CUDA GPU")
    from . import checkpoint

    loaded = checkpoint.load(path)
    precision = precision if precision not in (None, "auto") else ("fp16" if device == "cuda" else "fp32")
    runs = ("fp16", "fp32") if device == "cuda" else ("fp32", "bf16") if torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else ("fp32",)
    if precision not in runs:
        raise BackendUnavailable(f"torch-{device} runs {', '.join(runs)} here, not {precision}"
                                 + ("; BF16 needs a CPU with AVX-512" if precision == "bf16" else ""))
    return TorchBackend(fold_batchnorm(loaded.model.eval()), info_from_checkpoint(loaded), device, precision,
                        fast=True)


class TorchBackend(Backend):
    """A torch module (one logit per hierarchy channel) on ``device`` in ``precision``. ``fast``:
    channels-last memory and, on CUDA, one captured CUDA graph per input shape (the batch is then
    fixed at 256 slices of the model's size). Moves ``model`` to the device and dtype in place."""

    def __init__(self, model, info: ModelInfo, device: str = "cpu", precision: str = "fp32", fast: bool = False,
                 batch: int | None = None):
        import torch

        self.torch, self.info, self.precision = torch, info, precision
        self.device = torch.device(device)
        self.dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        self.memory_format = torch.channels_last if fast else torch.contiguous_format
        self.model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)
        self.graphs = fast and self.device.type == "cuda"
        self._captured: dict[tuple, tuple] = {}
        self._decode = None  # device tensors for run_decoded, made on first use
        if fast and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.fixed_size = info.slice_size  # one captured shape per batch size
        self.batch = batch or (256 if self.device.type == "cuda" else 8)
        self.name = (f"torch {torch.__version__} {self.device.type} {precision}" + (" channels-last" if fast else "")
                     + (" cuda-graph" if self.graphs else ""))

    @classmethod
    def plain(cls, model, info: ModelInfo, device="cpu", batch: int = 32) -> "TorchBackend":
        """``model`` as it is, in FP32 and standard memory layout (as trained and validated)."""
        return cls(model, info, str(device), "fp32", fast=False, batch=batch)

    def _forward(self, x):
        return self.model(x).float()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self._logits(x).cpu().numpy()

    def run_decoded(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Thresholds and the hierarchy's label decoding on the device, so only uint8 (or uint16) labels
        (N, H, W) and masks (N, C, H, W) cross back to the host (12 bytes a voxel fewer than
        float32 logits). Same rules as ``Hierarchy.to_labels`` and ``Hierarchy.masks``."""
        torch = self.torch
        with torch.inference_mode():
            logits = self._logits(x)
            if self._decode is None:
                h = self.info.hierarchy
                self._decode = (torch.tensor(self.info.logit_thresholds, device=self.device).view(1, -1, 1, 1),
                                torch.tensor([c.value or 0 for c in h.channels], device=self.device),
                                [(p, torch.tensor(k, device=self.device)) for p, k in h.sibling_groups],
                                torch.tensor(h.roots, device=self.device))
            thresholds, values, groups, roots = self._decode
            masks = (logits >= thresholds).to(torch.uint8)
            node = roots[logits.index_select(1, roots).argmax(1)]
            for parent, kids in groups:
                node = torch.where(node == parent, kids[logits.index_select(1, kids).argmax(1)], node)
            labels = values[node].to(torch.uint8 if int(values.max()) <= 255 else torch.int32)
            return labels.cpu().numpy().astype(self.info.hierarchy.label_dtype, copy=False), masks.cpu().numpy()

    def _logits(self, x: np.ndarray):
        torch = self.torch
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, non_blocking=True)
        t = t.to(self.dtype).contiguous(memory_format=self.memory_format)
        if not self.graphs:
            return self._forward(t)
        n = len(t)
        shape = (max(n, self.batch),) + tuple(t.shape[1:])
        graph, static_in, static_out = self._capture(shape)
        static_in[:n].copy_(t)
        graph.replay()
        return static_out[:n]

    def _capture(self, shape: tuple):
        """One CUDA graph per input shape; the tail batch is padded into it."""
        if shape not in self._captured:
            torch = self.torch
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
                memory_format=self.memory_format)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # cuDNN picks its algorithms outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._captured[shape] = (graph, static_in, static_out)
        return self._captured[shape]


backends.provide(("torch-cuda", "torch-cpu"), open_checkpoint)
