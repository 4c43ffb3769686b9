"""The paper's training recipes as configs, and the sessions a config trains on.

* The supervised baseline: BCE on the fully labelled training subjects only
  (:func:`supervised_config`); a run asked for ``bce`` on a partially labelled split becomes it
  (:func:`resolve_recipe`).
* The semi-supervised fine-tuning: BCE on every training subject from the supervised model, with
  pseudo label maps in place of the partial ones (:func:`semi_supervised_config`; the maps are
  written by :func:`neoseg.train.baselines.write_pseudo_labels` at :func:`pseudo_label_path`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from neoseg.core.hierarchy import Hierarchy, resolve
from neoseg.core.once import warn_once
from neoseg.data.dhcp import LABEL_SUFFIX, Session
from neoseg.data.splits import Split, make_split, split_by_annotation

from .config import TrainConfig, dataset_sessions
from .volumes import partial_sessions

log = logging.getLogger("neoseg.train")


def dataset_split(config: TrainConfig, progress: bool = False, hierarchy: Hierarchy | None = None) -> Split:
    """The subject split of ``config``'s data. A dataset whose files hold partial annotations is
    split by them (:func:`~neoseg.data.splits.split_by_annotation`); a fully labelled one by
    ``--full-fraction``, the simulation of partial labels. ``hierarchy``: a model's own (None:
    ``config.hierarchy``'s, read again)."""
    hierarchy = hierarchy or resolve(config.hierarchy)
    sessions = dataset_sessions(config, progress, hierarchy)
    partial = partial_sessions(sessions, hierarchy) if config.data is not None else {}
    if not any(partial.values()):
        return make_split(sessions, config.full_fraction, seed=config.split_seed_used, draw=config.draw)
    log.info("%s holds %d fully and %d partially labelled sessions (read from the files; --full-fraction "
             "applies to fully labelled datasets only)", config.data, sum(not p for p in partial.values()),
             sum(partial.values()))
    split = split_by_annotation(sessions, partial, seed=config.split_seed_used)
    _warn_unscored_children(split, hierarchy, config.data)
    return split


def _warn_unscored_children(split: Split, hierarchy: Hierarchy, data) -> None:
    """Say it where validation and test hold no fully labelled session (with fewer than three fully
    labelled subjects all of them train): the children are then neither validated nor scored."""
    if any(s.key not in split.partial_sessions for s in (*split.val, *split.test)):
        return
    children = sorted({hierarchy.names[k] for _, kids in hierarchy.sibling_groups for k in kids})
    warn_once(log, ("unscored children", str(data)),
              "%s: no fully labelled session in validation or test (with fewer than 3 fully labelled subjects, "
              "all of them train): %s are neither validated nor scored at the end of training, and the best epoch "
              "is chosen on what the validation sessions know; score the model on fully labelled scans with "
              "neoseg-eval MODEL --data FOLDER", data, ", ".join(children) or "the children")


def supervised_config(config: TrainConfig, split: Split) -> TrainConfig:
    """``config`` as the supervised baseline: BCE, trained on the fully labelled subjects only."""
    if not split.fully_labelled:
        raise ValueError("the supervised baseline needs at least one fully labelled training subject; "
                         "raise full_fraction")
    return dataclasses.replace(config, loss="bce", reduction="mean", train_subjects=sorted(split.fully_labelled),
                               init_from=None, pseudo_labels=None)


def semi_supervised_config(config: TrainConfig, supervised_checkpoint: str | Path,
                           pseudo_labels: str | Path) -> TrainConfig:
    """``config`` as the semi-supervised fine-tuning: BCE on every training subject, starting from the
    supervised model, with the pseudo label maps in place of the partial ones."""
    return dataclasses.replace(config, loss="bce", reduction="mean", train_subjects=None,
                               init_from=str(supervised_checkpoint), pseudo_labels=str(pseudo_labels))


def resolve_recipe(config: TrainConfig, split: Split) -> TrainConfig:
    """The config a new run trains with: plain BCE cannot learn from partial labels, so ``bce`` on
    a split with partially labelled training subjects (and no pseudo labels or chosen subjects) is
    the supervised baseline; ``--members auto`` becomes 3 or 1 (:func:`resolve_members`), then
    ``--atlas auto`` ``propagate``, ``pairs`` or ``none`` (:func:`resolve_atlas`). Resolved before the
    run's config.json is written."""
    if config.loss == "bce" and config.pseudo_labels is None and config.train_subjects is None \
            and any(not split.is_full(s) for s in split.train):
        config = supervised_config(config, split)
        log.info("loss bce with partially labelled training subjects: the supervised baseline, trained on the %d "
                 "fully labelled subject(s) only (config.json says so: train_subjects)", len(config.train_subjects))
    if config.members == "auto":
        config = resolve_members(config, split)
    return resolve_atlas(config, split) if config.atlas == "auto" else config


