"""Subject-level splits (all sessions of a subject on one side) and the fully labelled draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neoseg.core.partial import BRAIN

from .dhcp import Session


@dataclass(frozen=True)
class Split:
    train: tuple[Session, ...]
    val: tuple[Session, ...]
    test: tuple[Session, ...]
    fully_labelled: frozenset[str]  # training subjects that keep their full labels
    partial_sessions: frozenset[str] = frozenset()  # keys of sessions whose files are partial (not simulated)

    def is_full(self, session: Session) -> bool:
        return session.subject in self.fully_labelled

    def coarsened(self, session: Session) -> bool:
        """True for a training session whose full labels are coarsened to simulate partial ones."""
        return not self.is_full(session) and session.key not in self.partial_sessions


def split_subjects(subjects: list[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Shuffle subjects by seed and cut them train/val/test; val and test get at least one each."""
    subjects = sorted(set(subjects))
    if len(subjects) < 3:
        raise ValueError(f"need at least 3 subjects for a train/val/test split, found {len(subjects)}")
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_val = max(1, round(fractions[1] * len(order)))
    n_test = max(1, round(fractions[2] * len(order)))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def choose_fully_labelled(train_subjects: list[str], fraction: float, draw: int = 0) -> frozenset[str]:
    """The training subjects that stay fully labelled: ``fraction`` of them (at least one when
    fraction > 0), random by ``draw``; the rest are coarsened to partial labels."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fully labelled fraction must be in [0, 1], got {fraction}")
    n = 0 if fraction == 0 else max(1, round(fraction * len(train_subjects)))
    rng = np.random.default_rng(10_007 + draw)
    return frozenset(rng.choice(sorted(train_subjects), size=n, replace=False).tolist())


def make_split(sessions: list[Session], full_fraction: float, seed: int = 0, draw: int = 0,
               fractions=(0.8, 0.1, 0.1)) -> Split:
    train, val, test = split_subjects([s.subject for s in sessions], fractions, seed)
    pick = lambda names: tuple(s for s in sessions if s.subject in set(names))  # noqa: E731
    return Split(pick(train), pick(val), pick(test), choose_fully_labelled(train, full_fraction, draw))


def split_by_annotation(sessions: list[Session], partial: dict[str, bool], seed: int = 0,
                        fractions=(0.8, 0.1, 0.1)) -> Split:
    """The split of a dataset that holds really partial sessions (``partial``: by session key).
    Subjects with every session fully labelled and the others are split apart, each by
    ``fractions``, so that the training side keeps fully labelled subjects; with three or more
    partial subjects that know a structure (a label map, a structure's mask), those with brain
    masks only are split apart from them, so that validation and test hold one of them. A group of
    fewer than three subjects trains whole (with fewer than three fully labelled subjects
    validation and test score only what partial sessions know). ``fully_labelled`` holds the fully
    labelled training subjects."""
    subjects = sorted({s.subject for s in sessions})
    full = [x for x in subjects if not any(partial[s.key] for s in sessions if s.subject == x)]
    if not full:
        raise ValueError("the dataset has no fully labelled session (a drawem9 label map without any parent's "
                         "own value, e.g. TCV = 10); the children cannot be learned: fully label at least one session")
    brain_only = [x for x in subjects if x not in full and all(_brain_only(s) for s in sessions if s.subject == x)]
    known = [x for x in subjects if x not in full and x not in brain_only]
    groups = (full, known, brain_only) if len(known) >= 3 else (full, known + brain_only)
    sides = [[], [], []]
    for group in groups:
        parts = split_subjects(group, fractions, seed) if len(group) >= 3 else (group, [], [])
        for side, names in zip(sides, parts):
            side += names
    if not sides[1] or not sides[2]:
        raise ValueError(f"{len(subjects)} subjects are too few for a train/validation/test split with "
                         f"{len(full)} fully labelled; add subjects (at least 3 partially or 3 fully labelled)")
    pick = lambda names: tuple(s for s in sessions if s.subject in set(names))  # noqa: E731
    return Split(pick(sides[0]), pick(sides[1]), pick(sides[2]), frozenset(x for x in full if x in sides[0]),
                 frozenset(k for k, p in partial.items() if p))


def _brain_only(session: Session) -> bool:
    """True for a session annotated by a brain mask alone (it scores no structure)."""
    return session.labels is None and all(name == BRAIN for name, _ in session.masks)
