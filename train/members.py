"""A run of several members (``--members N``): models trained on one split with seeds ``seed``,
``seed + 1``, ... and used as one, their probabilities averaged (:mod:`.ensemble`).

The first member is the run itself, in ``OUT`` as any run; member ``k`` trains in ``OUT/member-k``
with the first one's resolved config (recipe, atlas mode, data, cache) but its own seed, the
split pinned to the first one's (``split_seed``), so every member holds out the same validation
and test scans and shares the cached registrations and slices. Each member is an ordinary run
(resumable on its own); the ensemble is then scored on the test scans into
``OUT/ensemble-evaluation.csv`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from neoseg.core.io import write_text

from . import loop
from .config import TrainConfig
from .loop import RunResult
from .ranks import init_ranks, resolve_device
from .rundir import cache_folder

log = logging.getLogger("neoseg.train")

ENSEMBLE_ROWS, ENSEMBLE_REPORT = "ensemble-evaluation.csv", "ensemble-evaluation.md"


@dataclass
class MembersResult:
    runs: list[RunResult | None]  # each member's training, the run in OUT first (None: finished before)
    checkpoints: list[Path]  # every member's best.pt, member 0 first
    rows: list[dict]  # the ensemble's test evaluation (the first member's where there is one member)
    table: str


def member_dirs(out: Path, members: int) -> list[Path]:
    """The run folders of a run of ``members`` members: ``out`` itself, then ``out/member-k``."""
    return [out] + [out / f"member-{k}" for k in range(1, members)]


def run_checkpoints(paths: list[Path]) -> list[Path]:
    """Models named on a command line: a run folder stands for its members' ``best.pt`` (its own,
    or every member's of a ``--members`` run, which must all have finished); a file for itself. A
    lone ``best.pt`` of a run of several members is taken as it is, with a note that it is one."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            if len(paths) == 1:
                note_lone_member(path, f"`{path.parent}` names all of them")
            found.append(path)
            continue
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a folder but not a neoseg-train run (no config.json); name the run's folder "
                             f"or a checkpoint file (best.pt)")
        dirs = member_dirs(path, _members_of(path))
        for folder in dirs:
            if not (folder / "best.pt").is_file() or (len(dirs) > 1 and not finished(folder)):
                raise ValueError(f"{folder} has not finished training: the run in {path} has {len(dirs)} members; "
                                 f"continue it with neoseg-train --out {path} --resume")
            found.append(folder / "best.pt")
    return found


def note_lone_member(checkpoint: Path, how_all: str) -> None:
    """Warn where ``checkpoint`` is the first member's ``best.pt`` of a run of several, saying
    ``how_all`` the members are used together."""
    members = _members_of(checkpoint.parent) if checkpoint.name == "best.pt" else 1
    if members > 1:
        log.warning("%s is the first of the %d members of the run in %s; %s", checkpoint, members,
                    checkpoint.parent, how_all)


def finished(run: Path) -> bool:
    """A run is finished once its test evaluation is written (after its last epoch)."""
    return (run / "evaluation.csv").is_file()


def _members_of(run: Path) -> int:
    """How many members the run in ``run`` trains (1 where its config.json has none, or it has none)."""
    config = run / "config.json"
    return int(json.loads(config.read_text()).get("members", 1)) if config.is_file() else 1


def member_config(first: TrainConfig, out: Path, k: int) -> TrainConfig:
    """Member ``k``'s config: the first member's resolved one with seed ``seed + k`` on the first
    member's split and cache (an absolute path); one model itself."""
    return dataclasses.replace(first, seed=first.seed + k, split_seed=first.split_seed_used, members=1,
                               cache=str(cache_folder(first, out).resolve()))


def train_members(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True) -> MembersResult:
    """Train the run in ``out`` (its members resolved from ``config.members``), then every further
    member, and score them as one. With ``resume`` each member continues where it stopped, and a
    finished member of a run of several is not opened again (a run of one model resumes as
    before). Under torchrun every rank calls this, within one process group; rank 0 returns the
    evaluation, the others empty rows."""
    ranks, created = init_ranks(resolve_device(config.device))
    try:
        done = resume and (out / "config.json").is_file() and _members_of(out) > 1 and finished(out)
        first = None if done else loop.train(config, out, resume=resume, progress=progress)
        stored = TrainConfig.from_json((out / "config.json").read_text())
        dirs = member_dirs(out, stored.members)
        runs = [first] + [None] * (len(dirs) - 1)  # None: finished before
        # every rank decides from the same files, read before rank 0 writes the next member's
        todo = [(k, folder, (folder / "config.json").is_file()) for k, folder in enumerate(dirs) if k and not
                finished(folder)]
        ranks.barrier()
        for k, folder, started in todo:
            log.info("member %d of %d: seed %d, into %s", k + 1, len(dirs), stored.seed + k, folder)
            runs[k] = loop.train(member_config(stored, out, k), folder, resume=started, progress=progress)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    checkpoints = [folder / "best.pt" for folder in dirs]
    if not ranks.main:
        return MembersResult(runs, checkpoints, [], "")
    if len(dirs) == 1:
        return MembersResult(runs, checkpoints, runs[0].rows, runs[0].table)
    return MembersResult(runs, checkpoints, *_evaluate(stored, out, checkpoints))


def _evaluate(config: TrainConfig, out: Path, checkpoints: list[Path]) -> tuple[list[dict], str]:
    """The members as one model (the mean of their probabilities) on the run's test scans."""
    from .evaluate import checkpoint_segmenter, evaluate_sessions, report, write_rows
    from .recipes import dataset_split

    segmenter, _ = checkpoint_segmenter(checkpoints, config.device, own_split=True)
    rows = evaluate_sessions(segmenter, list(dataset_split(config).test))
    write_rows(out / ENSEMBLE_ROWS, rows)
    table = report(rows, hierarchy=segmenter.info.hierarchy)
    write_text(out / ENSEMBLE_REPORT, f"# Test evaluation of the {len(checkpoints)} members as one model (the mean "
               f"of their probabilities)\n\nMembers: {', '.join(str(c) for c in checkpoints)}\n\n{table}\n",
               overwrite=True)
    return rows, table
