"""The early stopping and self-training schedule (train/schedule.py), without any training."""

import math

import pytest

from neoseg.train.schedule import Schedule, Step


def feed(schedule, scores, start=1):
    """Run ``schedule`` over per-epoch ``scores`` as the training loop does; the steps taken and
    the epoch it stopped before (None: ran out of scores)."""
    steps = []
    for epoch, score in enumerate(scores, start):
        step = schedule.before_epoch(epoch)
        if step is Step.STOP:
            return steps, epoch
        steps.append(step)
        schedule.after_epoch(epoch, score, val_loss=score + 1)
    return steps, None


def test_plain_early_stopping_after_patience_epochs_without_improvement():
    schedule = Schedule(patience=2)
    steps, stopped = feed(schedule, [3.0, 2.0, 2.5, 2.0, 1.0, 9.0])
    assert stopped == 5 and steps == [Step.TRAIN] * 4  # epochs 3 and 4 do not improve on epoch 2
    assert (schedule.best_epoch, schedule.best_score, schedule.best_loss) == (2, 2.0, 3.0)
    assert schedule.stopped_by == "early stopping" and schedule.self_train_began is None


def test_a_nan_score_never_improves_and_nothing_stops_before_a_first_improvement():
    schedule = Schedule(patience=1)
    steps, stopped = feed(schedule, [math.nan] * 4)
    assert stopped is None and len(steps) == 4 and schedule.best_epoch == 0


def test_self_training_begins_at_the_plateau_and_counts_patience_afresh():
    schedule = Schedule(patience=1, self_training=True)
    assert not schedule.teacher_tracks  # the teacher is reset at the plateau: no tracking before
    steps, stopped = feed(schedule, [1.0, 2.0, 0.5, 0.7, 0.8, 0.9])
    # epoch 3 would stop plain training: self-training begins there, from the best weights (epoch 1)
    assert steps[:3] == [Step.TRAIN, Step.TRAIN, Step.SELF_TRAIN_FROM_BEST]
    assert schedule.self_train_began == 3 and schedule.self_training_on and schedule.teacher_tracks
    # patience counts afresh from epoch 2, the one before self-training: epoch 3 improves, 4 does not, 5 stops
    assert stopped == 5 and schedule.best_epoch == 3 and schedule.stopped_by == "early stopping"


def test_self_training_without_improvement_stops_patience_epochs_after_it_began():
    schedule = Schedule(patience=1, self_training=True)
    steps, stopped = feed(schedule, [1.0] * 10)
    assert steps == [Step.TRAIN, Step.TRAIN, Step.SELF_TRAIN_FROM_BEST] and stopped == 4


def test_a_fixed_start_begins_self_training_after_that_epoch_with_the_teacher_tracking_from_the_start():
    schedule = Schedule(patience=5, self_training=True, self_train_after=2)
    assert schedule.teacher_tracks and not schedule.self_training_on
    began = []
    for epoch in range(1, 5):
        assert schedule.before_epoch(epoch) is Step.TRAIN  # no reset to the best weights
        began.append(schedule.self_training_on)
        schedule.after_epoch(epoch, 1.0 / epoch, 0.0)
    assert began == [False, False, True, True] and schedule.self_train_began == 3


def test_without_self_training_a_fixed_start_is_ignored():
    schedule = Schedule(patience=5, self_training=False, self_train_after=0)
    schedule.before_epoch(1)
    assert schedule.self_train_began is None and not schedule.teacher_tracks
    assert "self_train_began" not in schedule.state()


def test_the_time_budget_stops_before_an_epoch_and_the_ranks_decide_together():
    schedule = Schedule(patience=5, max_minutes=2.0)
    assert schedule.before_epoch(1, minutes=1.9) is Step.TRAIN
    votes = []
    assert schedule.before_epoch(2, minutes=1.0, any_rank=lambda flag: votes.append(flag) or True) is Step.STOP
    assert votes == [False] and schedule.stopped_by == "time budget"  # another rank was over budget
    unlimited = Schedule(patience=5)
    assert unlimited.before_epoch(1, minutes=1e9, any_rank=lambda flag: pytest.fail("no vote without a budget")) \
        is Step.TRAIN


def test_the_state_round_trips_through_last_pt_and_resumes_the_same_decisions():
    scores = [1.0, 2.0, 2.0, 2.0, 0.5, 0.7, 0.8, 0.9, 1.0]
    straight = Schedule(patience=2, self_training=True)
    expected = feed(straight, scores)

    first = Schedule(patience=2, self_training=True)
    feed(first, scores[:4])  # four epochs, self-training began at the fourth
    state = {"epoch": 4, **first.state()}
    assert set(state) == {"epoch", "best_val_loss", "best_score", "best_epoch", "self_train_began"}
    resumed = Schedule(patience=2, self_training=True)
    start = resumed.restore(state)
    assert start == 5 and resumed.self_train_began == 4 and resumed.best_epoch == 1
    steps, stopped = feed(resumed, scores[4:], start)
    assert expected == (expected[0][:4] + steps, stopped) and stopped == 8  # best epoch 5, patience 2
    assert Step.SELF_TRAIN_FROM_BEST not in steps  # the resumed run does not begin self-training again
    assert (resumed.best_epoch, resumed.best_score) == (straight.best_epoch, straight.best_score)


def test_runs_from_before_best_score_resume_with_the_validation_loss_as_score():
    schedule = Schedule(patience=3)
    assert schedule.restore({"epoch": 7, "best_val_loss": 0.25, "best_epoch": 5}) == 8
    assert schedule.best_score == 0.25 and schedule.self_train_began is None


def test_the_warning_when_self_training_never_began(caplog):
    schedule = Schedule(patience=30, self_training=True)
    feed(schedule, [1.0, 0.9])
    with caplog.at_level("WARNING", logger="neoseg.train"):
        schedule.finish()
    assert "self-training never began" in caplog.text and "epoch cap" in caplog.text
