"""The training run: data, model, Adam, early stopping on the validation loss, best and last
checkpoints (resumable), per-epoch metrics log, and the test evaluation at the end. With
``--weight-ema`` an exponential moving average of the weights is what is validated, selected and
saved as best.pt.

The steps live in their own modules: the device and ranks (:mod:`.ranks`), the sharded batches
(:mod:`.sampling`), the run folder (:mod:`.rundir`), the recipe and training sessions
(:mod:`.recipes`), the initial weights (:mod:`.init`), one epoch (:mod:`.epoch`) and the stopping
and self-training schedule (:mod:`.schedule`); this module puts them in order.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same function trains with DistributedDataParallel:
every rank draws the same global batches (same seed, same shuffle) and takes its contiguous share
of each, the loss of a share is weighted by its size so the summed gradient equals that of the
global batch, losses and Dice are summed across ranks, and only rank 0 writes. BatchNorm becomes
SyncBatchNorm on GPUs; on CPU (gloo) torch has no SyncBatchNorm, so each rank normalises with the
statistics of its own share and results agree with one process only within a tolerance.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from neoseg.core import hierarchy as hier
from neoseg.core.io import write_text
from neoseg.core.labels import present_values
from neoseg.data.splits import Split

from . import checkpoint
from .atlas import atlas_sessions
from .augment import make_augment
from .checks import check_before_training
from .config import TrainConfig
from .dataset import SliceDataset
from .epoch import EpochContext, run_epoch
from .evaluate import evaluate_sessions, model_segmenter, report, write_rows
from .heads import ChannelLogits, output_channels
from .init import load_initial_weights, set_prior_bias
from .label_maps import label_stacks
from .losses import make_loss
from .models import create_model, input_divisor
from .precision import grad_scaler, resolve_precision
from .ranks import Ranks, init_ranks, resolve_device
from .recipes import dataset_split, resolve_recipe, training_sessions
from .rundir import (append_metrics, cache_folder, check_same_split, create_run_dir, stored_config, trained_seconds,
                     truncate_metrics, write_split)
from .sampling import training_batches
from .schedule import Schedule, Step
from .selftrain import EmaTeacher, complete_targets
from .synthesis import with_synthesis
from .volumes import VolumeCache, load_session

log = logging.getLogger("neoseg.train")

AUGMENT_SEED_OFFSET = 7919  # the augmentation generator's seed is the run's seed plus this


@dataclass
class RunResult:
    out: Path
    best_epoch: int
    best_val_loss: float
    rows: list[dict]  # test evaluation, one per session and structure
    table: str  # markdown summary of ``rows``
    stopped_by: str = "epoch cap"  # or "early stopping", "time budget"
    selected_by: str = "val-loss"  # the criterion of the best epoch and of early stopping (config.select)
    self_train_began: int | None = None  # the epoch self-training began, if it did


@dataclass
class _Run:
    """What the epochs of a run share."""

    out: Path
    config: TrainConfig
    hierarchy: hier.Hierarchy
    spacing: tuple[float, ...]  # the voxel size every scan was resampled to, stored in the checkpoints
    ctx: EpochContext  # its model is the DDP wrapper under torchrun
    bare: torch.nn.Module  # the network itself, what the checkpoints hold
    train_loader: DataLoader
    val_loader: DataLoader
    shuffle: torch.Generator
    teacher: EmaTeacher | None
    children: list[int]  # channels with a parent: the validation's child Dice
    average: EmaTeacher | None = None  # --weight-ema: the averaged weights, validated and saved as best.pt

    @property
    def selected(self) -> torch.nn.Module:
        """The network that is validated and saved as best.pt."""
        return self.average.model if self.average is not None else self.bare


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          split: Split | None = None) -> RunResult:
    """Train per ``config`` into ``out``. With ``resume`` an interrupted run continues from its last
    epoch (with the config stored in ``out``). ``split`` overrides the subject split. Under torchrun
    every rank calls this; rank 0 writes the run and returns the test evaluation, the others
    return empty ``rows``."""
    out = Path(out)
    device = resolve_device(config.device)
    if not (resume and (out / "config.json").is_file()):  # a resumed run's stored precision is checked in _train
        resolve_precision(config.precision, device)  # refused before the run folder (or the cohort) is made
    ranks, created_group = init_ranks(device)
    existed = out.exists()
    fresh = ranks.main and not resume and not (existed and (not out.is_dir() or any(out.iterdir())))
    try:
        result = _train(config, out, resume, progress and ranks.main, split, device, ranks)
        ranks.barrier()  # while rank 0 evaluates, the others wait: none leaves the group early
        return result
    except (ValueError, FileExistsError):
        if fresh and out.is_dir() and not (out / "last.pt").exists():  # refused before any epoch: leave nothing
            for path in list(out.iterdir()) if existed else [out]:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool, split: Split | None,
           device: torch.device, ranks: Ranks) -> RunResult:
    config, split = _open_run(config, out, resume, progress, split, ranks)
    precision, precision_note = resolve_precision(config.precision, device)
    seed_everything(config.seed)
    hierarchy = hier.resolve(config.hierarchy)
    train_sessions, partial = training_sessions(config, split)
    train_sessions, partial = atlas_sessions(config, split, train_sessions, partial, hierarchy, out, ranks, progress)
    if ranks.main:
        write_split(out / "split.json", split, train_sessions)
    model = _build_model(config, hierarchy, out, resume).to(device)
    train_stacks, val_stacks = _load_stacks(config, hierarchy, split, train_sessions, partial, out, ranks)
    spacing = tuple(config.spacing) if config.spacing is not None else \
        tuple(np.median([st.spacing for st in train_stacks], axis=0).tolist())  # the experiment runner's cohort
    if config.synth_labels is not None:  # label maps without images: fully labelled, trained through synthesis
        extra = label_stacks(config.synth_labels, hierarchy, config.axis, config.slice_size, spacing)
        train_stacks, partial = train_stacks + extra, partial + [False] * len(extra)
    train_set = SliceDataset(train_stacks, hierarchy, partial)
    val_set = SliceDataset(val_stacks, hierarchy, [False] * len(val_stacks))
    if config.prior_bias and config.init_from is None:
        set_prior_bias(model, train_set, config.head)
    run = _assemble(out, config, hierarchy, spacing, model, train_set, val_set, precision, device, ranks, progress)
    schedule = Schedule.of(config)
    start = _resume(run, schedule) if resume and (out / "last.pt").is_file() else 1
    if ranks.main:
        pairs = len(train_sessions) - len(split.train)  # the atlas-to-scan pairs (--atlas pairs/both)
        log.info("%d train sessions%s (%d fully labelled subjects%s), %d val, %d test; %d train slices of %d^2 on "
                 "%s%s, precision %s", len(split.train), f" and {pairs} atlas-to-scan pairs" if pairs else "",
                 len(split.fully_labelled),
                 ", the rest pseudo-labelled" if config.pseudo_labels else "", len(split.val), len(split.test),
                 len(train_set), config.slice_size, device, f" x {ranks.world} processes" if ranks.world > 1 else "",
                 precision + (f" ({precision_note})" if precision_note else ""))
    _run_epochs(run, schedule, start)
    schedule.finish()
    if not ranks.main:
        return RunResult(out, schedule.best_epoch, schedule.best_loss, [], "", schedule.stopped_by, config.select,
                         schedule.self_train_began)
    return _evaluate_test(run, split, schedule)


def _open_run(config: TrainConfig, out: Path, resume: bool, progress: bool, split: Split | None,
              ranks: Ranks) -> tuple[TrainConfig, Split]:
    """The run's config and split. Rank 0 checks ``out``, finds the data (generating the built-in
    cohort if needed), resolves the recipe of a new run and writes its config.json; then the
    other ranks read that config."""
    error = None
    if ranks.main:
        try:
            stored = stored_config(out, resume)
            config = config if stored is None else stored
            split = split if split is not None else dataset_split(config, progress)
            if stored is None:
                config = resolve_recipe(config, split)
                create_run_dir(out, config)
            else:
                check_same_split(out / "split.json", split)
        except Exception as e:  # noqa: BLE001 - every rank stops with it, see after_main
            error = e
    ranks.after_main(error)
    if not ranks.main:
        config = TrainConfig.from_json((out / "config.json").read_text())
        split = split if split is not None else dataset_split(config, progress)
    return config, split


def _build_model(config: TrainConfig, hierarchy: hier.Hierarchy, out: Path, resume: bool) -> torch.nn.Module:
    model = create_model(config.model, 1, output_channels(config.head, hierarchy), **config.model_kwargs())
    if config.select == "child-dice" and not any(kids for _, kids in hierarchy.sibling_groups):
        raise ValueError(f"--select child-dice needs channels with a parent, but hierarchy '{hierarchy.name}' "
                         f"has none; use --select val-loss")
    if config.slice_size % input_divisor(model):
        raise ValueError(f"slice size {config.slice_size} must be divisible by {input_divisor(model)} "
                         f"for model '{config.model}'; pass e.g. --slice-size "
                         f"{-(-config.slice_size // input_divisor(model)) * input_divisor(model)}")
    if config.init_from is not None and not (resume and (out / "last.pt").is_file()):
        load_initial_weights(model, config, hierarchy)
    return model


def _load_stacks(config: TrainConfig, hierarchy: hier.Hierarchy, split: Split, train_sessions: list,
                 partial: list[bool], out: Path, ranks: Ranks) -> tuple[list, list]:
    """The training and validation slice stacks at the run's spacing; rank 0 builds the slice cache
    and checks the data (the test sessions too: now, not after hours of training) before the others
    read the cache."""
    cache = VolumeCache(cache_folder(config, out), config.axis, config.slice_size, hierarchy, config.spacing)
    val_sessions = _validation_sessions(config, split)
    error = None
    if ranks.main:
        try:
            train_stacks = [cache.get(s) for s in train_sessions]
            val_stacks = [cache.get(s) for s in val_sessions]
            test_values = {Path(s.labels): present_values(load_session(s)[1]) for s in split.test
                           if s.labels is not None}
            check_before_training(config, hierarchy, train_stacks + val_stacks, test_values)
        except Exception as e:  # noqa: BLE001 - every rank stops with it, see after_main
            error = e
    ranks.after_main(error)
    if not ranks.main:
        train_stacks = [cache.get(s) for s in train_sessions]
        val_stacks = [cache.get(s) for s in val_sessions]
    return train_stacks, val_stacks


def _validation_sessions(config: TrainConfig, split: Split) -> list:
    """The validation sessions: all of them, their unknown entries left out of the loss, except
    for plain BCE, which has no unknown entries and so validates on the fully labelled ones."""
    if config.loss != "bce" or not split.partial_sessions:
        return list(split.val)
    full = [s for s in split.val if s.key not in split.partial_sessions]
    if not full:
        raise ValueError("the supervised baseline (loss bce) validates on fully labelled sessions, but the "
                         "validation subjects are all partially labelled; fully label more subjects or train with "
                         "a partial-label loss (iuc, labelset)")
    return full


def _assemble(out: Path, config: TrainConfig, hierarchy: hier.Hierarchy, spacing: tuple[float, ...],
              model: torch.nn.Module, train_set: SliceDataset, val_set: SliceDataset, precision: str,
              device: torch.device, ranks: Ranks, progress: bool) -> _Run:
    """The loaders, the DDP wrapper, the loss, the optimizer and the teacher of a run."""
    shuffle = torch.Generator().manual_seed(config.seed)
    augment = make_augment(config.augment, hierarchy, config.seed + AUGMENT_SEED_OFFSET, device)
    augment = with_synthesis(augment, config.synthesis, hierarchy, config.seed, device)  # synthesis first
    batches = training_batches(train_set.full_slices, config.batch_size, config.full_share, shuffle, ranks.rank,
                               ranks.world, config.steps_per_epoch)
    train_loader = DataLoader(train_set, batch_sampler=batches, generator=shuffle, pin_memory=device.type == "cuda")
    val_loader = DataLoader(torch.utils.data.Subset(val_set, range(ranks.rank, len(val_set), ranks.world)),
                            batch_size=config.batch_size * 2)
    bare = model
    if ranks.world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            bare = model
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = make_loss(config.loss, hierarchy, config.reduction, config.dice_weight)
    to_channels = ChannelLogits(hierarchy).to(device) if config.head == "softmax" else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = grad_scaler(precision, device)
    teacher = EmaTeacher(bare, config.ema_decay) if config.self_training else None
    average = EmaTeacher(bare, config.weight_ema, ramp=True) if config.weight_ema else None
    ctx = EpochContext(model, loss_fn, device, ranks, to_channels, precision, optimizer, scaler, augment, progress)
    children = [kid for _, kids in hierarchy.sibling_groups for kid in kids]
    return _Run(out, config, hierarchy, spacing, ctx, bare, train_loader, val_loader, shuffle, teacher, children,
                average)


def _resume(run: _Run, schedule: Schedule) -> int:
    """Restore the state of last.pt (weights, optimizer, generators, teacher, schedule); the next epoch."""
    last = checkpoint.load(run.out / "last.pt", map_location=str(run.ctx.device))
    run.bare.load_state_dict(last.net.state_dict())
    state = last.state
    run.ctx.optimizer.load_state_dict(state["optimizer_state"])
    if run.ctx.scaler is not None and "scaler_state" in state:
        run.ctx.scaler.load_state_dict(state["scaler_state"])
    start = schedule.restore(state)
    run.shuffle.set_state(state["shuffle_state"])
    if run.ctx.augment is not None and "augment_state" in state:
        run.ctx.augment.set_state(state["augment_state"])
    torch.set_rng_state(state["torch_rng"])
    if run.teacher is not None:
        run.teacher.model.load_state_dict(state["teacher_state"])
    if run.average is not None:
        run.average.model.load_state_dict(state["average_state"])
        run.average.updates = state["average_updates"]
    if run.ctx.ranks.main:
        truncate_metrics(run.out / "metrics.csv", start)
    log.info("resuming %s at epoch %d (best val loss %.4f at epoch %d)", run.out, start, schedule.best_loss,
             schedule.best_epoch)
    return start


def _run_epochs(run: _Run, schedule: Schedule, start: int) -> None:
    # the time budget counts the epochs a resumed run trained before, so an interruption does not lengthen it
    config, began = run.config, time.monotonic() - trained_seconds(run.out / "metrics.csv", start)
    for epoch in range(start, config.epochs + 1):
        step = schedule.before_epoch(epoch, (time.monotonic() - began) / 60, run.ctx.ranks.any)
        if step is Step.STOP:
            break
        if step is Step.SELF_TRAIN_FROM_BEST:  # the student goes on from the best weights, the teacher a copy
            best = checkpoint.load(run.out / "best.pt", map_location=str(run.ctx.device))
            run.bare.load_state_dict(best.net.state_dict())
            run.teacher.model.load_state_dict(best.net.state_dict())
            if run.average is not None:
                run.average.model.load_state_dict(best.net.state_dict())
        t0 = time.monotonic()
        trained = run_epoch(run.ctx, run.train_loader, f"epoch {epoch}/{config.epochs}", train=True,
                            complete=_completion(run) if schedule.self_training_on else None,
                            after_step=_after_step(run, schedule))
        val = run_epoch(replace(run.ctx, model=run.selected) if run.average else run.ctx, run.val_loader, "validate")
        child_dice = val.mean_dice(run.children)
        improved = schedule.after_epoch(epoch, val.loss if config.select == "val-loss" else 1 - child_dice, val.loss)
        if not run.ctx.ranks.main:
            continue
        # the row before last.pt: a stop in between reruns this epoch on --resume (dropping the row),
        # whereas a last.pt without its row would lose the row for good
        append_metrics(run.out / "metrics.csv", {
            "epoch": epoch, "train_loss": f"{trained.loss:.6f}", "val_loss": f"{val.loss:.6f}",
            "val_dice": f"{val.dice:.4f}", "val_child_dice": f"{child_dice:.4f}", "best": int(improved),
            "seconds": f"{time.monotonic() - t0:.1f}"})
        _save_checkpoints(run, schedule, epoch, improved)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.3f (children %.3f)%s (%.0f s)", epoch,
                 trained.loss, val.loss, val.dice, child_dice, " *" if improved else "", time.monotonic() - t0)


def _after_step(run: _Run, schedule: Schedule):
    """What follows every optimizer step: the teacher and the weight average track the network."""
    followers = ([run.teacher] if schedule.teacher_tracks else []) + ([run.average] if run.average else [])
    if not followers:
        return None
    return lambda: [f.update(run.bare) for f in followers]


def _completion(run: _Run):
    """Self-training's ``complete(image, target)``: the teacher fills in the unknown children."""
    to_channels = run.ctx.to_channels or (lambda x: x)
    return lambda image, target: complete_targets(run.teacher.channel_probabilities(image, to_channels), target,
                                                  run.hierarchy, run.config.confidence)


