"""Model registry: ``create_model(name, **kwargs)``."""

from __future__ import annotations

from torch import nn

from neoseg.train.config import MODELS


def create_model(name: str, in_channels: int = 1, num_classes: int = 11, **kwargs) -> nn.Module:
    """Build a segmentation network that maps (N, in_channels, H, W) to (N, num_classes, H, W) logits."""
    if name == "unet":
        from .unet import UNet
        return UNet(in_channels, num_classes, **kwargs)
    if name == "segformer":
        from .segformer import SegFormer
        return SegFormer(in_channels, num_classes, **kwargs)
    raise ValueError(f"unknown model '{name}'; available: {', '.join(MODELS)}")


def input_divisor(model: nn.Module) -> int:
    """Slice sizes must be multiples of this."""
    return getattr(model, "divisor", 32)
