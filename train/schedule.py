"""When training stops, and when self-training begins (docs/method.md; train/selftrain.py).

Early stopping: the run ends once ``patience`` epochs have passed without a better validation
score since the best epoch (or since self-training began, whichever is later). With self-training
that waits for the plateau, the first such stop instead begins self-training from the best
epoch's weights, and patience is counted afresh; ``self_train_after`` N begins it after epoch N
instead. A time budget ends the run before an epoch once it has run ``max_minutes``.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import Callable

log = logging.getLogger("neoseg.train")


CRITERIA = {"val-loss": "validation loss", "child-dice": "validation child Dice"}  # config.SELECTIONS, in words


class Step(enum.Enum):
    TRAIN = "train"
    SELF_TRAIN_FROM_BEST = "begin self-training from the best weights, then train"
    STOP = "stop"


class Schedule:
    """The early stopping and self-training state of a run, fed each epoch's validation score."""

    def __init__(self, patience: int, self_training: bool = False, self_train_after: int | None = None,
                 max_minutes: float | None = None, select: str = "val-loss"):
        self.patience, self.self_training, self.select = patience, self_training, select
        self.self_train_after, self.max_minutes = self_train_after, max_minutes
        self.best_score, self.best_loss, self.best_epoch = math.inf, math.inf, 0
        self.self_train_began: int | None = None  # the epoch self-training began
        self.stopped_by = "epoch cap"  # or "early stopping", "time budget"

    @classmethod
    def of(cls, config) -> "Schedule":
        """The schedule of a :class:`~neoseg.train.config.TrainConfig`."""
        return cls(config.patience, config.self_training, config.self_train_after, config.max_minutes, config.select)

    def before_epoch(self, epoch: int, minutes: float = 0.0,
                     any_rank: Callable[[bool], bool] = bool) -> Step:
        """What to do before ``epoch``, the run having trained ``minutes`` so far; ``any_rank``
        combines the time budget's verdict over the ranks (they must agree)."""
        step = Step.TRAIN
        since = max(self.best_epoch, (self.self_train_began or 1) - 1)
        if epoch - since > self.patience and self.best_epoch > 0:
            if not self.self_training or self.self_train_began is not None:
                log.info("early stop: no improvement of the %s (--select %s) for %d epochs",
                         CRITERIA.get(self.select, self.select), self.select, self.patience)
                self.stopped_by = "early stopping"
                return Step.STOP
            self.self_train_began = epoch  # the plain loss has plateaued
            log.info("self-training from epoch %d, starting from the best weights (epoch %d)", epoch, self.best_epoch)
            step = Step.SELF_TRAIN_FROM_BEST
        if self.self_training and self.self_train_began is None and self.self_train_after is not None \
                and epoch > self.self_train_after:
            self.self_train_began = epoch
        if self.max_minutes is not None and any_rank(minutes > self.max_minutes):
            log.info("time budget of %.1f min reached", self.max_minutes)
            self.stopped_by = "time budget"
            return Step.STOP
        return step

    def after_epoch(self, epoch: int, score: float, val_loss: float) -> bool:
        """Record ``epoch``'s score (lower is better); whether it improved on the best. A NaN score
        never improves."""
        improved = score < self.best_score
        if improved:
            self.best_score, self.best_loss, self.best_epoch = score, val_loss, epoch
        return improved

    @property
    def self_training_on(self) -> bool:
        """Whether the teacher completes the targets of this epoch."""
        return self.self_train_began is not None

    @property
    def teacher_tracks(self) -> bool:
        """Whether the EMA teacher follows the student this epoch: from the start for a fixed start
        epoch; when self-training waits for the plateau, the teacher is reset to the best weights
        then, so earlier updates would be wasted."""
        return self.self_training and (self.self_train_after is not None or self.self_train_began is not None)

    def state(self) -> dict:
        """The entries of last.pt that :meth:`restore` reads back."""
        state = {"best_val_loss": self.best_loss, "best_score": self.best_score, "best_epoch": self.best_epoch}
        if self.self_training:
            state["self_train_began"] = self.self_train_began
        return state

    def restore(self, state: dict) -> int:
        """Continue from last.pt's ``state`` (runs from before ``best_score`` too); the next epoch."""
        self.best_loss, self.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.best_score = state.get("best_score", self.best_loss)
        if self.self_training:
            self.self_train_began = state.get("self_train_began")
        return state["epoch"] + 1

    def finish(self) -> None:
        if self.self_training and self.self_train_began is None:
            log.warning("self-training never began: the plain loss had not plateaued when the run ended (%s); "
                        "pass --self-train-after N to start it after epoch N", self.stopped_by)
