"""What a model file says about itself: everything inference needs besides the weights.

Stored as JSON strings in the ONNX model's ``metadata_props`` (and in a TensorRT engine's header),
read back through ONNX Runtime's ``custom_metadata_map``, so the runtime needs neither torch nor
the ``onnx`` package.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.thresholds import check_thresholds

from .precision import ParityRecord

FORMAT = "neoseg-onnx/1"
HEADS = ("sigmoid", "softmax")
INPUT, OUTPUT = "image", "logits"  # graph tensor names: (N, 1, H, W) float32 -> (N, C, H, W) logits


@dataclass(frozen=True)
class ModelInfo:
    """Label hierarchy, decoding thresholds and slicing geometry of an exported network."""

    hierarchy: Hierarchy
    thresholds: tuple[float, ...]  # one per channel, on the sigmoid probability
    axis: int  # slice axis of the canonical (RAS+) volume
    slice_size: int  # slices are cropped/padded to slice_size^2 around the head
    divisor: int  # in-plane sizes the network accepts are multiples of this
    spacing: tuple[float, float, float]  # canonical voxel size (mm) the model was trained at
    architecture: str
    version: str  # neoseg version that exported the model
    config_digest: str
    config: str = "{}"  # the resolved training config, JSON
    scaling: str = "minmax"  # per-volume intensity scaling to [0, 1]
    head_fraction: float = 0.1  # foreground = brighter than this fraction of the robust range
    flexible: bool = False  # the graph takes any in-plane size divisible by ``divisor`` (U-Net)
    reduced_precision: str = "{}"  # JSON: per reduced precision, its measured agreement with FP32
    int8: str = "{}"  # JSON: the INT8 OpenVINO model beside the .onnx, {"xml": file name, "sha256": of xml + bin}
    bf16: str = "{}"  # JSON: the BF16 OpenVINO model beside it, as int8 plus "fp32": its layers kept in FP32;
    # "{}": BF16 runs the .onnx itself
    head: str = "sigmoid"  # the network's own head: sigmoid (a logit per channel) or softmax (over the
    # leaves; the graph ends by deriving every channel's logit from them, so decoding is the same)

    @property
    def parity_records(self) -> dict[str, ParityRecord]:
        """The reduced-precision parity measured at export (``neoseg.runtime.precision``)."""
        return {k: ParityRecord(**v) for k, v in json.loads(self.reduced_precision).items()}

    def __post_init__(self):
        if len(self.thresholds) != len(self.hierarchy):
            raise ValueError(f"model metadata: {len(self.thresholds)} thresholds for {len(self.hierarchy)} "
                             f"channels ({', '.join(self.hierarchy.names)}); give one per channel")
        check_thresholds(self.thresholds, self.hierarchy.names, "model metadata")
        if self.axis not in (0, 1, 2) or self.slice_size % self.divisor:
            raise ValueError(f"model metadata: slice axis {self.axis} / size {self.slice_size} / divisor "
                             f"{self.divisor} are inconsistent")
        if self.head not in HEADS:
            raise ValueError(f"model metadata: unknown head '{self.head}' (this neoseg knows {', '.join(HEADS)}); "
                             f"upgrade neoseg")
        if self.scaling != "minmax":
            raise ValueError(f"model metadata: unknown intensity scaling '{self.scaling}' (this neoseg knows "
                             f"'minmax'); upgrade neoseg")

    @property
    def logit_thresholds(self) -> np.ndarray:
        """sigmoid(x) >= t  <=>  x >= log(t / (1 - t)): decoding needs no sigmoid."""
        t = np.asarray(self.thresholds, np.float64)
        with np.errstate(divide="ignore"):
            return (np.log(t) - np.log1p(-t)).astype(np.float32)

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        preprocess = {"scaling": self.scaling, "head_fraction": self.head_fraction, "orientation": "RAS",
                      "axis": self.axis, "slice_size": self.slice_size, "divisor": self.divisor,
                      "spacing": list(self.spacing), "flexible": self.flexible}
        return {
            "neoseg.format": FORMAT,
            "neoseg.hierarchy": self.hierarchy.to_json(),
            "neoseg.thresholds": json.dumps(list(self.thresholds)),
            "neoseg.preprocess": json.dumps(preprocess),
            "neoseg.output": json.dumps({"input": INPUT, "output": OUTPUT, "activation": "sigmoid", "head": self.head,
                                         **({"leaves": [self.hierarchy.names[i] for i in self.hierarchy.leaves]}
                                            if self.head == "softmax" else {})}),
            "neoseg.architecture": self.architecture,
            "neoseg.version": self.version,
            "neoseg.config_digest": self.config_digest,
            "neoseg.config": self.config,
            "neoseg.reduced_precision": self.reduced_precision,
            "neoseg.int8": self.int8,
            "neoseg.bf16": self.bf16,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> "ModelInfo":
        if meta.get("neoseg.format") != FORMAT:
            found = meta.get("neoseg.format", "no neoseg metadata")
            raise ValueError(f"{source} is not a neoseg model ({found}; expected {FORMAT}); "
                             f"export one with neoseg-export CHECKPOINT -o model.onnx")
        try:
            pre = json.loads(meta["neoseg.preprocess"])
            output = json.loads(meta.get("neoseg.output", "{}"))
            info = cls(hierarchy=Hierarchy.from_json(meta["neoseg.hierarchy"]),
                       thresholds=tuple(float(t) for t in json.loads(meta["neoseg.thresholds"])),
                       axis=int(pre["axis"]), slice_size=int(pre["slice_size"]), divisor=int(pre["divisor"]),
                       spacing=tuple(float(s) for s in pre["spacing"]), architecture=meta["neoseg.architecture"],
                       version=meta["neoseg.version"], config_digest=meta["neoseg.config_digest"],
                       config=meta.get("neoseg.config", "{}"), scaling=pre["scaling"],
                       head_fraction=float(pre["head_fraction"]), flexible=bool(pre.get("flexible", False)),
                       reduced_precision=meta.get("neoseg.reduced_precision", "{}"),
                       int8=meta.get("neoseg.int8", "{}"), bf16=meta.get("neoseg.bf16", "{}"),
                       head=str(output.get("head", "sigmoid")))
            info.parity_records  # noqa: B018 - validates the record
            json.loads(info.int8), json.loads(info.bf16)
            return info
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{source}: incomplete neoseg metadata ({type(e).__name__}: {e}); re-export it") from None
        except ValueError as e:
            raise ValueError(f"{source}: {e}; re-export the model with neoseg-export") from None


def parse_thresholds(text: str | None, n: int, default: float = 0.5) -> tuple[float, ...]:
    """'0.5' (all channels) or '0.5,0.4,...' (one per channel) -> n thresholds."""
    if text is None:
        return (default,) * n
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"thresholds '{text}': expected one number or {n} comma-separated numbers") from None
    if len(values) == 1:
        values *= n
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise ValueError(f"thresholds '{text}': expected one number or {n} comma-separated numbers")
    return check_thresholds(values, what=f"thresholds '{text}'")


def info_from_checkpoint(loaded, thresholds: tuple[float, ...] | None = None) -> ModelInfo:
    """The metadata of a loaded training checkpoint (``neoseg.train.checkpoint.Loaded``), or of an
    ensemble of them (``neoseg.train.ensemble``: its state names its architecture, digest and head;
    its config is the first member's); thresholds default to those stored in the checkpoint, else
    its training config's."""
    from neoseg.core.version import neoseg_version

    config, hierarchy = loaded.config, loaded.hierarchy
    if thresholds is None:
        thresholds = loaded.state.get("thresholds", config.thresholds)
    return ModelInfo(hierarchy=hierarchy, thresholds=check_thresholds(thresholds, hierarchy.names, "thresholds"),
                     axis=config.axis, slice_size=config.slice_size, divisor=int(getattr(loaded.model, "divisor", 32)),
                     spacing=tuple(float(s) for s in loaded.spacing),
                     architecture=loaded.state.get("architecture", config.model), version=neoseg_version(),
                     config_digest=loaded.state.get("config_digest", config.digest()), config=config.to_json(),
                     flexible=config.model == "unet", head=loaded.state.get("head", config.head))
