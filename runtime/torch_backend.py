"""Optional PyTorch backend for machines with torch but no TensorRT: a training checkpoint,
BatchNorm folded into the convolutions, FP16 channels-last on CUDA with the whole batch replayed
as one captured CUDA graph. torch is imported here only, when this backend is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import Backend, BackendUnavailable
from .model import info_from_checkpoint


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


class TorchBackend(Backend):
    """``device`` 'cuda' (``precision`` fp16 by default, or fp32; CUDA graphs) or 'cpu' (fp32 by
    default, or bf16 where oneDNN has BF16 kernels for the CPU)."""

    def __init__(self, path: Path, device: str = "cuda", precision: str | None = None, cuda_graphs: bool = True):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("torch is not installed: pip install 'neoseg[train]' "
                                     "('neoseg[train-gpu]' where neoseg was installed with the gpu extra)") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA GPU")
        from neoseg.train import checkpoint

        self.torch = torch
        loaded = checkpoint.load(path)
        self.info = info_from_checkpoint(loaded)
        self.device = torch.device(device)
        precision = precision if precision not in (None, "auto") else ("fp16" if device == "cuda" else "fp32")
        runs = ("fp16", "fp32") if device == "cuda" else ("fp32", "bf16") if torch.ops.mkldnn._is_mkldnn_bf16_supported() \
            else ("fp32",)
        if precision not in runs:
            raise BackendUnavailable(f"torch-{device} runs {', '.join(runs)} here, not {precision}"
                                     + ("; BF16 needs a CPU with AVX-512" if precision == "bf16" else ""))
        self.precision = precision
        self.dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        self.model = fold_batchnorm(loaded.model.eval()).to(self.device, self.dtype,
                                                            memory_format=torch.channels_last)
        self.graphs = cuda_graphs and device == "cuda"
        self._captured: dict[tuple, tuple] = {}
        self._decode = None  # device tensors for run_decoded, made on first use
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
            self.batch = 256
            self.fixed_size = self.info.slice_size  # one captured shape per batch size
        else:
            self.batch = 8
        self.name = (f"torch {torch.__version__} {device} {precision} channels-last"
                     + (" cuda-graph" if self.graphs else ""))

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
        t = t.to(self.dtype).contiguous(memory_format=torch.channels_last)
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
                memory_format=torch.channels_last)
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
