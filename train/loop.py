"""The training run: data, model, Adam, early stopping on the validation loss, best and last
checkpoints (resumable), per-epoch metrics log, and the test evaluation at the end."""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from neoseg.core import hierarchy as hier
from neoseg.core.io import write_text
from neoseg.data.dhcp import Session, find_sessions
from neoseg.data.splits import Split, make_split

from . import checkpoint
from .config import TrainConfig
from .dataset import SliceDataset
from .evaluate import evaluate_sessions, report, write_rows
from .losses import make_loss
from .models import create_model, input_divisor
from .volumes import VolumeCache

log = logging.getLogger("neoseg.train")

METRICS_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "best", "seconds"]


class RunExistsError(FileExistsError):
    pass


@dataclass
class RunResult:
    out: Path
    best_epoch: int
    best_val_loss: float
    rows: list[dict]  # test evaluation, one per session and structure
    table: str  # markdown summary of ``rows``


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def dataset_sessions(config: TrainConfig, progress: bool) -> list[Session]:
    """The sessions of --data, or of the built-in synthetic cohort (generated once, then reused)."""
    if config.data is not None:
        return find_sessions(config.data)
    from neoseg.data.synth import CohortSpec, default_cohort_dir, generate_cohort

    spec = CohortSpec(n_subjects=config.cohort_subjects, grid=config.cohort_grid, seed=config.cohort_seed)
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


def run_epoch(model, loader, loss_fn, device, optimizer=None, progress=False, desc="") -> tuple[float, float]:
    """One pass; trains when an optimizer is given. Returns (mean loss, macro Dice over channels)."""
    from tqdm import tqdm

    training = optimizer is not None
    model.train(training)
    total, count, inter, size = 0.0, 0, 0, 0
    with torch.set_grad_enabled(training):
        bar = tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch")
        for image, target, _ in bar:
            image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
            logits = model(image)
            loss = loss_fn(logits, target)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += loss.item() * len(image)
            count += len(image)
            i, s = _dice_2d(logits.detach(), target)
            inter, size = inter + i, size + s
            bar.set_postfix(loss=f"{total / count:.4f}")
    dice = (2 * inter / torch.clamp(size, min=1)).float()[size > 0].mean() if count else torch.tensor(math.nan)
    return total / max(count, 1), float(dice)


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