def resolve_members(config: TrainConfig, split: Split) -> TrainConfig:
    """``--members auto``: 3 where the run trains a partial-label loss on one fully labelled subject
    beside partially labelled sessions (at 2 % the only recipe that met its target on the worst draw
    was three models as one, docs/atlas.md), else 1 (with two fully labelled subjects one model did)."""
    full, _ = _partial_label_training(config, split)
    members = 3 if len({s.subject for s in full}) == 1 else 1
    if members > 1:
        log.info("--members auto: %d models trained with seeds %d to %d on one split and used as one (one fully "
                 "labelled subject; about %d times the training time; --members 1 trains one)", members,
                 config.seed, config.seed + members - 1, members)
    return dataclasses.replace(config, members=members)


def resolve_atlas(config: TrainConfig, split: Split) -> TrainConfig:
    """``--atlas auto``, where the run trains a partial-label loss on fully and partially labelled
    sessions of its own: ``pairs`` with two or more fully labelled subjects, and with one where the
    run trains several members, else ``propagate`` (the recipes that won on the worst draw at 2 %
    and 5 %, docs/atlas.md); ``none`` where there is nothing to register (all fully labelled, the
    supervised baseline, pseudo labels in place of the partial maps)."""
    full, sessions = _partial_label_training(config, split)
    if not full:
        return dataclasses.replace(config, atlas="none")
    subjects = len({s.subject for s in full})
    mode = "propagate" if subjects == 1 and config.members == 1 else "pairs"
    log.info("--atlas auto: %s (%d fully labelled subject(s), %d session(s), registered to the %d partially labelled "
             "sessions; --atlas none trains without)", mode, subjects, len(full), len(sessions) - len(full))
    return dataclasses.replace(config, atlas=mode)


def _partial_label_training(config: TrainConfig, split: Split) -> tuple[list[Session], list[Session]]:
    """The fully labelled training sessions and all training sessions of a run that trains a
    partial-label loss on both fully and partially labelled ones; ([], []) for any other run."""
    sessions = _chosen_sessions(config, split)
    full = [s for s in sessions if split.is_full(s)]
    if config.loss == "bce" or config.pseudo_labels is not None or not 0 < len(full) < len(sessions):
        return [], []
    return full, sessions


def pseudo_label_path(root: str | Path, session: Session) -> Path:
    """Where a pseudo label map of ``session`` lies in a dHCP-layout folder."""
    return Path(root) / f"sub-{session.subject}" / f"ses-{session.session}" / "anat" / f"{session.key}{LABEL_SUFFIX}"


def training_sessions(config: TrainConfig, split: Split) -> tuple[list[Session], list[bool]]:
    """The sessions ``config`` trains on (its ``train_subjects`` of the split's training part, with
    their pseudo label maps where it names them), and which of them to coarsen (the simulation of
    partial labels; sessions whose files are partial are read as they are)."""
    sessions = _chosen_sessions(config, split)
    if not sessions:
        raise ValueError("no training sessions left; check --train-subjects")
    partial = [split.coarsened(s) for s in sessions]
    if config.pseudo_labels is None:
        return sessions, partial
    if split.partial_sessions:
        raise ValueError("pseudo labels replace simulated partial labels; this dataset's partial sessions are partial "
                         "in their files, so train them with a partial-label loss (iuc, labelset) instead")
    return [with_label_map(s, config.pseudo_labels) if p else s for s, p in zip(sessions, partial)], \
        [False] * len(sessions)


def _chosen_sessions(config: TrainConfig, split: Split) -> list[Session]:
    """The split's training sessions of ``config.train_subjects`` (all where it names none)."""
    return [s for s in split.train if config.train_subjects is None or s.subject in config.train_subjects]


def with_label_map(session: Session, root: str | Path) -> Session:
    """``session`` with the label map of a dHCP-layout folder of label maps (pseudo labels, atlas
    propagation) in place of its own; the map must be there."""
    path = pseudo_label_path(root, session)
    if not path.is_file():
        raise ValueError(f"label map folder {root} has no label map for {session.key} (expected {path}); "
                         f"write them first (neoseg.train.baselines.write_pseudo_labels, or --atlas propagate)")
    return dataclasses.replace(session, labels=path)
