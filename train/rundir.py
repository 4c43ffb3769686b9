"""The run folder: config.json written once, the per-epoch metrics.csv, and split.json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from neoseg.core.io import check_can_write, write_text
from neoseg.data.dhcp import Session
from neoseg.data.splits import Split

from .config import TrainConfig

METRICS_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "val_child_dice", "best", "seconds"]


class RunExistsError(FileExistsError):
    pass


def stored_config(out: Path, resume: bool) -> TrainConfig | None:
    """The config of the run in ``out`` to resume, or None where ``out`` may hold a new run (it is
    absent or empty); refuses a run folder without ``resume``, and any other non-empty folder."""
    config_path = out / "config.json"
    if config_path.is_file():
        if not resume:
            raise RunExistsError(f"{out} already holds a training run; pass --resume to continue it, "
                                 f"or choose another --out")
        return TrainConfig.from_json(config_path.read_text())
    if out.exists() and any(out.iterdir()):
        raise RunExistsError(f"{out} exists and is not empty (and holds no neoseg run); choose another --out")
    check_can_write(config_path)
    return None


def cache_folder(config: TrainConfig, out: Path) -> Path:
    """The run's cache folder: ``config.cache``, else ``<out>/cache``."""
    return Path(config.cache) if config.cache else out / "cache"


def create_run_dir(out: Path, config: TrainConfig) -> None:
    """Make ``out`` (checked by :func:`stored_config`) and write the run's config.json, once."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.json", config.to_json())


def append_metrics(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_metrics(path: Path, start: int) -> None:
    """Drop rows of epochs that the resumed checkpoint does not include (replacing the file at once)."""
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue(), overwrite=True)


def trained_seconds(path: Path, before_epoch: int) -> float:
    """The seconds ``metrics.csv`` records for the epochs before ``before_epoch``: what a resumed run
    has spent of its time budget already."""
    if not path.is_file():
        return 0.0
    with path.open(newline="") as f:
        return sum(float(r["seconds"] or 0) for r in csv.DictReader(f) if int(r["epoch"]) < before_epoch)


def read_split(checkpoint: Path) -> tuple[dict, Path] | None:
    """The subject split of the checkpoint's run (``split.json`` beside it, :func:`write_split`)
    and its file, or None where there is none."""
    path = Path(checkpoint).parent / "split.json"
    if not path.is_file():
        return None
    split = json.loads(path.read_text())
    if not all(isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise ValueError(f"{path} is not a neoseg run's split (it lacks train, val and test subject lists); "
                         f"move it away or pass --data FOLDER")
    return split, path


def check_same_split(path: Path, split: Split) -> None:
    """Raise unless ``split`` holds the subjects of the run's ``split.json`` (if any) in each part:
    a resumed run must not train or select on other subjects than it began with."""
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is damaged (not JSON); restore it, or start a new run with another --out") from None
    names = lambda ss: sorted({s.subject for s in ss})  # noqa: E731
    for part, sessions in (("train", split.train), ("val", split.val), ("test", split.test)):
        if stored.get(part) != names(sessions):
            raise ValueError(f"{path}: the data now split its subjects otherwise ({part} differs: subjects added or "
                             f"removed since the run began, or annotated so that they moved between parts, or "
                             f"another neoseg version); resume with the data as it was, or start a new run with "
                             f"another --out")


def write_split(path: Path, split: Split, trained_on: list[Session]) -> None:
    """The subjects of each part of ``split``, and the sessions actually trained on."""
    names = lambda ss: sorted({s.subject for s in ss})  # noqa: E731
    write_text(path, json.dumps({"train": names(split.train), "val": names(split.val), "test": names(split.test),
                                 "fully_labelled": sorted(split.fully_labelled),
                                 "trained_on": sorted(s.key for s in trained_on)}, indent=2), overwrite=True)
