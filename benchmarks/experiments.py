"""The paper's experiments from one command (Tables 1-3, Figure 4, Appendix A)::

    python -m neoseg.benchmarks.experiments --out runs/experiments             # the headline cells
    python -m neoseg.benchmarks.experiments --out runs/experiments --grid full # Tables 1-3, Appendix A

The default profile ``cpu`` is the paper's protocol at 2 mm: every model trains for the same maximum
number of epochs over *its own* training set (the supervised model: the fully labelled subjects;
IUC and the other partial-label losses: every training subject; the semi-supervised fine-tuning:
every subject, with pseudo labels), with early stopping on the validation loss, keeping the
best-validation weights. ``equal-steps`` is the earlier CPU protocol (the same number of optimizer
steps for every run, 4 mm), kept as an ablation; ``paper`` is the paper's full scale, for GPUs.

Runs (paper section 5.1): fully labelled fractions of the training subjects, random draws of them
per fraction, plus one 100 % reference; model kinds

* supervised: BCE on the fully labelled subjects only,
* semi-supervised: the supervised model of the same fraction and draw pseudo-labels the partially
  labelled scans (corrected with the known parent), then is fine-tuned on all of them,
* ours: IUC; in the full grid also HUC, WEIGHT, WNORM (2/5 %) and IUC with the ``observed`` reduction,
* SegFormer-B0 (full grid): supervised, semi-supervised and IUC (2/5 %).

The headline grid is 2 %: supervised, semi-supervised and IUC over the profile's draws, plus the
100 % reference. Every run lives in ``OUT/runs/<name>/`` (a ``neoseg-train`` run folder) and is
finished when its ``done.json`` exists; an interrupted command continues where it stopped (finished
runs are kept, an interrupted one resumes from its last epoch, with the same result as an
uninterrupted run). At the end ``OUT/results.csv`` (tidy: one row per run, test session and
structure) is rebuilt from the finished runs and ``OUT/REPORT.md`` with its figure is written by
:mod:`neoseg.benchmarks.report`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import platform
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common

log = logging.getLogger("neoseg.experiments")

EVALUATION_FIELDS = ["subject", "session", "scan_age", "age_group", "structure", "dice", "hd95", "hd100",
                     "vol_diff_ml", "vol_true_ml", "missed", "truth_empty"]
RESULT_FIELDS = ["run", "model", "kind", "loss", "reduction", "budget", "select", "fraction", "draw",
                 *EVALUATION_FIELDS]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    model: str  # unet | segformer
    kind: str  # supervised | semi | partial
    loss: str
    fraction: float  # fully labelled fraction of the training subjects
    draw: int
    reduction: str = "mean"
    budget: int = 1  # times the profile's training steps
    self_training: bool = False  # beyond the paper: an EMA teacher fills in the unknown children
    self_train_after: int | None = None  # from this epoch on; None: once the plain loss plateaus
    select: str = "val-loss"  # or child-dice

    @property
    def recipe(self) -> str:
        """The loss and what is added to it, as the report's tables name it: e.g. labelset+st, or
        labelset+st5 for self-training from epoch 6 on."""
        st = "" if not self.self_training else f"+st{self.self_train_after or ''}"
        return self.loss + st + ("+child" if self.select == "child-dice" else "")

    @property
    def name(self) -> str:
        loss = self.recipe.replace("+", "-") + ("-observed" if self.reduction == "observed" else "") + \
            (f"-x{self.budget}" if self.budget != 1 else "")
        return f"{self.model}-{self.kind}-{loss}-f{round(self.fraction * 100):03d}-d{self.draw}"

    @property
    def needs(self) -> str | None:
        """The run whose model this one starts from (the semi-supervised fine-tuning)."""
        if self.kind != "semi":
            return None
        return dataclasses.replace(self, kind="supervised", loss="bce", reduction="mean", budget=1).name


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
    notes: list[str] = field(default_factory=list)


EQUAL_EPOCHS = ("equal epochs: every model trains for at most the same number of epochs over its own training set, "
                "with early stopping on the validation loss; the best-validation weights are kept")

PROFILES = {
    "cpu": Profile(
        name="cpu", protocol=EQUAL_EPOCHS, cohort_subjects=40, cohort_grid=64,
        slice_size={"unet": 64, "segformer": 64}, widths=[8, 16, 32, 64, 128], batch_size=16,
        epochs={"unet": 50, "segformer": 50}, steps_per_epoch=None, patience=8, prior_bias=True,
        draws=3, workers=2, threads=1, grid="headline",
        notes=["built-in cohort of 40 subjects (52 sessions; 32 training, 4 validation, 4 test subjects) on a "
               "64^3 grid of 2 mm voxels, instead of ~250 subjects at 256^3 of 0.5 mm; 2 % of 32 training "
               "subjects is 1 subject (the paper: 4 of about 200)",
               "2D sagittal slices of 64^2 (the paper: 256^2); U-Net widths 8-16-32-64-128 (half the paper's)",
               "Adam 5e-3 and batch 16 (the paper: batch 32); at most 50 epochs with early stopping after 8 "
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
        patience=30, workers=1,
        notes=["the paper's protocol: 250 subjects (200 training: 2 % = 4 fully labelled), 256^3 volumes at "
               "0.5 mm, 256^2 slices, U-Net 16-32-64-128-256, Adam 5e-3, batch 32, up to 200 epochs with early "
               "stopping (patience 30) on the validation loss"]),
}


def plan(profile: Profile) -> list[RunSpec]:
    """The runs of the profile's grid, in the order they are started."""
    if profile.grid == "headline":
        return plan_headline(profile)
    return plan_full(profile)


