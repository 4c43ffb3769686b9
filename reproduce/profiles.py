"""The experiment's profiles: its scale and protocol (``equal-epochs``, ``equal-steps``, ``paper``).
``paper`` is the same protocol as ``neoseg-train --profile paper`` (tests/test_experiments.py checks
it); the others have names of their own, as they are not ``neoseg-train``'s ``cpu`` profile."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """Scale and protocol of the experiment. Epochs over each run's own training set set the budget
    (the paper's protocol), unless ``steps_per_epoch`` is set: then a model trained on 1 subject and
    one trained on 40 get the same number of optimizer steps (the ``equal-steps`` ablation)."""

    name: str
    protocol: str  # one line for the report
    cohort_subjects: int
    cohort_grid: int
    slice_size: dict  # per model
    widths: list[int]
    batch_size: int
    epochs: dict  # per model
    steps_per_epoch: int | None
    patience: int
    lr: float = 5e-3
    prior_bias: bool = False
    max_minutes: float | None = None  # per run: a safety cap on a loaded machine (the runs record their epochs)
    deadline_minutes: float | None = None  # start no run after this long; the report lists what is left
    fractions: tuple[float, ...] = (0.02, 0.05, 0.10)
    draws: int = 5
    workers: int = 1
    threads: int | None = None
    extra_observed: bool = True  # IUC with reduction=observed at 2 %, the named option of docs/method.md
    extra_budget: int | None = None  # IUC at 2 % once more with this many times the steps
    fewer_draws: dict = field(default_factory=dict)  # "segformer" / "budget": draws for those runs, if fewer
    grid: str = "full"  # headline: 2 % supervised / semi / IUC + the 100 % reference; full: Tables 1-3
    cohort_anatomy: str = "v1"  # the built-in cohort's generator: the committed report was measured on v1
    spacing: float | None = None  # voxel size (mm) every scan is resampled to; None: each scan's own
    notes: list[str] = field(default_factory=list)


EQUAL_EPOCHS = ("equal epochs: every model trains for at most the same number of epochs over its own training set, "
                "with early stopping on the validation loss; the best-validation weights are kept")

PROFILES = {
    "equal-epochs": Profile(
        name="equal-epochs", protocol=EQUAL_EPOCHS, cohort_subjects=40, cohort_grid=64,
        slice_size={"unet": 64, "segformer": 64}, widths=[8, 16, 32, 64, 128], batch_size=16,
        epochs={"unet": 150, "segformer": 150}, steps_per_epoch=None, patience=8, prior_bias=True,
        draws=3, workers=2, threads=1, grid="headline",
        notes=["built-in cohort of 40 subjects (52 sessions; 32 training, 4 validation, 4 test subjects) on a "
               "64^3 grid of 2 mm voxels, instead of ~250 subjects at 256^3 of 0.5 mm; 2 % of 32 training "
               "subjects is 1 subject (the paper: 4 of about 200)",
               "2D sagittal slices of 64^2 (the paper: 256^2); U-Net widths 8-16-32-64-128 (half the paper's)",
               "Adam 5e-3 and batch 16 (the paper: batch 32); at most 150 epochs with early stopping after 8 "
               "epochs without a lower validation loss (the paper: 200 and 30), the same for every model over "
               "its own training set: the supervised model's epoch is the fully labelled subject's slices, an "
               "IUC epoch every training slice",
               "the semi-supervised fine-tuning gets the same epoch budget again, starting from the supervised "
               "model",
               "output biases start at the training labels' log prior odds (`prior_bias`, not in the paper; the "
               "same for every model); a child's prior is p(parent) x p(child | parent), the latter from the "
               "fully labelled slices",
               "3 draws of the fully labelled subject (the paper: 5); the full grid (`--grid full`) adds "
               "5 % and 10 %, HUC, WEIGHT, WNORM and SegFormer-B0 under the same protocol"]),
    "equal-steps": Profile(
        name="equal-steps", protocol="equal steps: every run gets the same number of optimizer steps, whatever "
                                     "the size of its training set (an ablation, not the paper's protocol)",
        cohort_subjects=40, cohort_grid=32, slice_size={"unet": 32, "segformer": 32},
        widths=[8, 16, 32, 64], batch_size=8, epochs={"unet": 10, "segformer": 6}, steps_per_epoch=50,
        patience=10, prior_bias=True, max_minutes=2.0, deadline_minutes=38.0, extra_budget=16,
        fewer_draws={"segformer": 3, "budget": 3}, workers=2, threads=1,
        notes=["built-in cohort of 40 subjects (52 sessions; 32 training, 4 validation, 4 test subjects) on a "
               "32^3 grid of 4 mm voxels, instead of ~250 subjects at 256^3 of 0.5 mm",
               "2D slices of 32^2 along the sagittal axis, as the prototype but at 1/8 of the resolution",
               "U-Net widths 8-16-32-64 (4 levels, 0.12 M parameters) instead of 16-32-64-128-256",
               "every U-Net run: 10 epochs of 50 batches of 8 slices (500 Adam steps, lr 5e-3), whatever the "
               "number of training subjects; every SegFormer-B0 run: 6 such epochs (300 steps); the epoch of "
               "the lowest validation loss is kept; no early stopping (the paper: up to 200 epochs, patience 30)",
               "the semi-supervised fine-tuning gets the same number of steps again, starting from the "
               "supervised model",
               "output biases start at the training labels' log prior odds (`prior_bias`, not in the paper; "
               "without it, 1500 steps do not learn DGM even with 100 % labels); a child's prior is "
               "p(parent) x p(child | parent), the latter from the fully labelled slices",
               "SegFormer-B0 with 3 draws of the fully labelled subjects per fraction instead of 5",
               "extra rows beyond the paper: IUC with reduction=observed at 2 % (5 draws), and IUC at 2 % with "
               "16x the steps (8000; 3 draws): about as many passes over the fully labelled slices as the "
               "supervised model makes, which is what the paper's equal-epochs protocol gives",
               "a run stops after 2 min of training (x16 for the 16x runs; a guard for a loaded machine; the epochs "
               "each run trained are in its metrics.csv); no run is started after 38 min"]),
    "paper": Profile(
        name="paper", protocol=EQUAL_EPOCHS, cohort_subjects=250, cohort_grid=256, slice_size={"unet": 256, "segformer": 256},
        widths=[16, 32, 64, 128, 256], batch_size=32, epochs={"unet": 200, "segformer": 200}, steps_per_epoch=None,
        patience=30, workers=1, cohort_anatomy="v2", spacing=0.5,
        notes=["the paper's protocol: 250 subjects (200 training: 2 % = 4 fully labelled), 256^3 volumes at "
               "0.5 mm, 256^2 slices, U-Net 16-32-64-128-256, Adam 5e-3, batch 32, up to 200 epochs with early "
               "stopping (patience 30) on the validation loss, no augmentation; the same as `neoseg-train --profile "
               "paper`"]),
}
RENAMED = {"cpu": "equal-epochs"}  # experiment folders made before the rename record the old name