def _save_checkpoints(run: _Run, schedule: Schedule, epoch: int, improved: bool) -> None:
    """best.pt when ``epoch`` improved; last.pt, all that --resume needs, always. "precision": what
    the epoch trained in (config.precision may say auto)."""
    ctx, precision = run.ctx, run.ctx.precision
    common = (run.bare, run.config, run.hierarchy, run.spacing)
    if improved:
        checkpoint.save(run.out / "best.pt", run.selected, *common[1:], epoch=epoch, best_val_loss=schedule.best_loss,
                        best_score=schedule.best_score, precision=precision)
    extra = {"teacher_state": run.teacher.model.state_dict()} if run.teacher is not None else {}
    if run.average is not None:
        extra.update(average_state=run.average.model.state_dict(), average_updates=run.average.updates)
    if ctx.scaler is not None:
        extra["scaler_state"] = ctx.scaler.state_dict()
    if ctx.augment is not None:
        extra["augment_state"] = ctx.augment.get_state()
    checkpoint.save(run.out / "last.pt", *common, epoch=epoch, **schedule.state(),
                    optimizer_state=ctx.optimizer.state_dict(), shuffle_state=run.shuffle.get_state(),
                    torch_rng=torch.get_rng_state(), precision=precision, **extra)


def _evaluate_test(run: _Run, split: Split, schedule: Schedule) -> RunResult:
    """Evaluate best.pt on the test sessions; write evaluation.csv and evaluation.md."""
    best_path, device, config = run.out / "best.pt", run.ctx.device, run.config
    if not best_path.is_file():
        raise RuntimeError(f"no epoch finished, so {best_path} was never written; raise --epochs or --max-minutes")
    best = checkpoint.load(best_path, map_location=str(device))
    segmenter = model_segmenter(best.model.to(device), run.hierarchy, config.axis, config.slice_size, device,
                                config.thresholds, best.spacing)
    rows = evaluate_sessions(segmenter, list(split.test), progress=run.ctx.progress)
    write_rows(run.out / "evaluation.csv", rows)
    table = report(rows, hierarchy=run.hierarchy)
    write_text(run.out / "evaluation.md", f"# Test evaluation of {best_path} (epoch {best.state['epoch']}, selected "
               f"by {config.select}; the run ended by {schedule.stopped_by})\n\n{table}\n", overwrite=True)
    return RunResult(run.out, best.state["epoch"], best.state["best_val_loss"], rows, table, schedule.stopped_by,
                     config.select, schedule.self_train_began)