def plan_headline(profile: Profile) -> list[RunSpec]:
    """2 %: supervised, IUC and semi-supervised per draw, plus the 100 % reference; then the recipes
    beyond the paper (label-set loss, with and without self-training) at 2 %, and at 5 % supervised,
    IUC and label-set + self-training. The long runs (over every training subject) come first within
    each part, so that two workers finish close together."""
    fraction, draws = profile.fractions[0], range(profile.draws)
    runs = [RunSpec("unet", "supervised", "bce", 1.0, 0)]
    runs += [RunSpec("unet", "supervised", "bce", fraction, d) for d in draws]
    for d in draws:
        runs += [RunSpec("unet", "partial", "iuc", fraction, d), RunSpec("unet", "semi", "bce", fraction, d)]
    runs += beyond_runs([fraction], draws)
    if len(profile.fractions) > 1:
        more = profile.fractions[1]
        for d in draws:
            runs += [RunSpec("unet", "supervised", "bce", more, d), RunSpec("unet", "partial", "iuc", more, d),
                     RunSpec("unet", "partial", "labelset", more, d, self_training=True)]
    return runs


def beyond_runs(fractions: list[float], draws) -> list[RunSpec]:
    """The recipes beyond the paper: the label-set loss alone, with self-training once it plateaus,
    and with self-training from epoch 6 (an early start, kept to show its failure: see the report)."""
    return [RunSpec("unet", "partial", "labelset", f, d, self_training=st, self_train_after=after)
            for f in fractions for d in draws for st, after in ((True, None), (False, None), (True, 5))]


def plan_full(profile: Profile) -> list[RunSpec]:
    """The run grid of the paper's Tables 1-3 and Appendix A, in the order they are started."""
    fractions, draws = profile.fractions, range(profile.draws)
    low = [f for f in fractions if f <= 0.05]
    runs = [RunSpec("unet", "supervised", "bce", 1.0, 0)]
    for f in fractions:  # Figure 4 first: supervised, IUC, semi-supervised (started once its supervised run is done)
        for d in draws:
            runs += [RunSpec("unet", kind, loss, f, d) for kind, loss in
                     (("supervised", "bce"), ("partial", "iuc"), ("semi", "bce"))]
    for f in low:  # Tables 1-2: the other losses
        for d in draws:
            runs += [RunSpec("unet", "partial", loss, f, d) for loss in ("weight", "wnorm", "huc")]
    if profile.extra_observed and fractions:
        runs += [RunSpec("unet", "partial", "iuc", fractions[0], d, "observed") for d in draws]
    if profile.extra_budget and fractions:
        runs += [RunSpec("unet", "partial", "iuc", fractions[0], d, budget=profile.extra_budget)
                 for d in range(profile.fewer_draws.get("budget", profile.draws))]
    runs += beyond_runs(low, draws)
    for f in low:  # Table 3
        for d in range(profile.fewer_draws.get("segformer", profile.draws)):
            runs += [RunSpec("segformer", kind, loss, f, d) for kind, loss in
                     (("supervised", "bce"), ("partial", "iuc"), ("semi", "bce"))]
    return runs


