"""SegFormer-B0 (Xie et al., NeurIPS 2021), written from the paper for single-channel MRI slices.

Mix Transformer encoder (overlapping patch embeddings, efficient self-attention with spatial
reduction, Mix-FFN) and the all-MLP decoder. Built from plain ops only (Linear, Conv2d, matmul,
``torch.softmax``, ``nn.LayerNorm``, bilinear interpolation) so that it exports to ONNX opset 17
and TensorRT; LayerNorm and Softmax stay recognisable nodes (``.../norm*/LayerNormalization``,
``.../attn/Softmax``) that an FP16 engine can pin to FP32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegFormer"]

# Overall output stride of the encoder; inputs must be divisible by it.
_STRIDE = 32


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm: (N, C, H, W) -> (N, H'W', D)."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a sequence shrunk by ``sr_ratio``²."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, length, c = x.shape
        heads = self.num_heads
        # Scale q before the matmul: keeps the scores small, which FP16 engines appreciate.
        q = (self.q(x) * self.scale).reshape(n, length, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = x.transpose(1, 2).reshape(n, c, h, w)
            x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(n, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, length, c)
        return self.proj(out)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear; the conv supplies positional information."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        n, _, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class Stage(nn.Module):
    """Patch embedding, ``depth`` blocks and a final LayerNorm; returns an (N, D, H', W') map."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int, depth: int,
                 num_heads: int, sr_ratio: int, mlp_ratio: int, drop_paths: Sequence[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, kernel_size, stride)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[i]) for i in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class AllMLPDecoder(nn.Module):
    """Per-stage linear to ``dim``, upsample to 1/4, concat, fuse (1x1 conv+BN+ReLU), classify."""

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_dims), dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        maps = []
        for i, (feat, linear) in enumerate(zip(features, self.linears)):
            n, _, h, w = feat.shape
            x = linear(feat.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
            if i > 0:  # the first stage is already at 1/4 resolution
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(x)
        # Deepest first, as in the reference implementation.
        x = self.fuse(torch.cat(maps[::-1], dim=1))
        return self.classifier(self.dropout(x))


class SegFormer(nn.Module):
    """SegFormer (Mix Transformer encoder + all-MLP decoder); the defaults are the B0 variant.

    Args:
        in_channels: channels of the input image (1 for a T2w slice).
        num_classes: output channels, one logit per label (11 for the dHCP hierarchy).
        hidden_sizes: channel width of each of the four encoder stages.
        depths: number of transformer blocks per stage.
        num_heads: attention heads per stage (each must divide the stage's hidden size).
        sr_ratios: spatial-reduction ratio of the keys/values per stage.
        mlp_ratio: hidden expansion of the Mix-FFN.
        decoder_dim: channel width of the all-MLP decoder.
        drop_path: stochastic-depth rate of the last block, rising linearly from 0 over the
            blocks; the decoder's dropout before the classifier uses 0.1, as in the paper.

    Shapes:
        input: (N, in_channels, H, W) float, H and W divisible by 32.
        output: (N, num_classes, H, W) logits (no sigmoid); computed at H/4 x W/4 and upsampled
            bilinearly to the input size.

    Raises:
        ValueError: in ``forward`` when H or W is not divisible by 32; in ``__init__`` when the
            per-stage sequences do not all have four entries or a head count does not divide
            its stage's width.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 11,
                 hidden_sizes: Sequence[int] = (32, 64, 160, 256),
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (1, 2, 5, 8),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), mlp_ratio: int = 4,
                 decoder_dim: int = 256, drop_path: float = 0.1) -> None:
        super().__init__()
        per_stage = {"hidden_sizes": hidden_sizes, "depths": depths, "num_heads": num_heads,
                     "sr_ratios": sr_ratios}
        bad = {k: tuple(v) for k, v in per_stage.items() if len(v) != 4}
        if bad:
            raise ValueError(f"SegFormer has 4 stages; got {bad}. Give one value per stage.")
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        stages, prev = [], in_channels
        for i in range(4):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            start = sum(depths[:i])
            stages.append(Stage(prev, hidden_sizes[i], kernel, stride, depths[i], num_heads[i],
                                sr_ratios[i], mlp_ratio, rates[start:start + depths[i]]))
            prev = hidden_sizes[i]
        self.encoder = nn.ModuleList(stages)
        self.decoder = AllMLPDecoder(hidden_sizes, decoder_dim, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not torch.jit.is_tracing() and (h % _STRIDE or w % _STRIDE):
            new_h = (h + _STRIDE - 1) // _STRIDE * _STRIDE
            new_w = (w + _STRIDE - 1) // _STRIDE * _STRIDE
            raise ValueError(
                f"Wrong input shape height={h}, width={w}. Expected image height and width "
                f"divisible by {_STRIDE}. Pad your images to shape ({new_h}, {new_w}).")
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        logits = self.decoder(features)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


def _init_weights(m: nn.Module) -> None:
    """Initialisation of the reference implementation: truncated-normal linears, He-style convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
