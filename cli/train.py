"""``neoseg-train``: train a segmentation network on the built-in cohort or a dHCP-layout dataset."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import make_app, parse_floats, parse_ints, setup_logging, user_errors

app = make_app()


class Profile(str, Enum):
    cpu = "cpu"
    paper = "paper"


class Anatomy(str, Enum):  # the built-in cohort's generator
    v1 = "v1"
    v2 = "v2"


class Model(str, Enum):
    unet = "unet"
    segformer = "segformer"


class Loss(str, Enum):
    bce = "bce"
    iuc = "iuc"
    huc = "huc"
    weight = "weight"
    wnorm = "wnorm"
    labelset = "labelset"


class Selection(str, Enum):
    val_loss = "val-loss"
    child_dice = "child-dice"


class Augment(str, Enum):
    default = "default"
    none = "none"


class Reduction(str, Enum):
    mean = "mean"
    observed = "observed"


class Precision(str, Enum):  # train/precision.py
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    auto = "auto"


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, config, metrics, evaluation.")],
    profile: Annotated[Profile, typer.Option(help="cpu: minutes on 2 cores, 64^3 cohort. paper: the paper's "
                                             "protocol (256^2 slices, Adam 5e-3, 200 epochs, patience 30).")] = Profile.cpu,
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="dHCP-layout dataset root; default: built-in synthetic cohort.")] = None,
    hierarchy: Annotated[Optional[str], typer.Option(help="Built-in hierarchy name or JSON file.")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="Decision thresholds of the test evaluation (and of "
                                                      "neoseg-eval/-export): one, or one per channel, "
                                                      "comma-separated, in [1e-6, 1 - 1e-6]. Default 0.5.")] = None,
    model: Annotated[Optional[Model], typer.Option(help="Network.")] = None,
    widths: Annotated[Optional[str], typer.Option(help="U-Net widths per level, e.g. 16,32,64,128,256.")] = None,
    loss: Annotated[Optional[Loss], typer.Option(help="Loss; iuc is the paper's method, bce the supervised one, "
                                                 "labelset (marginal cross-entropy + leaf Dice) trains a softmax "
                                                 "head over the hierarchy's leaves.")] = None,
    dice_weight: Annotated[Optional[float], typer.Option(help="labelset: weight of the leaf Dice term (0: marginal "
                                                         "cross-entropy only). Default 1.")] = None,
    self_training: Annotated[Optional[bool], typer.Option("--self-training/--no-self-training",
                                                          help="An EMA teacher fills in the unknown children of "
                                                          "partially labelled scans (any partial-label loss).")] = None,
    self_train_after: Annotated[Optional[int], typer.Option(help="Self-training: epochs before the teacher's "
                                                            "pseudo labels are used. Default: once the plain "
                                                            "loss plateaus, from its best weights.")] = None,
    confidence: Annotated[Optional[float], typer.Option(help="Self-training: share of the parent's probability "
                                                        "the teacher's child needs. Default 0.9.")] = None,
    select: Annotated[Optional[Selection], typer.Option(help="Best epoch and early stopping by the validation loss "
                                                        "(the paper) or by the mean validation Dice of the child "
                                                        "structures.")] = None,
    reduction: Annotated[Optional[Reduction], typer.Option(help="mean: over all entries (paper); "
                                                           "observed: over supervised entries.")] = None,
    full_fraction: Annotated[Optional[float], typer.Option(help="Fraction of training subjects kept fully labelled.")] = None,
    draw: Annotated[Optional[int], typer.Option(help="Random draw of the fully labelled subjects.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience (epochs).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Slices per batch.")] = None,
    slice_size: Annotated[Optional[int], typer.Option(help="Slices are cropped/padded to this size (pixels).")] = None,
    spacing: Annotated[Optional[str], typer.Option(help="Voxel size every scan is resampled to before slicing, "
                                                   "one value or x,y,z in mm (cpu profile 2, paper 0.5); the "
                                                   "model stores it and neoseg-infer uses it.")] = None,
    axis: Annotated[Optional[int], typer.Option(min=0, max=2, help="Slice axis in RAS+ (0 sagittal).")] = None,
    subjects: Annotated[Optional[int], typer.Option(help="Built-in cohort: number of subjects.")] = None,
    grid: Annotated[Optional[int], typer.Option(help="Built-in cohort: voxels per side over 128 mm.")] = None,
    cohort_anatomy: Annotated[Optional[Anatomy], typer.Option(help="Built-in cohort: v2 (default, realistic) or "
                                                              "v1 (the first generator, as the experiment report).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Slice cache folder (default OUT/cache).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop training after this many minutes.")] = None,
    prior_bias: Annotated[Optional[bool], typer.Option("--prior-bias/--no-prior-bias",
                                                       help="Start output biases at the labels' prior odds "
                                                       "(default on in the cpu profile; not in the paper).")] = None,
    augment: Annotated[Optional[Augment], typer.Option(help="Augmentation of the training batches: default "
                                                       "(spatial, intensity, resolution, brain extraction, field "
                                                       "of view; see the README) or none (the paper's protocol).")] = None,
    synthesis: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Train from label maps: the "
                                                       "probability per training slice that its image is replaced by "
                                                       "one synthesised from its labels (random contrast per region, "
                                                       "partial volume, resolution and slice thickness, bias, "
                                                       "motion ghosts, noise; see the README). Default 0: real "
                                                       "images only.")] = None,
    synth_labels: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                         help="Folder of label maps without images (*.nii.gz, "
                                                         "on the training voxel size) added to the training data; "
                                                         "their images are always synthesised. Needs "
                                                         "--synthesis above 0.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split and the training.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="Default: auto with --profile cpu, fp32 with "
                                                           "paper. fp32; bf16: the forward pass in BF16 "
                                                           "(autocast) on a CPU with BF16 units (AVX-512 BF16 or "
                                                           "AMX) or a GPU; fp16: CUDA only, with a gradient "
                                                           "scaler; auto: bf16 where the device has the units, "
                                                           "else fp32. Weights and checkpoints stay FP32.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train on the built-in synthetic cohort (default) or --data, then evaluate on the test subjects."""
    setup_logging()
    with user_errors("neoseg-train"):
        from neoseg.train.config import TrainConfig
        from neoseg.train.loop import train as run

        overrides = dict(
            data=str(data) if data else None, hierarchy=hierarchy, model=model.value if model else None,
            widths=parse_ints(widths, "--widths"), loss=loss.value if loss else None,
            reduction=reduction.value if reduction else None, dice_weight=dice_weight, self_training=self_training,
            self_train_after=self_train_after, confidence=confidence, select=select.value if select else None,
            full_fraction=full_fraction, draw=draw, epochs=epochs,
            patience=patience, lr=lr, batch_size=batch_size, slice_size=slice_size, axis=axis,
            cohort_subjects=subjects, cohort_grid=grid, cohort_anatomy=cohort_anatomy.value if cohort_anatomy else None,
            cache=str(cache) if cache else None, max_minutes=max_minutes, prior_bias=prior_bias,
            augment=augment.value if augment else None, synthesis=synthesis,
            synth_labels=str(synth_labels) if synth_labels else None, precision=precision.value if precision else None,
            seed=seed, device=device,
            thresholds=parse_floats(thresholds, "--thresholds"), spacing=parse_floats(spacing, "--spacing"))
        config = TrainConfig.profile(profile.value, **overrides)
        if profile is Profile.paper and slice_size is None and grid is not None:
            config.slice_size = grid
        if resume:
            check_resume_options(out, config, [k for k, v in overrides.items() if v is not None])
        result = run(config, out, resume=resume, progress=not quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    typer.echo(f"\nTest evaluation (best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}):\n")
    typer.echo(result.table)
    typer.echo(f"\nWritten to {out}: best.pt, last.pt, config.json, metrics.csv, split.json, "
               f"evaluation.csv, evaluation.md")


def check_resume_options(out: Path, config, given: list[str]) -> None:
    """--resume continues the stored run as it was configured: refuse options that differ from it."""
    from neoseg.train.config import TrainConfig

    stored_path = out / "config.json"
    if not stored_path.is_file():
        return
    stored = TrainConfig.from_json(stored_path.read_text())
    differ = [k for k in given if getattr(stored, k) != getattr(config, k)]
    if differ:
        listed = ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)} (the run has {getattr(stored, k)})"
                           for k in differ)
        raise ValueError(f"--resume continues {out} with its stored settings, but these options differ: {listed}; "
                         f"drop them, or start a new run with another --out")


def main() -> None:
    app()