# ---------------------------------------------------------------------------------------- one run
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
        augment="none", seed=0, device=device)  # the paper's protocol: no augmentation
    return config


def _init_worker(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def execute(spec: RunSpec, profile: Profile, out: Path, data: Path, device: str) -> dict:
    """Train (or resume) one run into ``OUT/runs/<name>``; returns what ``done.json`` records."""
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.splits import make_split
    from neoseg.train.baselines import write_pseudo_labels
    from neoseg.train.recipes import semi_supervised_config
    from neoseg.train.loop import train

    began = time.monotonic()
    run_dir = out / "runs" / spec.name
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
            supervised = out / "runs" / spec.needs / "best.pt"
            pseudo = out / "pseudo" / spec.needs
            if not (pseudo / "done").is_file():
                split = make_split(sessions, spec.fraction, seed=config.seed, draw=spec.draw)
                write_pseudo_labels(supervised, [s for s in split.train if not split.is_full(s)], pseudo, device)
                (pseudo / "done").write_text("")
            config = semi_supervised_config(config, supervised, pseudo)
        result = train(config, run_dir, resume=(run_dir / "config.json").is_file(), progress=False)
    finally:
        train_log.removeHandler(handler)
        train_log.propagate = True
        handler.close()
    with (run_dir / "metrics.csv").open(newline="") as f:
        epochs = len(list(csv.DictReader(f)))
    record = {"run": spec.name, "seconds": round(time.monotonic() - began, 1), "best_epoch": result.best_epoch,
              "epochs": epochs, "stopped_by": result.stopped_by, "best_val_loss": result.best_val_loss,
              "self_train_began": result.self_train_began, "recipe": spec.recipe,
              **dataclasses.asdict(spec)}
    (run_dir / "done.json").write_text(json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------------------------- the grid
def cohort_spec(profile: Profile):
    """The built-in cohort of ``profile``: anatomy v1 by default, the cohort the committed report was measured on."""
    from neoseg.data.synth import CohortSpec

    return CohortSpec(n_subjects=profile.cohort_subjects, grid=profile.cohort_grid, seed=0, anatomy=profile.cohort_anatomy)


def prepare_data(profile: Profile, out: Path, data: Path | None, progress: bool):
    """The dataset (``data``, or the built-in cohort written to ``OUT/cohort``) and its slice cache."""
    from neoseg.data.dhcp import find_sessions
    from neoseg.train.volumes import VolumeCache

    if data is None:
        from neoseg.data.synth import generate_cohort

        data = generate_cohort(out / "cohort", cohort_spec(profile), progress=progress)
    sessions = find_sessions(data)
    for size in sorted(set(profile.slice_size.values())):
        cache = VolumeCache(out / "cache", 0, size)
        for s in sessions:
            cache.get(s)
    return Path(data), sessions


def run_all(profile: Profile, out: Path, data: Path | None = None, device: str = "cpu", workers: int | None = None,
            only: str | None = None, progress: bool = True, start_runs: bool = True) -> dict:
    """Run every unfinished run of the grid (none with ``start_runs`` False), then rebuild
    ``results.csv`` and ``REPORT.md``."""
    from . import report

    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    began, started_at = time.monotonic(), datetime.now(timezone.utc)
    meta_path = out / "experiment.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"profile": profile.name, "invocations": []}
    meta["grid"] = profile.grid
    if meta["profile"] != profile.name:
        raise ValueError(f"{out} holds a '{meta['profile']}' experiment; use --profile {meta['profile']} or another --out")
    data, sessions = prepare_data(profile, out, data, progress)
    setup_seconds = time.monotonic() - began
    runs = [r for r in plan(profile) if only is None or only in r.name]
    done = {r.name for r in runs if (out / "runs" / r.name / "done.json").is_file()}
    todo = [r for r in runs if r.name not in done] if start_runs else []
    failed: dict[str, str] = {}
    log.info("%s: %d runs in the grid, %d finished, %d to run", out, len(runs), len(done), len(todo))
    gpus = _gpu_count() if device == "cuda" else 0
    workers = workers or (max(gpus, 1) if device == "cuda" else profile.workers)
    if todo:
        passes = sum(slice_passes(r, profile, sessions, out / "cache") for r in todo)
        rate = calibrate(profile, device)
        log.info("estimated time: at most %.0f min (%.2g slice passes at %.0f slices/s per run, %d runs at once; "
                 "early stopping usually ends runs sooner)", passes / rate / workers / 60, passes, rate, workers)
    with ProcessPoolExecutor(workers, mp_context=_spawn(), initializer=_init_worker,
                             initargs=(profile.threads,)) as pool:
        running, slots = {}, {}  # future -> spec; future -> GPU index (runs spread over the GPUs)
        while todo or running:
            late = profile.deadline_minutes is not None and (time.monotonic() - began) / 60 > profile.deadline_minutes
            if late and todo:
                log.warning("%.0f min deadline reached: %d runs not started", profile.deadline_minutes, len(todo))
                todo = []
            for spec in [r for r in todo if r.needs is None or r.needs in done]:
                if len(running) >= workers:
                    break
                todo.remove(spec)
                on = device
                if gpus > 1:
                    free = sorted(set(range(gpus)) - set(slots.values()))
                    on = f"cuda:{free[0] if free else 0}"
                future = pool.submit(execute, spec, profile, out, data, on)
                running[future] = spec
                if gpus > 1:
                    slots[future] = int(on.split(":")[1])
            for spec in [r for r in todo if r.needs in failed]:
                todo.remove(spec)
                failed[spec.name] = f"needs {spec.needs}, which failed"
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                spec = running.pop(future)
                slots.pop(future, None)
                try:
                    record = future.result()
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the grid
                    failed[spec.name] = f"{type(e).__name__}: {e}"
                    log.error("%s failed: %s (log: %s)", spec.name, failed[spec.name], out / "logs" / f"{spec.name}.log")
                    continue
                done.add(spec.name)
                log.info("[%d/%d] %s: %.0f s, best epoch %d of %d", len(done), len(runs), spec.name,
                         record["seconds"], record["best_epoch"], record["epochs"])
    rows = collect_results(out, runs)
    if start_runs:  # a report-only call is not an invocation of the grid: it adds no time
        meta["invocations"].append({"started": started_at.isoformat(timespec="seconds"),
                                    "seconds": round(time.monotonic() - began, 1),
                                    "setup_seconds": round(setup_seconds, 1), "workers": workers,
                                    "threads": profile.threads, "device": device, "failed": failed,
                                    "machine": machine()})
    meta["profile_settings"] = dataclasses.asdict(profile)
    meta["data"] = str(data)
    meta["sessions"] = len(sessions)
    meta_path.write_text(json.dumps(meta, indent=2))
    report.write_report(out, rows, meta, [r.name for r in runs])
    if start_runs:
        meta["invocations"][-1]["seconds"] = round(time.monotonic() - began, 1)  # with the report
        meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def slice_passes(spec: RunSpec, profile: Profile, sessions, cache: Path) -> float:
    """Training slices one run processes at most (its epoch cap), plus its validation passes at a
    third of the cost (no backward pass); the pseudo-labelling of a semi-supervised run is left out."""
    from neoseg.data.splits import make_split
    from neoseg.train.volumes import VolumeCache

    split = make_split(sessions, spec.fraction, seed=0, draw=spec.draw)
    stacks = VolumeCache(cache, 0, profile.slice_size[spec.model])
    count = lambda ss: sum(len(stacks.get(s).image) for s in ss)  # noqa: E731
    own = [s for s in split.train if spec.kind != "supervised" or split.is_full(s)]
    per_epoch = profile.steps_per_epoch * profile.batch_size if profile.steps_per_epoch else count(own)
    return profile.epochs[spec.model] * spec.budget * (per_epoch + count(split.val) / 3)


def calibrate(profile: Profile, device: str, steps: int = 3) -> float:
    """Training slices per second of one run (U-Net, the profile's batch, slice size and threads)."""
    import torch

    from neoseg.core.hierarchy import builtin
    from neoseg.train.losses import make_loss
    from neoseg.train.models import create_model

    threads = torch.get_num_threads()
    if profile.threads and device == "cpu":
        torch.set_num_threads(profile.threads)
    try:
        hierarchy = builtin()
        model = create_model("unet", 1, len(hierarchy), widths=list(profile.widths)).to(device)
        optimizer, loss = torch.optim.Adam(model.parameters()), make_loss("iuc", hierarchy)
        size, n = profile.slice_size["unet"], profile.batch_size
        image = torch.rand(n, 1, size, size, device=device)
        target = torch.randint(0, 3, (n, len(hierarchy), size, size), dtype=torch.uint8, device=device)
        for i in range(steps + 1):
            if i == 1:  # the first step warms up
                began = time.perf_counter()
            optimizer.zero_grad()
            loss(model(image), target).backward()
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * n / (time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")  # never fork a process that may hold OpenMP threads


def collect_results(out: Path, runs: list[RunSpec]) -> list[dict]:
    """Rebuild ``OUT/results.csv`` from the evaluation of every finished run."""
    rows = []
    for spec in runs:
        run_dir = out / "runs" / spec.name
        if not (run_dir / "done.json").is_file():
            continue
        with (run_dir / "evaluation.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                rows.append({"run": spec.name, "model": spec.model, "kind": spec.kind, "loss": spec.recipe,
                             "reduction": spec.reduction, "budget": spec.budget, "select": spec.select,
                             "fraction": spec.fraction, "draw": spec.draw, **{k: r[k] for k in EVALUATION_FIELDS}})
    if rows:
        with (out / "results.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return rows


def machine() -> dict:
    """The shared benchmark description of this machine, plus the operating system."""
    return {**common.machine(), "system": f"{platform.system()} {platform.release()}"}


# ---------------------------------------------------------------------------------------- CLI
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class ProfileName(str, Enum):
    cpu = "cpu"
    equal_steps = "equal-steps"
    paper = "paper"


class GridName(str, Enum):
    headline = "headline"
    full = "full"


@app.command()
def main(
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder (runs, results.csv, REPORT.md).")],
    profile: Annotated[ProfileName, typer.Option(help="cpu: the paper's protocol (equal epochs, early stopping) at "
                                                 "2 mm, for 2 CPU cores; equal-steps: the equal-step ablation at 4 mm; "
                                                 "paper: the paper's scale, for GPU machines.")] = ProfileName.cpu,
    grid: Annotated[Optional[GridName], typer.Option(help="headline: 2 % supervised / semi-supervised / IUC and the "
                                                     "100 % reference; full: Tables 1-3 and Appendix A (5 and 10 %, "
                                                     "HUC, WEIGHT, WNORM, SegFormer-B0). Default: the profile's.")] = None,
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="dHCP-layout dataset; default: the built-in cohort.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, auto.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Runs trained at once (default: the profile's).")] = None,
    draws: Annotated[Optional[int], typer.Option(help="Random draws per fraction (default: the profile's, 5).")] = None,
    only: Annotated[Optional[str], typer.Option(help="Run only the runs whose name contains this.")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Start no run: rebuild results.csv and "
                                              "REPORT.md from the runs finished so far.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run the paper's experiment grid (resumable) and write results.csv and REPORT.md."""
    from neoseg.cli.common import setup_logging, user_errors

    setup_logging()
    with user_errors("neoseg.benchmarks.experiments"):
        chosen = PROFILES[profile.value]
        if draws is not None:
            chosen = dataclasses.replace(chosen, draws=draws)
        if grid is not None:
            chosen = dataclasses.replace(chosen, grid=grid.value)
        from neoseg.train.ranks import resolve_device

        meta = run_all(chosen, out, data, str(resolve_device(device)), workers, only, progress=not quiet,
                       start_runs=not report_only)
    took = f" ({meta['invocations'][-1]['seconds'] / 60:.1f} min)" if not report_only else ""
    typer.echo(f"{out / 'REPORT.md'} written{took}")


if __name__ == "__main__":
    app()
