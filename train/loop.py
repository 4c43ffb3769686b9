"""The training run: data, model, Adam, early stopping on the validation loss, best and last
checkpoints (resumable), per-epoch metrics log, and the test evaluation at the end.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same function trains with DistributedDataParallel:
every rank draws the same global batches (same seed, same shuffle) and takes its contiguous share
of each, the loss of a share is weighted by its size so the summed gradient equals that of the
global batch, losses and Dice are summed across ranks, and only rank 0 writes. BatchNorm becomes
SyncBatchNorm on GPUs; on CPU (gloo) torch has no SyncBatchNorm, so each rank normalises with the
statistics of its own share and results agree with one process only within a tolerance.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from neoseg.core import hierarchy as hier
from neoseg.core.io import write_text
from neoseg.core.labels import present_values
from neoseg.data.dhcp import LABEL_SUFFIX, Session, find_sessions
from neoseg.data.splits import Split, make_split

from . import checkpoint
from .augment import make_augment
from .checks import check_before_training
from .config import TrainConfig
from .dataset import SliceDataset
from .evaluate import evaluate_sessions, report, write_rows
from .heads import ChannelLogits, check_exclusive_leaves, output_channels
from .losses import make_loss
from .models import create_model, input_divisor
from .precision import autocast, grad_scaler, optimizer_step, resolve_precision
from .selftrain import EmaTeacher, complete_targets
from .synthesis import with_synthesis  # issue 21
from .volumes import VolumeCache, load_session

log = logging.getLogger("neoseg.train")

AUGMENT_SEED_OFFSET = 7919  # the augmentation generator's seed is the run's seed plus this
METRICS_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "val_child_dice", "best", "seconds"]


class RunExistsError(FileExistsError):
    pass


@dataclass
class RunResult:
    out: Path
    best_epoch: int
    best_val_loss: float
    rows: list[dict]  # test evaluation, one per session and structure
    table: str  # markdown summary of ``rows``
    stopped_by: str = "epoch cap"  # or "early stopping", "time budget"
    self_train_began: int | None = None  # the epoch self-training began, if it did


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when torch sees one; under torchrun ``auto``/``cuda`` is this rank's GPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (float64 on the CPU of this process)."""
        values = values.detach().to("cpu", torch.float64)
        if self.world > 1:
            if torch.distributed.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
                on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
                torch.distributed.all_reduce(on_gpu)
                return on_gpu.cpu()
            torch.distributed.all_reduce(values)
        return values

    def share(self, n: int) -> tuple[int, int]:
        """(first row, size) of the global batch whose contiguous share of ``n`` rows is this
        rank's (the shares of :class:`ShardedBatches`)."""
        if self.world == 1:
            return 0, n
        total = int(self.sum(torch.tensor([float(n)])).item())
        share, extra = divmod(total, self.world)
        return self.rank * share + min(self.rank, extra), total

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def after_main(self, error: BaseException | None) -> None:
        """Where the other ranks wait for a step of rank 0 (``error``: how it failed, if it did):
        every rank raises rank 0's error, the same kind and message for a user error, instead of
        waiting at a barrier for a rank that is gone."""
        if self.world > 1:
            kind = None if error is None else next((k for k in (FileExistsError, ValueError) if isinstance(error, k)),
                                                   RuntimeError)
            sent = [None if error is None else (kind.__name__, type(error).__name__, str(error))]
            torch.distributed.broadcast_object_list(sent, src=0)
            if not self.main and sent[0] is not None:
                kind, name, message = sent[0]
                if kind == "FileExistsError":
                    raise RunExistsError(message)
                if kind == "ValueError":
                    raise ValueError(message)
                raise RuntimeError(f"rank 0 failed during setup: {name}: {message}")
        if error is not None:
            raise error


def init_ranks(device: torch.device) -> tuple[Ranks, bool]:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on
    GPU). Returns the ranks and whether this call created the group (and so must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), False
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # the long timeout covers the final barrier, while rank 0 evaluates the test set
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return Ranks(dist.get_rank(), dist.get_world_size()), created


