"""One resolved configuration per run, written beside the checkpoint and into exported models."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from neoseg.core.thresholds import check_thresholds

PROFILES = ("cpu", "paper")
MODELS = ("unet", "segformer")  # train/models
LOSSES = ("bce", "iuc", "huc", "weight", "wnorm", "labelset")  # train/losses.py
SOFTMAX_LOSSES = ("labelset",)  # losses of the softmax (exclusive-leaf) head
REDUCTIONS = ("mean", "observed")
SELECTIONS = ("val-loss", "child-dice")
AUGMENT_POLICIES = ("standard", "none", "contrast")  # train/augment.py
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # train/precision.py
ATLAS_MODES = ("none", "propagate", "pairs", "both", "auto")  # train/atlas.py; auto: train/recipes.py


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # dHCP-layout root; None = the built-in synthetic cohort
    cohort_subjects: int = 40  # built-in cohort only
    cohort_grid: int = 64  # built-in cohort only: voxels per side over a 128 mm field of view
    cohort_seed: int = 0
    cohort_anatomy: str = "v2"  # built-in cohort only: "v2" (realistic) or "v1" (the first generator)
    cache: str | None = None  # slice-stack cache folder; None = <out>/cache
    hierarchy: str = "dhcp-drawem9"  # built-in name or JSON file
    thresholds: float | list[float] = 0.5  # on the sigmoid probability, one or one per channel, in
    # [1e-6, 1 - 1e-6]: the test evaluation's, and neoseg-eval's and neoseg-export's default
    full_fraction: float = 0.1  # training subjects kept fully labelled; the rest are coarsened
    draw: int = 0  # which random draw of fully labelled subjects
    axis: int = 0  # slice axis of the canonical (RAS+) volume; 0 = sagittal, as the prototype
    slice_size: int = 64  # slices are cropped/padded to slice_size^2 around the head
    spacing: list[float] | None = None  # voxel size (mm, canonical x, y, z) every scan is resampled to
    # before slicing; the model stores it and neoseg-infer resamples to it. None (runs made before
    # resampling existed): each scan's own, the model storing the median
    # model
    model: str = "unet"
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    # optimisation
    loss: str = "iuc"
    reduction: str = "mean"
    dice_weight: float = 1.0  # labelset only: weight of the leaf Dice term beside the cross-entropy
    self_training: bool = False  # EMA teacher fills in unknown children (train/selftrain.py)
    self_train_after: int | None = None  # epochs of the plain loss before the teacher's pseudo labels are
    # used; None: once the plain loss has plateaued (early stopping would end the run), from its best weights
    ema_decay: float = 0.99
    weight_ema: float = 0.0  # >0: validate, select and save an EMA of the weights (decay per step); 0: as trained
    confidence: float = 0.9  # share of the parent's probability the teacher's child needs
    select: str = "val-loss"  # best epoch and early stopping by: val-loss (the paper) | child-dice (mean
    # validation Dice of the channels that have a parent, on the fully labelled validation subjects)
    lr: float = 5e-3
    batch_size: int = 16
    epochs: int = 12
    patience: int = 30
    max_minutes: float | None = None  # stop training (keeping the best weights) after this long
    steps_per_epoch: int | None = None  # None: an epoch is one pass over the slices; N: N batches
    # (drawn from fresh shuffles), so runs on 1 or 40 subjects get the same number of optimizer steps
    full_share: float = 0.0  # share of every batch's slices drawn from the fully labelled sessions (oversampled;
    # an epoch stays one pass over the partially labelled ones; train/sampling.py); 0: one plain shuffle of all
    train_subjects: list[str] | None = None  # restrict training to these subjects (supervised baseline)
    prior_bias: bool = False  # start the output biases at each channel's log prior odds in the training
    # targets (observed entries), so rare structures are not first pushed to "absent"; not in the paper,
    # it makes short (CPU-scale) trainings learn small structures at all
    init_from: str | None = None  # checkpoint whose weights start the run (fine-tuning), not resumed
    pseudo_labels: str | None = None  # dHCP-layout folder of *_desc-drawem9_dseg.nii.gz label maps for the
    # partially labelled training sessions, used as their full labels (the semi-supervised baseline)
    augment: str = "contrast"  # on-the-fly augmentation of training batches (train/augment.py), or "none"
    synthesis: float = 0.0  # probability per training slice of an image synthesised from its labels
    # (train/synthesis.py); 0 keeps the real images
    synth_labels: str | None = None  # folder of label maps without images, trained on through synthesis only
    atlas: str = "none"  # the fully labelled sessions registered to the partially labelled ones (train/atlas.py):
    # propagate (their children fill in the unknown ones where confident) | pairs (atlas image and labels warped
    # into each scan as extra training sessions) | both | none | auto (where the run trains a partial-label
    # loss on fully and partially labelled sessions: pairs, or propagate where one fully labelled subject
    # trains one model (members 1); else none; resolved before config.json is written)
    atlas_confidence: float = 0.7  # propagate: share of the parent a fused atlas child needs to be written
    atlas_per_target: int = 3  # fully labelled sessions registered to each partially labelled one: the nearest
    # in scan age (train/atlas_plan.py); all of them where there are no more
    atlas_warps: list[str] = field(default_factory=lambda: ["regular"])  # the registrations each atlas gets
    # (core/registration.py WARPS), all fused per voxel
    atlas_resolution: float = 1.0  # mm: finer scans are registered on coarser pyramid levels, the transform
    # applied at their own voxel size (core/registration.py)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA) | auto: the forward pass under autocast, weights
    # and checkpoints FP32 (train/precision.py)
    members: int | str = 1  # models trained on one split with seeds seed, seed+1, ... and used as one (their
    # mean probability; train/members.py) | auto: 3 where the run trains a partial-label loss on one fully
    # labelled subject beside partially labelled ones, else 1 (train/recipes.py; resolved before config.json)
    seed: int = 0
    split_seed: int | None = None  # the train/validation/test split's own seed; None: ``seed``
    device: str = "auto"

    def __post_init__(self):
        check_thresholds(self.thresholds, what="config thresholds")
        if self.spacing is not None:
            if isinstance(self.spacing, (int, float)):
                self.spacing = [float(self.spacing)] * 3
            self.spacing = [float(z) for z in self.spacing]
            if len(self.spacing) == 1:
                self.spacing = self.spacing * 3
            if len(self.spacing) != 3 or not all(0 < z <= 10 for z in self.spacing):
                raise ValueError(f"--spacing must be one voxel size or three (x,y,z), each in (0, 10] mm; got "
                                 f"{self.spacing}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown training precision '{self.precision}'; available: {', '.join(PRECISIONS)}")
        if self.augment == "default":  # the standard policy's name before `contrast` became the default
            self.augment = "standard"
        if self.augment not in AUGMENT_POLICIES:
            raise ValueError(f"unknown augmentation policy '{self.augment}'; available: {', '.join(AUGMENT_POLICIES)}")
        if not 0 <= self.synthesis <= 1:
            raise ValueError(f"synthesis is a probability per slice, in [0, 1]; got {self.synthesis}")
        if self.synth_labels is not None and self.synthesis <= 0:
            raise ValueError("label maps without images (synth_labels) train only through synthesis; "
                             "pass a synthesis probability above 0 (e.g. --synthesis 0.5)")
        if not 0 <= self.full_share < 1:
            raise ValueError(f"full_share is the share of each batch drawn from fully labelled slices, in [0, 1); "
                             f"got {self.full_share}")
        if self.full_share > 0 and self.batch_size < 2:
            raise ValueError(f"full_share mixes fully and partially labelled slices in each batch, which needs a batch "
                             f"size of at least 2; got {self.batch_size} (pass e.g. --batch-size 16)")
        self._check_atlas()
        self._check_weight_ema()
        if self.members != "auto" and (isinstance(self.members, bool) or not isinstance(self.members, int)
                                       or not 1 <= self.members <= 16):
            raise ValueError(f"--members is how many models to train and use as one, 1 to 16, or auto; got "
                             f"{self.members!r}")
        if self.select not in SELECTIONS:
            raise ValueError(f"unknown model selection '{self.select}'; available: {', '.join(SELECTIONS)}")
        if self.self_training and self.loss == "bce":
            raise ValueError("self-training completes unknown children, but loss bce has none; use it with a "
                             "partial-label loss (iuc, huc, weight, wnorm, labelset)")
        if self.self_training and not (0.5 <= self.confidence < 1 and 0 < self.ema_decay < 1):
            raise ValueError(f"self-training needs confidence in [0.5, 1) and EMA decay in (0, 1), got "
                             f"{self.confidence} and {self.ema_decay}")

    def _check_weight_ema(self) -> None:
        if isinstance(self.weight_ema, bool) or not isinstance(self.weight_ema, (int, float)) \
                or not 0 <= self.weight_ema < 1:
            raise ValueError(f"--weight-ema is the average's decay per training step, in [0, 1) (0: off; e.g. "
                             f"0.995); got {self.weight_ema!r}")

    def _check_atlas(self) -> None:
        if self.atlas not in ATLAS_MODES:
            raise ValueError(f"unknown --atlas '{self.atlas}'; available: {', '.join(ATLAS_MODES)}")
        if not 0.5 <= self.atlas_confidence <= 1:
            raise ValueError(f"--atlas-confidence is a share of the parent, in [0.5, 1]; got {self.atlas_confidence}")
        if isinstance(self.atlas_per_target, bool) or not isinstance(self.atlas_per_target, int) \
                or self.atlas_per_target < 1:
            raise ValueError(f"--atlas-per-target is how many atlases each partially labelled session gets, at "
                             f"least 1; got {self.atlas_per_target!r}")
        from neoseg.core.registration import parse_warps

        self.atlas_warps = parse_warps(self.atlas_warps)
        if isinstance(self.atlas_resolution, bool) or not isinstance(self.atlas_resolution, (int, float)) \
                or not 0 < self.atlas_resolution <= 16:
            raise ValueError(f"--atlas-resolution is the registration's finest voxel size in mm, above 0 and at "
                             f"most 16; got {self.atlas_resolution!r} (for full resolution pass the scans' voxel "
                             f"size, e.g. 0.5)")
        if self.atlas in ("propagate", "both") and self.loss == "bce":
            raise ValueError(f"--atlas {self.atlas} writes partial label maps (children unknown where the atlases "
                             f"are not confident), which loss bce cannot train on; use a partial-label loss (iuc, "
                             f"labelset) or --atlas pairs")
        if self.atlas in ("propagate", "both") and self.pseudo_labels is not None:
            raise ValueError(f"--atlas {self.atlas} and pseudo_labels both replace the partial label maps; use one")

    @property
    def head(self) -> str:
        """sigmoid (one logit per channel) or softmax (one per leaf) for the label-set losses."""
        return "softmax" if self.loss in SOFTMAX_LOSSES else "sigmoid"

    @classmethod
    def profile(cls, name: str, **overrides) -> "TrainConfig":
        """``cpu``: minutes on 2 cores: the 64^3 cohort, 64^2 slices, a half-width U-Net
        (8-16-32-64-128), up to 40 epochs, output biases at the labels' prior odds, training
        stopped after 7.5 minutes at the latest (the atlas registrations before it are not counted:
        about 4 more minutes for the demo on 2 cores), and the
        forward pass in BF16 where the CPU has BF16 units (``auto``: as good per epoch, and more
        epochs fit; docs/training.md, "Mixed precision"), ``--atlas auto``: where fully and partially
        labelled sessions train together, the atlas-to-scan pairs (atlas propagation where one fully
        labelled subject trains one model), and ``--members auto``: three such models as one with one
        fully labelled subject (the recipes that won on the worst draw, docs/atlas.md).
        ``paper``: the paper's protocol, docs/method.md section 6, the same as the experiment runner's
        ``paper`` profile (reproduce/profiles.py): 250 subjects (200 for training) at 256^3 of 0.5 mm,
        256^2 slices at 0.5 mm, the U-Net of widths 16-32-64-128-256, Adam 5e-3, batch 32, up to 200
        epochs with early stopping (patience 30), no augmentation, FP32, no time budget."""
        if name not in PROFILES:
            raise ValueError(f"unknown profile '{name}'; available: {', '.join(PROFILES)}")
        if name == "cpu":
            base = cls(widths=[8, 16, 32, 64, 128], epochs=40, max_minutes=7.5, prior_bias=True, precision="auto",
                       spacing=[2.0, 2.0, 2.0], atlas="auto", members="auto")
        else:
            base = cls(cohort_subjects=250, cohort_grid=256, slice_size=256, epochs=200, patience=30, batch_size=32,
                       spacing=[0.5, 0.5, 0.5], augment="none")
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def cohort_spec(self):
        """The built-in synthetic cohort's :class:`~neoseg.data.synth.CohortSpec` (used when ``data`` is None)."""
        from neoseg.data.synth import CohortSpec

        return CohortSpec(n_subjects=self.cohort_subjects, grid=self.cohort_grid, seed=self.cohort_seed,
                          anatomy=self.cohort_anatomy)

    def model_kwargs(self) -> dict:
        return {"widths": list(self.widths)} if self.model == "unet" else {}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}; was it written by a newer neoseg?")
        raw.setdefault("augment", "none")  # runs written before augmentation existed trained without it
        raw.setdefault("cohort_anatomy", "v1")  # written before anatomy v2: trained on the first cohort
        raw.setdefault("precision", "fp32")  # written before mixed precision: trained in FP32
        raw.setdefault("spacing", None)  # written before resampling: each scan at its own spacing
        raw.setdefault("atlas", "none")  # written before the atlas recipes: none
        raw.setdefault("atlas_warps", ["regular"])  # written before --atlas-warps: the regular registration only
        return cls(**raw)

    @property
    def split_seed_used(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def dataset_sessions(config: TrainConfig, progress: bool = False, hierarchy=None) -> list:
    """The sessions of ``config.data`` (with a label map, or else masks of the hierarchy's
    structures), or of the built-in synthetic cohort (generated once, then reused). ``hierarchy``:
    a model's own (None: ``config.hierarchy``'s, read again)."""
    from neoseg.core.hierarchy import resolve
    from neoseg.core.partial import mask_names
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.synth import cohort_sessions

    if config.data is None:
        return cohort_sessions(config.cohort_spec(), progress)
    return find_sessions(config.data, mask_names=mask_names(hierarchy or resolve(config.hierarchy)))
