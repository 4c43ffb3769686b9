"""One run of the grid: its training config, and training (or resuming) it into ``OUT/runs/<name>``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from .grid import RunSpec
from .profiles import Profile
from .records import metrics_rows


def run_config(spec: RunSpec, profile: Profile, data: Path, cache: Path, device: str):
    """The run's training config; a supervised run below 100 % is BCE with partial labels, which
    :func:`neoseg.train.loop.train` trains as the supervised baseline (fully labelled subjects only)."""
    from neoseg.train.config import TrainConfig

    config = TrainConfig(
        data=str(data), cache=str(cache), full_fraction=spec.fraction, draw=spec.draw,
        slice_size=profile.slice_size[spec.model], model=spec.model, widths=list(profile.widths), loss=spec.loss,
        reduction=spec.reduction, self_training=spec.self_training, self_train_after=spec.self_train_after,
        select=spec.select, lr=profile.lr,
        batch_size=profile.batch_size,
        epochs=profile.epochs[spec.model] * spec.budget, steps_per_epoch=profile.steps_per_epoch,
        patience=profile.patience * spec.budget, prior_bias=profile.prior_bias,
        max_minutes=profile.max_minutes * spec.budget if profile.max_minutes else None,
        spacing=profile.spacing, augment=spec.augment, seed=spec.seed, device=device,  # the paper's rows: augment "none"
        **levers(spec))
    return config


def levers(spec: RunSpec) -> dict:
    """The TrainConfig fields of the levers beyond the paper that ``spec`` sets (none at their default,
    so that the paper's runs need no newer neoseg-train)."""
    from neoseg.train.config import TrainConfig

    wanted = {"atlas": spec.atlas} if spec.atlas != "none" else {}
    if spec.atlas_confidence:
        wanted["atlas_confidence"] = spec.atlas_confidence
    if spec.atlas_warps:
        wanted["atlas_warps"] = list(spec.atlas_warps)
    if spec.weight_ema:
        wanted["weight_ema"] = spec.weight_ema
    if spec.full_share:
        wanted["full_share"] = spec.full_share
    if spec.seed:
        wanted["split_seed"] = 0  # another seed, the same draw's split
    missing = sorted(wanted.keys() - {f.name for f in dataclasses.fields(TrainConfig)})
    if missing:
        raise ValueError(f"run {spec.name} needs neoseg-train's {', '.join(missing)} option (TrainConfig), which "
                         f"this neoseg does not have; update neoseg, or leave the run out with --only")
    return wanted


def init_worker(threads: int | None) -> None:
    """Set up a worker process: its torch threads and quiet logging."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def execute(spec: RunSpec, profile: Profile, out: Path, data: Path, device: str) -> dict:
    """Train (or resume) one run into ``OUT/runs/<name>``, or evaluate an evaluation run; returns what
    ``done.json`` records."""
    if spec.evaluates:
        return evaluate_trained(spec, profile, out, data, device)
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.splits import make_split
    from neoseg.train.baselines import write_pseudo_labels
    from neoseg.train.recipes import semi_supervised_config
    from neoseg.train.loop import train

    began = time.monotonic()
    run_dir = out / "runs" / spec.name
    earlier = sum(float(r["seconds"]) for r in metrics_rows(run_dir))  # what an interrupted invocation trained
    handler = logging.FileHandler(out / "logs" / f"{spec.name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    train_log = logging.getLogger("neoseg.train")
    train_log.addHandler(handler)
    train_log.setLevel(logging.INFO)
    train_log.propagate = False  # the run's log goes to its file; the runner prints one line per run
    try:
        sessions = find_sessions(data)
        config = run_config(spec, profile, data, out / "cache", device)
        if spec.kind == "semi":
            supervised = out / "runs" / spec.needs[0] / "best.pt"
            pseudo = out / "pseudo" / spec.needs[0]
            if not (pseudo / "done").is_file():
                split = make_split(sessions, spec.fraction, seed=config.split_seed_used, draw=spec.draw)
                write_pseudo_labels(supervised, [s for s in split.train if not split.is_full(s)], pseudo, device)
                (pseudo / "done").write_text("")
            config = semi_supervised_config(config, supervised, pseudo)
        elif spec.needs:  # a run from_iuc starts from that run's best weights
            config = dataclasses.replace(config, init_from=str(out / "runs" / spec.needs[0] / "best.pt"))
        result = train(config, run_dir, resume=(run_dir / "config.json").is_file(), progress=False)
    finally:
        train_log.removeHandler(handler)
        train_log.propagate = True
        handler.close()
    epochs = len(metrics_rows(run_dir))
    record = {"run": spec.name, "seconds": round(time.monotonic() - began + earlier, 1),
              "earlier_seconds": round(earlier, 1), "best_epoch": result.best_epoch,
              "epochs": epochs, "stopped_by": result.stopped_by, "best_val_loss": result.best_val_loss,
              "self_train_began": result.self_train_began, "recipe": spec.recipe, "patience": config.patience,
              "epoch_cap": config.epochs,
              **dataclasses.asdict(spec)}
    (run_dir / "done.json").write_text(json.dumps(record, indent=2))
    return record


def evaluate_trained(spec: RunSpec, profile: Profile, out: Path, data: Path, device: str) -> dict:
    """An evaluation run: the best weights of the runs it needs (several: an ensemble, their
    probabilities averaged, ``neoseg-eval A B C``), evaluated on their test sessions, with atlas
    fusion where the spec has ``fusion`` (the run's fully labelled training sessions registered to
    each scan, with the spec's warps, and blended in: ``neoseg-eval --atlas run``), into
    ``OUT/runs/<name>``. Its ``done.json`` takes how training ended from the first run's; its
    seconds are the evaluation's, registrations included, run as many at once as the profile's
    threads per run."""
    from neoseg.train.evaluate import checkpoint_segmenter, evaluate_sessions, run_atlas_fusion, write_rows
    from neoseg.train.recipes import dataset_split

    began = time.monotonic()
    trained, run_dir = [out / "runs" / name for name in spec.needs], out / "runs" / spec.name
    segmenter, config = checkpoint_segmenter([t / "best.pt" for t in trained], device, own_split=True)
    config = dataclasses.replace(config, data=str(data))  # the folder's cohort, wherever the folder is now
    segmenter.host_threads = profile.threads or 1
    if spec.fusion:
        segmenter.atlas = run_atlas_fusion(config, segmenter.info.hierarchy, warps=spec.fusion)
    rows = evaluate_sessions(segmenter, list(dataset_split(config).test))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_rows(run_dir / "evaluation.csv", rows)
    ended = json.loads((trained[0] / "done.json").read_text())
    record = {**{k: ended[k] for k in ("best_epoch", "epochs", "stopped_by", "best_val_loss", "self_train_began",
                                      "patience", "epoch_cap") if k in ended},
              "run": spec.name, "seconds": round(time.monotonic() - began, 1), "earlier_seconds": 0.0,
              "recipe": spec.recipe, **dataclasses.asdict(spec)}
    (run_dir / "done.json").write_text(json.dumps(record, indent=2))
    return record