class ShardedBatches(Sampler):
    """Batch sampler: global batches of ``batch_size`` slice indices from shuffles drawn with
    ``generator``; rank ``rank`` of ``world`` yields its contiguous share of each, so ``world``
    processes see together exactly the batches that one process would. ``steps`` fixes the
    batches per epoch (drawn from as many fresh shuffles as needed; the rest of the last shuffle
    is dropped), else an epoch is one shuffle. A global batch with fewer slices than ranks (at
    most the last of an epoch) is skipped by every rank."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                 steps: int | None = None):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank, self.world, self.steps = rank, world, steps

    def global_batches(self) -> list[list[int]]:
        if self.steps is None:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:
            order = []
            while len(order) < self.steps * self.batch_size:
                order += torch.randperm(self.n, generator=self.generator).tolist()
            order = order[: self.steps * self.batch_size]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [b for b in batches if len(b) >= self.world]

    def __iter__(self):
        for batch in self.global_batches():
            share, extra = divmod(len(batch), self.world)
            start = self.rank * share + min(self.rank, extra)
            yield batch[start:start + share + (self.rank < extra)]

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return self.n // self.batch_size + (self.n % self.batch_size >= self.world)


def dataset_sessions(config: TrainConfig, progress: bool) -> list[Session]:
    """The sessions of --data, or of the built-in synthetic cohort (generated once, then reused)."""
    if config.data is not None:
        return find_sessions(config.data)
    from neoseg.data.synth import CohortSpec, default_cohort_dir, generate_cohort

    spec = CohortSpec(n_subjects=config.cohort_subjects, grid=config.cohort_grid, seed=config.cohort_seed,
                      anatomy=config.cohort_anatomy)
    return find_sessions(generate_cohort(default_cohort_dir(spec), spec, progress=progress))


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _dice_2d(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed intersections and sizes per channel (observed entries only), for a macro Dice."""
    pred = logits > 0
    truth = target == 1
    observed = target != hier.UNKNOWN
    inter = (pred & truth & observed).sum(dim=(0, 2, 3))
    size = ((pred & observed).sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3)))
    return inter, size


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean over slices
    dice: float  # macro Dice over the channels present (observed entries, pooled over the pass)
    channel_dice: np.ndarray  # per channel, NaN where a channel is absent

    def mean_dice(self, channels: list[int]) -> float:
        values = self.channel_dice[channels]
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else math.nan