def train(config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          split: Split | None = None) -> RunResult:
    """Train per ``config`` into ``out``. With ``resume`` an interrupted run continues from its last
    epoch (with the config stored in ``out``). ``split`` overrides the subject split."""
    out = Path(out)
    config = prepare_run_dir(out, config, resume)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    hierarchy = hier.resolve(config.hierarchy)

    sessions = dataset_sessions(config, progress)
    if split is None:
        split = make_split(sessions, config.full_fraction, seed=config.seed, draw=config.draw)
    train_sessions = [s for s in split.train if config.train_subjects is None or s.subject in config.train_subjects]
    if not train_sessions:
        raise ValueError("no training sessions left; check --train-subjects")
    write_text(out / "split.json", _split_json(split), overwrite=True)

    model = create_model(config.model, 1, len(hierarchy), **config.model_kwargs()).to(device)
    if config.slice_size % input_divisor(model):
        raise ValueError(f"slice size {config.slice_size} must be divisible by {input_divisor(model)} "
                         f"for model '{config.model}'; pass e.g. --slice-size "
                         f"{-(-config.slice_size // input_divisor(model)) * input_divisor(model)}")
    cache = VolumeCache(Path(config.cache) if config.cache else out / "cache", config.axis, config.slice_size)
    train_stacks = [cache.get(s) for s in train_sessions]
    val_stacks = [cache.get(s) for s in split.val]
    spacing = tuple(np.median([st.spacing for st in train_stacks], axis=0).tolist())
    train_set = SliceDataset(train_stacks, hierarchy, [not split.is_full(s) for s in train_sessions])
    val_set = SliceDataset(val_stacks, hierarchy, [False] * len(val_stacks))
    shuffle = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=shuffle,
                              pin_memory=device.type == "cuda")
    val_loader = DataLoader(val_set, batch_size=config.batch_size * 2)

    loss_fn = make_loss(config.loss, hierarchy, config.reduction)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start, best_loss, best_epoch = 1, math.inf, 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.is_file():
        last = checkpoint.load(last_path, map_location=str(device))
        model.load_state_dict(last.model.state_dict())
        state = last.state
        optimizer.load_state_dict(state["optimizer_state"])
        start, best_loss, best_epoch = state["epoch"] + 1, state["best_val_loss"], state["best_epoch"]
        shuffle.set_state(state["shuffle_state"])
        torch.set_rng_state(state["torch_rng"])
        _truncate_metrics(out / "metrics.csv", start)
        log.info("resuming %s at epoch %d (best val loss %.4f at epoch %d)", out, start, best_loss, best_epoch)

    log.info("%d train sessions (%d fully labelled subjects), %d val, %d test; %d train slices of %d^2 on %s",
             len(train_sessions), len(split.fully_labelled), len(split.val), len(split.test), len(train_set),
             config.slice_size, device)
    metrics_path = out / "metrics.csv"
    began = time.monotonic()
    for epoch in range(start, config.epochs + 1):
        if epoch - best_epoch > config.patience and best_epoch > 0:
            log.info("early stop: no validation improvement for %d epochs", config.patience)
            break
        if config.max_minutes is not None and (time.monotonic() - began) / 60 > config.max_minutes:
            log.info("time budget of %.1f min reached", config.max_minutes)
            break
        t0 = time.monotonic()
        train_loss, _ = run_epoch(model, train_loader, loss_fn, device, optimizer, progress,
                                  f"epoch {epoch}/{config.epochs}")
        val_loss, val_dice = run_epoch(model, val_loader, loss_fn, device, progress=progress, desc="validate")
        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch = val_loss, epoch
            checkpoint.save(best_path, model, config, hierarchy, spacing, epoch=epoch, best_val_loss=best_loss)
        checkpoint.save(last_path, model, config, hierarchy, spacing, epoch=epoch, best_val_loss=best_loss,
                        best_epoch=best_epoch, optimizer_state=optimizer.state_dict(),
                        shuffle_state=shuffle.get_state(), torch_rng=torch.get_rng_state())
        _append_metrics(metrics_path, {"epoch": epoch, "train_loss": f"{train_loss:.6f}", "val_loss": f"{val_loss:.6f}",
                                       "val_dice": f"{val_dice:.4f}", "best": int(improved),
                                       "seconds": f"{time.monotonic() - t0:.1f}"})
        log.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.3f%s (%.0f s)", epoch, train_loss,
                 val_loss, val_dice, " *" if improved else "", time.monotonic() - t0)

    if not best_path.is_file():
        raise RuntimeError(f"no epoch finished, so {best_path} was never written; raise --epochs or --max-minutes")
    best = checkpoint.load(best_path, map_location=str(device))
    rows = evaluate_sessions(best.model.to(device), hierarchy, list(split.test), config.axis, config.slice_size,
                             device, progress=progress)
    write_rows(out / "evaluation.csv", rows)
    table = report(rows)
    write_text(out / "evaluation.md", f"# Test evaluation of {best_path} (epoch {best.state['epoch']})\n\n"
               f"{table}\n", overwrite=True)
    return RunResult(out, best.state["epoch"], best.state["best_val_loss"], rows, table)


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_metrics(path: Path, start: int) -> None:
    """Drop rows of epochs that the resumed checkpoint does not include."""
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start]
        path.unlink()
        for row in rows:
            _append_metrics(path, row)


def _split_json(split: Split) -> str:
    import json

    names = lambda ss: sorted({s.subject for s in ss})  # noqa: E731
    return json.dumps({"train": names(split.train), "val": names(split.val), "test": names(split.test),
                       "fully_labelled": sorted(split.fully_labelled)}, indent=2)
