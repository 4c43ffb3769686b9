"""Checkpoints that load without executing pickled code (``torch.load(weights_only=True)``):
tensors, numbers and strings only; the config and hierarchy travel as JSON text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.io import atomic_path

from .config import TrainConfig
from .heads import channel_model, output_channels
from .models import create_model

FORMAT = "neoseg-checkpoint/1"


class NotACheckpoint(ValueError):
    """A file :func:`load` cannot read as a neoseg checkpoint (``path``: the file)."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


@dataclass
class Loaded:
    model: nn.Module  # one logit per hierarchy channel, whatever the head (see .heads)
    config: TrainConfig
    hierarchy: Hierarchy
    spacing: tuple[float, float, float]  # voxel size (mm) of the training data
    state: dict  # everything else stored (epoch, optimizer state, ...)
    net: nn.Module  # the network itself (leaf logits for the softmax head); shares weights with model


def save(path: str | Path, model: nn.Module, config: TrainConfig, hierarchy: Hierarchy,
         spacing: tuple[float, ...], **extra) -> None:
    payload = {"format": FORMAT, "model_state": model.state_dict(), "config": config.to_json(),
               "hierarchy": hierarchy.to_json(), "spacing": [float(s) for s in spacing], **extra}
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def load(path: str | Path, map_location: str = "cpu") -> Loaded:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass the best.pt written by neoseg-train")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: not our file
        raise NotACheckpoint(path, f"{path} is not a loadable neoseg checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NotACheckpoint(path, f"{path} is not a neoseg checkpoint (expected format {FORMAT})")
    config = TrainConfig.from_json(payload.pop("config"))
    hierarchy = Hierarchy.from_json(payload.pop("hierarchy"))
    net = create_model(config.model, 1, output_channels(config.head, hierarchy), **config.model_kwargs())
    net.load_state_dict(payload.pop("model_state"))
    model = channel_model(net, config.head, hierarchy).eval()
    return Loaded(model, config, hierarchy, tuple(payload.pop("spacing")), payload, net)