def run_epoch(model, loader, loss_fn, device, optimizer=None, progress=False, desc="",
              ranks: Ranks = Ranks(), to_channels=None, complete=None, after_step=None, augment=None,
              precision: str = "fp32", scaler=None) -> EpochStats:
    """One pass; trains when an optimizer is given (on batches transformed by ``augment``, an
    :class:`~neoseg.train.augment.Augmenter`, if given). ``to_channels`` turns the network's output
    into channel logits (softmax head), ``complete(image, target)`` fills in targets before the loss
    (self-training), ``after_step()`` runs after each optimizer step. ``precision`` (resolved, see
    :mod:`.precision`) is the forward pass's; the loss is FP32 always, and ``scaler`` (fp16) scales
    it for the backward pass. Sums over all ranks."""
    from tqdm import tqdm

    training = optimizer is not None
    model.train(training)
    total, count, inter, size = 0.0, 0, 0, 0
    with torch.set_grad_enabled(training):
        bar = tqdm(loader, desc=desc, disable=None if progress else True, leave=False, unit="batch")  # None: off when stderr is no terminal
        for image, target, _ in bar:
            image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if training and augment is not None:
                image, target = augment(image, target, *ranks.share(len(image)))
            if complete is not None:
                target = complete(image, target)
            with autocast(precision, device):
                logits = model(image)
            logits = logits.float()  # the loss (and the softmax head's channel logits) in FP32
            loss = loss_fn(logits, target)
            if training:
                step_loss = loss
                if ranks.world > 1:  # DDP averages gradients over ranks: weight each share by its size
                    n_global = ranks.sum(torch.tensor([float(len(image))])).item()
                    step_loss = loss * (ranks.world * len(image) / n_global)
                optimizer_step(step_loss, optimizer, scaler)
                if after_step is not None:
                    after_step()
            total += loss.item() * len(image)
            count += len(image)
            channels = logits.detach() if to_channels is None else to_channels(logits.detach())
            i, s = _dice_2d(channels, target)
            inter, size = inter + i, size + s
            bar.set_postfix(loss=f"{total / count:.4f}")
    if ranks.world > 1:
        total, count = ranks.sum(torch.tensor([total, float(count)])).tolist()
        inter, size = ranks.sum(torch.as_tensor(inter)), ranks.sum(torch.as_tensor(size))
    inter, size = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (inter, size))
    per_channel = torch.where(size > 0, 2 * inter / size.clamp(min=1), math.nan).numpy()
    present = per_channel[~np.isnan(per_channel)]
    return EpochStats(total / max(count, 1), float(present.mean()) if count and len(present) else math.nan,
                      per_channel)


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> TrainConfig:
    """Create ``out`` for a new run, or check that it holds the run to resume."""
    config_path = out / "config.json"
    if config_path.is_file():
        if not resume:
            raise RunExistsError(f"{out} already holds a training run; pass --resume to continue it, "
                                 f"or choose another --out")
        return TrainConfig.from_json(config_path.read_text())
    if out.exists() and any(out.iterdir()):
        raise RunExistsError(f"{out} exists and is not empty (and holds no neoseg run); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(config_path, config.to_json())
    return config


def pseudo_label_path(root: str | Path, session: Session) -> Path:
    """Where a pseudo label map of ``session`` lies in a dHCP-layout folder."""
    return Path(root) / f"sub-{session.subject}" / f"ses-{session.session}" / "anat" / f"{session.key}{LABEL_SUFFIX}"


def _with_pseudo_labels(sessions: list[Session], partial: list[bool], root: str) -> list[Session]:
    out = []
    for session, is_partial in zip(sessions, partial):
        if is_partial:
            path = pseudo_label_path(root, session)
            if not path.is_file():
                raise ValueError(f"pseudo_labels folder {root} has no label map for {session.key} (expected {path}); "
                                 f"write them with neoseg.train.baselines.write_pseudo_labels first")
            session = dataclasses.replace(session, labels=path)
        out.append(session)
    return out


def _load_initial_weights(model: torch.nn.Module, config: TrainConfig, hierarchy: hier.Hierarchy) -> None:
    start = checkpoint.load(config.init_from)
    if (start.config.model, start.config.model_kwargs(), start.config.head) != \
            (config.model, config.model_kwargs(), config.head):
        raise ValueError(f"init_from {config.init_from} holds a '{start.config.model}' {start.config.model_kwargs()} "
                         f"with a {start.config.head} head but this run trains a '{config.model}' "
                         f"{config.model_kwargs()} with a {config.head} head; they must match")
    if start.hierarchy.names != hierarchy.names:
        raise ValueError(f"init_from {config.init_from} predicts {start.hierarchy.names}, this run {hierarchy.names}")
    model.load_state_dict(start.net.state_dict())


def set_prior_bias(model: torch.nn.Module, dataset: SliceDataset, head: str = "sigmoid") -> None:
    """Set the output layer's biases to each channel's prior log odds log(p / (1 - p)) over the
    training slices (sigmoid head), or to the leaves' log priors log p (softmax head). A channel's
    p is its fraction of 1s among its observed (not unknown) target entries, except for children:
    partially labelled slices hide them exactly where their parent is present, so that fraction
    underestimates them; a child's p is p(parent) x p(child | parent), the latter counted on the
    fully labelled slices (the same number as the plain fraction when all are full)."""
    table = dataset.table.astype(np.int64)
    every, full = np.zeros(len(table), np.int64), np.zeros(len(table), np.int64)
    for stack, partial in zip(dataset.stacks, dataset.partial):
        values = np.bincount(np.asarray(stack.labels).ravel(), minlength=len(table))[: len(table)]
        if partial:
            every += np.bincount(dataset.coarse_lut, weights=values, minlength=len(table)).astype(np.int64)
        else:
            every += values
            full += values
    positive = (every[:, None] * (table == 1)).sum(axis=0)
    observed = (every[:, None] * (table != hier.UNKNOWN)).sum(axis=0)
    p = positive / np.maximum(observed, 1)
    full_positive = (full[:, None] * (table == 1)).sum(axis=0)
    for parent, kids in dataset.hierarchy.sibling_groups:  # top-down
        if full_positive[parent] > 0:
            p[kids] = p[parent] * full_positive[kids] / full_positive[parent]
    p = np.clip(p, 1e-4, 1 - 1e-4)
    if head == "softmax":
        leaves = dataset.hierarchy.leaves
        bias, channels = np.log(p[leaves] / p[leaves].sum()), len(leaves)
    else:
        bias, channels = np.log(p / (1 - p)), table.shape[1]
    heads = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None
             and getattr(m, "out_channels", getattr(m, "out_features", None)) == channels]
    if not heads:
        raise ValueError(f"prior_bias: found no output layer with {channels} biased outputs in {type(model).__name__}")
    with torch.no_grad():
        heads[-1].bias.copy_(torch.as_tensor(bias, dtype=heads[-1].bias.dtype))


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
    error = None
    if ranks.main:  # rank 0 creates the run folder and, if needed, the built-in cohort; then the others follow
        try:
            config = prepare_run_dir(out, config, resume)
            sessions = dataset_sessions(config, progress)
        except Exception as e:  # noqa: BLE001 - every rank stops with it, see after_main
            error = e
    ranks.after_main(error)
    if not ranks.main:
        config = TrainConfig.from_json((out / "config.json").read_text())
        sessions = dataset_sessions(config, progress)
    precision, precision_note = resolve_precision(config.precision, device)
    seed_everything(config.seed)
    hierarchy = hier.resolve(config.hierarchy)

    if split is None:
        split = make_split(sessions, config.full_fraction, seed=config.seed, draw=config.draw)
    if config.loss == "bce" and config.pseudo_labels is None and config.train_subjects is None \
            and any(not split.is_full(s) for s in split.train):
        from .baselines import supervised_config

        config = supervised_config(config, split)  # the paper's supervised baseline: fully labelled subjects only
        if ranks.main:
            write_text(out / "config.json", config.to_json(), overwrite=True)
        log.info("loss bce with %g %% fully labelled: the supervised baseline, trained on the %d fully labelled "
                 "subject(s) only", 100 * config.full_fraction, len(config.train_subjects))
    train_sessions = [s for s in split.train if config.train_subjects is None or s.subject in config.train_subjects]
    if not train_sessions:
        raise ValueError("no training sessions left; check --train-subjects")
    partial = [not split.is_full(s) for s in train_sessions]
    if config.pseudo_labels is not None:
        train_sessions = _with_pseudo_labels(train_sessions, partial, config.pseudo_labels)
        partial = [False] * len(train_sessions)
    if ranks.main:
        write_text(out / "split.json", _split_json(split, train_sessions), overwrite=True)

    model = create_model(config.model, 1, output_channels(config.head, hierarchy), **config.model_kwargs())
    children = [kid for _, kids in hierarchy.sibling_groups for kid in kids]
    if config.select == "child-dice" and not children:
        raise ValueError(f"--select child-dice needs channels with a parent, but hierarchy '{hierarchy.name}' "
                         f"has none; use --select val-loss")
    if config.slice_size % input_divisor(model):
        raise ValueError(f"slice size {config.slice_size} must be divisible by {input_divisor(model)} "
                         f"for model '{config.model}'; pass e.g. --slice-size "
                         f"{-(-config.slice_size // input_divisor(model)) * input_divisor(model)}")
    if config.init_from is not None and not (resume and (out / "last.pt").is_file()):
        _load_initial_weights(model, config, hierarchy)
    model.to(device)
    cache = VolumeCache(Path(config.cache) if config.cache else out / "cache", config.axis, config.slice_size)
    if ranks.main:  # rank 0 builds the slice cache (and checks the data) first
        try:
            train_stacks = [cache.get(s) for s in train_sessions]
            val_stacks = [cache.get(s) for s in split.val]
            test_values = {}  # the test sessions are read and checked now, not after hours of training
            for session in split.test:
                test_values[Path(session.labels)] = present_values(load_session(session)[1])
            check_before_training(config, hierarchy, train_stacks + val_stacks, test_values)
            if config.head == "softmax":
                full = [st for st, p in zip(train_stacks, partial) if not p] + val_stacks
                check_exclusive_leaves(hierarchy, {str(st.session.labels): list(st.values) for st in full})
        except Exception as e:  # noqa: BLE001 - every rank stops with it, see after_main
            error = e
    ranks.after_main(error)
    if not ranks.main:
        train_stacks = [cache.get(s) for s in train_sessions]
        val_stacks = [cache.get(s) for s in split.val]
    spacing = tuple(np.median([st.spacing for st in train_stacks], axis=0).tolist())
    if config.synth_labels is not None:  # issue 21: label maps without images, fully labelled, synthesis only
        from .label_maps import label_stacks
        extra = label_stacks(config.synth_labels, hierarchy, config.axis, config.slice_size, spacing)
        train_stacks, partial = train_stacks + extra, partial + [False] * len(extra)
    train_set = SliceDataset(train_stacks, hierarchy, partial)
    val_set = SliceDataset(val_stacks, hierarchy, [False] * len(val_stacks))
    if config.prior_bias and config.init_from is None:
        set_prior_bias(model, train_set, config.head)
    shuffle = torch.Generator().manual_seed(config.seed)
    augment = make_augment(config.augment, hierarchy, config.seed + AUGMENT_SEED_OFFSET, device)
    augment = with_synthesis(augment, config.synthesis, hierarchy, config.seed, device)  # issue 21: synthesis first
    batches = ShardedBatches(len(train_set), config.batch_size, shuffle, ranks.rank, ranks.world, config.steps_per_epoch)
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
    start, best_score, best_loss, best_epoch = 1, math.inf, math.inf, 0
    st_began = None  # the epoch self-training began
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.is_file():
        last = checkpoint.load(last_path, map_location=str(device))
        bare.load_state_dict(last.net.state_dict())
        state = last.state
        optimizer.load_state_dict(state["optimizer_state"])
        if scaler is not None and "scaler_state" in state:
            scaler.load_state_dict(state["scaler_state"])
        start, best_loss, best_epoch = state["epoch"] + 1, state["best_val_loss"], state["best_epoch"]
        best_score = state.get("best_score", best_loss)
        shuffle.set_state(state["shuffle_state"])
        if augment is not None and "augment_state" in state:
            augment.set_state(state["augment_state"])
        torch.set_rng_state(state["torch_rng"])
        if teacher is not None:
            teacher.model.load_state_dict(state["teacher_state"])
            st_began = state.get("self_train_began")
        if ranks.main:
            _truncate_metrics(out / "metrics.csv", start)
        log.info("resuming %s at epoch %d (best val loss %.4f at epoch %d)", out, start, best_loss, best_epoch)

    if ranks.main:
        log.info("%d train sessions (%d fully labelled subjects%s), %d val, %d test; %d train slices of %d^2 on %s%s, "
                 "precision %s", len(train_sessions), len(split.fully_labelled),
                 ", the rest pseudo-labelled" if config.pseudo_labels else "", len(split.val), len(split.test),
                 len(train_set), config.slice_size, device, f" x {ranks.world} processes" if ranks.world > 1 else "",
                 precision + (f" ({precision_note})" if precision_note else ""))
    metrics_path = out / "metrics.csv"
    began, stopped_by = time.monotonic(), "epoch cap"
    for epoch in range(start, config.epochs + 1):
        if epoch - max(best_epoch, (st_began or 1) - 1) > config.patience and best_epoch > 0:
            if teacher is None or st_began is not None:
                log.info("early stop: no validation improvement for %d epochs", config.patience)
                stopped_by = "early stopping"
                break
            # the plain loss has plateaued: self-training goes on from its best weights, the teacher a copy of them
            best = checkpoint.load(best_path, map_location=str(device))
            bare.load_state_dict(best.net.state_dict())
            teacher.model.load_state_dict(best.net.state_dict())
            st_began = epoch
            log.info("self-training from epoch %d, starting from the best weights (epoch %d)", epoch, best_epoch)
        if teacher is not None and st_began is None and config.self_train_after is not None \
                and epoch > config.self_train_after:
            st_began = epoch
        if config.max_minutes is not None and ranks.any((time.monotonic() - began) / 60 > config.max_minutes):
            log.info("time budget of %.1f min reached", config.max_minutes)
            stopped_by = "time budget"
            break
        t0 = time.monotonic()
        complete = None
        if st_began is not None:
            complete = lambda image, target: complete_targets(  # noqa: E731
                teacher.channel_probabilities(image, to_channels or (lambda x: x)), target, hierarchy,
                config.confidence)
        # the EMA tracks the student from the start for a fixed start epoch; when self-training waits
        # for the plateau, the teacher is reset to the best weights then, so earlier updates are wasted
        tracking = teacher is not None and (config.self_train_after is not None or st_began is not None)
        trained = run_epoch(model, train_loader, loss_fn, device, optimizer, progress, f"epoch {epoch}/{config.epochs}",
                            ranks, to_channels, complete, (lambda: teacher.update(bare)) if tracking else None, augment,
                            precision=precision, scaler=scaler)
        val = run_epoch(model, val_loader, loss_fn, device, progress=progress, desc="validate", ranks=ranks,
                        to_channels=to_channels, precision=precision)
        train_loss, val_loss, val_dice, child_dice = trained.loss, val.loss, val.dice, val.mean_dice(children)
        score = val_loss if config.select == "val-loss" else 1 - child_dice
        improved = score < best_score  # a NaN child Dice (no child in the validation set) never improves
        if improved:
            best_score, best_loss, best_epoch = score, val_loss, epoch
        if not ranks.main:
            continue
        # the row before last.pt: a stop in between reruns this epoch on --resume (dropping the row),
        # whereas a last.pt without its row would lose the row for good
        _append_metrics(metrics_path, {"epoch": epoch, "train_loss": f"{train_loss:.6f}", "val_loss": f"{val_loss:.6f}",
                                       "val_dice": f"{val_dice:.4f}", "val_child_dice": f"{child_dice:.4f}",
                                       "best": int(improved),
                                       "seconds": f"{time.monotonic() - t0:.1f}"})
        if improved:  # "precision": what this epoch trained in (config.precision may say auto)
            checkpoint.save(best_path, bare, config, hierarchy, spacing, epoch=epoch, best_val_loss=best_loss,
                            best_score=best_score, precision=precision)
        extra = {"teacher_state": teacher.model.state_dict(), "self_train_began": st_began} if teacher else {}
        if scaler is not None:
            extra["scaler_state"] = scaler.state_dict()
        checkpoint.save(last_path, bare, config, hierarchy, spacing, epoch=epoch, best_val_loss=best_loss,
                        best_score=best_score, best_epoch=best_epoch, optimizer_state=optimizer.state_dict(),
                        shuffle_state=shuffle.get_state(), torch_rng=torch.get_rng_state(), precision=precision,
                        **extra, **({"augment_state": augment.get_state()} if augment is not None else {}))
        log.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.3f (children %.3f)%s (%.0f s)", epoch,
                 train_loss, val_loss, val_dice, child_dice, " *" if improved else "", time.monotonic() - t0)

    if teacher is not None and st_began is None:
        log.warning("self-training never began: the plain loss had not plateaued when the run ended (%s); "
                    "pass --self-train-after N to start it after epoch N", stopped_by)
    if not ranks.main:
        return RunResult(out, best_epoch, best_loss, [], "", stopped_by, st_began)
    if not best_path.is_file():
        raise RuntimeError(f"no epoch finished, so {best_path} was never written; raise --epochs or --max-minutes")
    best = checkpoint.load(best_path, map_location=str(device))
    rows = evaluate_sessions(best.model.to(device), hierarchy, list(split.test), config.axis, config.slice_size,
                             device, thresholds=config.thresholds, progress=progress)
    write_rows(out / "evaluation.csv", rows)
    table = report(rows)
    write_text(out / "evaluation.md", f"# Test evaluation of {best_path} (epoch {best.state['epoch']})\n\n"
               f"{table}\n", overwrite=True)
    return RunResult(out, best.state["epoch"], best.state["best_val_loss"], rows, table, stopped_by, st_began)


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_metrics(path: Path, start: int) -> None:
    """Drop rows of epochs that the resumed checkpoint does not include (replacing the file at once)."""
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue(), overwrite=True)


def _split_json(split: Split, trained_on: list[Session]) -> str:
    import json

    names = lambda ss: sorted({s.subject for s in ss})  # noqa: E731
    return json.dumps({"train": names(split.train), "val": names(split.val), "test": names(split.test),
                       "fully_labelled": sorted(split.fully_labelled),
                       "trained_on": sorted(s.key for s in trained_on)}, indent=2)
