"""``neoseg-train``: train a segmentation network on the built-in cohort or a dHCP-layout dataset."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from neoseg.data.anatomy.subject import ANATOMIES
from neoseg.train.config import (ATLAS_MODES, AUGMENT_POLICIES, LOSSES, MODELS, PRECISIONS, PROFILES, REDUCTIONS,
                                 SELECTIONS)

from .common import choices, make_app, parse_floats, parse_ints, setup_logging, user_errors

app = make_app()


Profile = choices("Profile", PROFILES)
Selection = choices("Selection", SELECTIONS)
Augment = choices("Augment", AUGMENT_POLICIES)
Atlas = choices("Atlas", ATLAS_MODES)  # auto: train/recipes.py
Precision = choices("Precision", PRECISIONS)  # train/precision.py
Anatomy = choices("Anatomy", ANATOMIES)  # the built-in cohort's generator
Model = choices("Model", MODELS)
Loss = choices("Loss", LOSSES)
Reduction = choices("Reduction", REDUCTIONS)


def _default(field: str, show=lambda v: str(v)) -> str:
    """The default of a TrainConfig field as the help states it: one value, or one per profile."""
    from neoseg.train.config import TrainConfig

    cpu, paper = (getattr(TrainConfig.profile(name), field) for name in ("cpu", "paper"))
    if cpu == paper:
        return f"Default: {show(cpu)}."
    return f"Default: cpu {show(cpu)}, paper {show(paper)}."


def _mm(value) -> str:
    return "each scan's own" if value is None else "x".join(f"{v:g}" for v in value) + " mm"


def _onoff(value) -> str:
    return "on" if value else "off"


@app.command()
def train(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", file_okay=False,
                                                help="Run folder (created): checkpoints, config, metrics, "
                                                     "evaluation. Required, except with --show-config.")] = None,
    profile: Annotated[Profile, typer.Option(help="Defaults of every other option. cpu: minutes on 2 cores, the "
                                             "64^3 cohort; paper: the paper's protocol (as neoseg-reproduce "
                                             "--profile paper). --show-config prints what they resolve to.")] =
        Profile.cpu,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the resolved training configuration "
                                              "(JSON) for these options and stop, without training.")] = False,
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="dHCP-layout dataset folder. Default: the built-in synthetic "
                                                      "cohort (generated once and cached; the command says so).")] = None,
    hierarchy: Annotated[Optional[str], typer.Option(help="Built-in hierarchy name or JSON file. "
                                                     + _default("hierarchy"))] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="Decision thresholds of the test evaluation (and of "
                                                      "neoseg-eval/-export): one, or one per channel, "
                                                      "comma-separated, in [1e-6, 1 - 1e-6]. "
                                                      + _default("thresholds"))] = None,
    model: Annotated[Optional[Model], typer.Option(help="Network. " + _default("model"))] = None,
    widths: Annotated[Optional[str], typer.Option(help="U-Net widths per level, comma-separated. "
                                                  + _default("widths", lambda w: ",".join(map(str, w))))] = None,
    loss: Annotated[Optional[Loss], typer.Option(help="Loss; iuc is the paper's method, bce the supervised one, "
                                                 "labelset (marginal cross-entropy + leaf Dice) trains a softmax "
                                                 "head over the hierarchy's leaves. " + _default("loss"))] = None,
    dice_weight: Annotated[Optional[float], typer.Option(help="labelset: weight of the leaf Dice term (0: marginal "
                                                         "cross-entropy only). " + _default("dice_weight"))] = None,
    self_training: Annotated[Optional[bool], typer.Option("--self-training/--no-self-training", show_default=False,
                                                          help="An EMA teacher fills in the unknown children of "
                                                          "partially labelled scans (any partial-label loss). "
                                                          + _default("self_training", _onoff))] = None,
    self_train_after: Annotated[Optional[int], typer.Option(help="Self-training: epochs before the teacher's "
                                                            "pseudo labels are used. Default: once the plain "
                                                            "loss plateaus, from its best weights.")] = None,
    confidence: Annotated[Optional[float], typer.Option(help="Self-training: share of the parent's probability "
                                                        "the teacher's child needs. " + _default("confidence"))] = None,
    weight_ema: Annotated[Optional[float], typer.Option(help="Validate, select and save an exponential moving "
                                                        "average of the weights instead of the weights as trained: "
                                                        "its decay per training step (e.g. 0.995), 0: off. Smooths "
                                                        "the epoch-to-epoch swings of small structures. "
                                                        + _default("weight_ema"))] = None,
    select: Annotated[Optional[Selection], typer.Option(help="Best epoch and early stopping by the validation loss "
                                                        "(the paper) or by the mean validation Dice of the child "
                                                        "structures. " + _default("select"))] = None,
    full_share: Annotated[Optional[float], typer.Option(help="Share of every batch's slices drawn from the fully "
                                                        "labelled sessions, in [0, 1): round(share x batch size), "
                                                        "at least 1, oversampled; an epoch stays one pass over the "
                                                        "partially labelled slices. 0: one plain shuffle (the "
                                                        "paper). " + _default("full_share"))] = None,
    init_from: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False,
                                                      help="Start from this checkpoint's weights (a best.pt of the "
                                                      "same --model and --widths); its head may differ: an IUC model "
                                                      "can start a --loss labelset run, the output layer converted "
                                                      "so that it decides as the IUC model did.")] = None,
    reduction: Annotated[Optional[Reduction], typer.Option(help="mean: over all entries (paper); observed: over "
                                                           "supervised entries. " + _default("reduction"))] = None,
    full_fraction: Annotated[Optional[float], typer.Option(help="Fraction of training subjects kept fully "
                                                           "labelled. " + _default("full_fraction"))] = None,
    draw: Annotated[Optional[int], typer.Option(help="Random draw of the fully labelled subjects. "
                                                + _default("draw"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs. " + _default("epochs"))] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience (epochs). "
                                                    + _default("patience"))] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate. " + _default("lr"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Slices per batch. " + _default("batch_size"))] = None,
    slice_size: Annotated[Optional[int], typer.Option(help="Slices are cropped/padded to this size (pixels). "
                                                      + _default("slice_size")
                                                      + " With paper and --grid: the grid.")] = None,
    spacing: Annotated[Optional[str], typer.Option(help="Voxel size every scan is resampled to before slicing, "
                                                   "one value or x,y,z in mm; the model stores it and "
                                                   "neoseg-infer uses it. " + _default("spacing", _mm))] = None,
    axis: Annotated[Optional[int], typer.Option(min=0, max=2, help="Slice axis in RAS+ (0 sagittal). "
                                                + _default("axis"))] = None,
    subjects: Annotated[Optional[int], typer.Option(help="Built-in cohort: number of subjects. "
                                                    + _default("cohort_subjects"))] = None,
    grid: Annotated[Optional[int], typer.Option(help="Built-in cohort: voxels per side over 128 mm. "
                                                + _default("cohort_grid"))] = None,
    cohort_anatomy: Annotated[Optional[Anatomy], typer.Option(help="Built-in cohort: v2 (realistic) or v1 (the "
                                                              "first generator, as the experiment report). "
                                                              + _default("cohort_anatomy"))] = None,
    cache: Annotated[Optional[Path], typer.Option(file_okay=False,
                                                  help="Slice cache folder. Default: OUT/cache.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop training after this many minutes. "
                                                         + _default("max_minutes", lambda v: v or "none"))] = None,
    prior_bias: Annotated[Optional[bool], typer.Option("--prior-bias/--no-prior-bias", show_default=False,
                                                       help="Start output biases at the labels' prior odds (not "
                                                       "in the paper). " + _default("prior_bias", _onoff))] = None,
    augment: Annotated[Optional[Augment], typer.Option(help="Augmentation of the training batches: "
                                                       "contrast (standard plus a random non-monotone intensity "
                                                       "curve: tissue contrasts reordered as by other sequences), "
                                                       "standard (spatial, intensity, resolution, brain "
                                                       "extraction, field of view; see docs/training.md) or none "
                                                       "(the paper's protocol). "
                                                       + _default("augment"))] = None,
    synthesis: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Train from label maps: the "
                                                       "probability per training slice that its image is replaced by "
                                                       "one synthesised from its labels (random contrast per region, "
                                                       "partial volume, resolution and slice thickness, bias, "
                                                       "motion ghosts, noise; see docs/training.md); 0: real images "
                                                       "only. " + _default("synthesis"))] = None,
    synth_labels: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                         help="Folder of label maps without images (*.nii.gz, "
                                                         "on the training voxel size) added to the training data; "
                                                         "their images are always synthesised. Needs "
                                                         "--synthesis above 0.")] = None,
    atlas: Annotated[Optional[Atlas], typer.Option(help="Register fully labelled training sessions to each "
                                                   "partially labelled one (the --atlas-per-target nearest in age; "
                                                   "Greedy; docs/atlas.md): propagate (their children fill in the "
                                                   "unknown ones inside the known parent where confident), pairs "
                                                   "(the atlas image and labels warped into each scan become extra "
                                                   "training sessions), both, none, or auto: where fully and partially "
                                                   "labelled sessions train together with a partial-label "
                                                   "loss, pairs (propagate where one fully labelled subject "
                                                   "trains one model, --members 1), else none. "
                                                   + _default("atlas"))] = None,
    atlas_confidence: Annotated[Optional[float], typer.Option(min=0.5, max=1.0, help="--atlas propagate: the "
                                                              "share of the parent a fused atlas child needs to be "
                                                              "written; below it the child stays unknown. "
                                                              + _default("atlas_confidence"))] = None,
    atlas_per_target: Annotated[Optional[int], typer.Option(help="--atlas: how many fully labelled sessions are "
                                                            "registered to each partially labelled one: those "
                                                            "nearest to it in scan age (all where there are no "
                                                            "more); the cost grows with it. "
                                                            + _default("atlas_per_target"))] = None,
    atlas_warps: Annotated[Optional[str], typer.Option(help="--atlas: the registrations each atlas gets, "
                                                       "comma-separated, all fused per voxel: regular (smoother), "
                                                       "flexible (follows folded cortex and white matter more "
                                                       "closely); each one more costs one more registration per "
                                                       "pair. " + _default("atlas_warps", ",".join))] = None,
    atlas_resolution: Annotated[Optional[float], typer.Option(help="--atlas: the registration's finest voxel size "
                                                              "(mm). Finer scans are registered on coarser levels "
                                                              "and the transform applied at their own voxel size; "
                                                              "at or below it: full resolution (slower). "
                                                              + _default("atlas_resolution"))] = None,
    members: Annotated[Optional[str], typer.Option(metavar="N|auto", help="Train N models on one split (seeds "
                                                   "--seed, --seed+1, ...; the first in OUT, the others in "
                                                   "OUT/member-K) and score them as one, their probabilities "
                                                   "averaged (neoseg-export OUT: one model of them all). auto: 3 "
                                                   "where a partial-label loss trains on one fully labelled subject "
                                                   "beside partially labelled ones (then --atlas auto is pairs), "
                                                   "else 1. "
                                                   + _default("members"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split and the training. "
                                                + _default("seed"))] = None,
    split_seed: Annotated[Optional[int], typer.Option(help="Seed of the train/validation/test split alone (default: "
                                                      "--seed). Members of an ensemble: one --split-seed, "
                                                      "each its own --seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device: auto, cpu, cuda or cuda:N. " + _default("device"))] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="Training precision. fp32; bf16: the forward pass in BF16 "
                                                           "(autocast) on a CPU with BF16 units (AVX-512 BF16 or "
                                                           "AMX) or a GPU; fp16: CUDA only, with a gradient "
                                                           "scaler; auto: bf16 where the device has the units, "
                                                           "else fp32. Weights and checkpoints stay FP32. "
                                                           + _default("precision"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train on --data (or, without it, the built-in synthetic cohort), then evaluate on the test
    subjects. Defaults depend on --profile; --show-config prints the resolved configuration."""
    setup_logging()
    with user_errors("neoseg-train"):
        from neoseg.train.config import TrainConfig
        from neoseg.train.members import train_members

        overrides = dict(
            data=_absolute(data), hierarchy=_absolute_hierarchy(hierarchy), model=model.value if model else None,
            widths=parse_ints(widths, "--widths"), loss=loss.value if loss else None,
            reduction=reduction.value if reduction else None, dice_weight=dice_weight, self_training=self_training,
            self_train_after=self_train_after, confidence=confidence, select=select.value if select else None,
            weight_ema=weight_ema,
            full_fraction=full_fraction, draw=draw, epochs=epochs, full_share=full_share,
            init_from=_absolute(init_from),
            patience=patience, lr=lr, batch_size=batch_size, slice_size=slice_size, axis=axis,
            cohort_subjects=subjects, cohort_grid=grid, cohort_anatomy=cohort_anatomy.value if cohort_anatomy else None,
            cache=_absolute(cache), max_minutes=max_minutes, prior_bias=prior_bias,
            augment=augment.value if augment else None, synthesis=synthesis,
            synth_labels=_absolute(synth_labels), precision=precision.value if precision else None,
            atlas=atlas.value if atlas else None, atlas_confidence=atlas_confidence,
            atlas_per_target=atlas_per_target, atlas_resolution=atlas_resolution,
            atlas_warps=[w.strip() for w in atlas_warps.split(",")] if atlas_warps else None,
            members=parse_members(members), seed=seed, split_seed=split_seed, device=device,
            thresholds=parse_floats(thresholds, "--thresholds"), spacing=parse_floats(spacing, "--spacing"))
        config = TrainConfig.profile(profile.value, **overrides)
        if profile is Profile.paper and slice_size is None and grid is not None:
            config.slice_size = grid
        if show_config:
            typer.echo(config.to_json())
            return
        if out is None:
            raise ValueError("missing -o/--out FOLDER: the run folder to write")
        if config.data is None and not resume and os.environ.get("RANK", "0") == "0":  # a resumed run has its own
            logging.getLogger("neoseg.train").info(
                f"no --data: training on the built-in synthetic cohort ({config.cohort_subjects} subjects, "
                f"{config.cohort_grid}^3, anatomy {config.cohort_anatomy}); pass --data FOLDER to train on a "
                f"dHCP-layout dataset")
        if resume:
            check_resume_options(out, config, [k for k, v in overrides.items() if v is not None])
        result = train_members(config, out, resume=resume, progress=not quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    _report(out, result)


def _report(out: Path, result) -> None:
    """The test evaluation, what was written, and how to use it."""
    several = len(result.checkpoints) > 1
    model = out if several else result.checkpoints[0]  # a run's folder names every member
    ended = ["finished before" if r is None else f"best epoch {r.best_epoch} by {r.selected_by}, val loss "
             f"{r.best_val_loss:.4f}; stopped by {r.stopped_by}" for r in result.runs]
    if several:
        typer.echo("\nMembers: " + "; ".join(f"{c.parent} ({e})" for c, e in zip(result.checkpoints, ended)))
        typer.echo(f"\nTest evaluation of the {len(result.checkpoints)} members as one model (each member's own: "
                   f"evaluation.md in its folder):\n")
    else:
        typer.echo(f"\nTest evaluation ({ended[0]}):\n")
    typer.echo(result.table)
    typer.echo(f"\nWritten to {out}: best.pt, last.pt, config.json, metrics.csv, split.json, evaluation.csv, "
               f"evaluation.md" + (f", ensemble-evaluation.csv, ensemble-evaluation.md, and the other members' runs "
                                   f"in {out}/member-*" if several else ""))
    if several:
        typer.echo(f"Use the members together (the run's folder names all of them; one model, their mean "
                   f"probability): `neoseg-export {out} -o model.onnx`, `neoseg-eval {out}`.")
    if json.loads((out / "config.json").read_text()).get("atlas", "none") != "none":
        typer.echo(f"Trained with atlases: `neoseg-eval {model} --atlas run` scores the test scans with the fully "
                   f"labelled training sessions registered to each and blended in, as `neoseg-infer --atlas` "
                   f"segments (atlas fusion; seconds per scan at 2 mm, minutes at 0.5 mm).")


def parse_members(text: str | None) -> int | str | None:
    """--members: 'auto' or a count of models."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--members must be a number of models (e.g. 3) or auto, got '{text}'") from None


def _absolute(path: Path | str | None) -> str | None:
    """A path option as the run stores it: absolute (not resolved through links), so that the run
    folder works from any working directory (export, evaluation, --resume)."""
    return None if path is None else os.path.abspath(path)


def _absolute_hierarchy(spec: str | None) -> str | None:
    """--hierarchy: a built-in name as it is, a JSON file's path absolute."""
    from neoseg.core.hierarchy import builtin_names

    return spec if spec is None or spec in builtin_names() else _absolute(spec)


PATH_OPTIONS = ("data", "hierarchy", "init_from", "cache", "synth_labels")


def _same(key: str, given, stored) -> bool:
    """Whether an option given with --resume is the run's: ``auto``, equal, or (a path) the same
    file or folder as the stored one, however written."""
    if given in ("auto", stored):
        return True
    if key not in PATH_OPTIONS or given is None or stored is None:
        return False
    try:
        return os.path.samefile(given, stored)
    except OSError:
        return False


def check_resume_options(out: Path, config, given: list[str]) -> None:
    """--resume continues the stored run as it was configured: refuse options that differ from it
    (``auto`` is whatever the run chose)."""
    from neoseg.train.config import TrainConfig

    stored_path = out / "config.json"
    if not stored_path.is_file():
        return
    stored = TrainConfig.from_json(stored_path.read_text())
    differ = [k for k in given if not _same(k, getattr(config, k), getattr(stored, k))]
    if differ:
        listed = ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)} (the run has {getattr(stored, k)})"
                           for k in differ)
        raise ValueError(f"--resume continues {out} with its stored settings, but these options differ: {listed}; "
                         f"drop them, or start a new run with another --out")


def main() -> None:
    app()
