"""Checks run once before training, so that a run fails in seconds, not at its first bad batch or
at the test evaluation hours later."""

from __future__ import annotations

from pathlib import Path

from neoseg.core.hierarchy import Hierarchy
from neoseg.core.thresholds import check_thresholds

from .config import TrainConfig
from .volumes import SliceStack

SHOWN_FILES = 5  # files listed by name in an error; the rest are counted


def check_before_training(config: TrainConfig, hierarchy: Hierarchy, stacks: list[SliceStack],
                          test_values: dict[Path, list[int]]) -> None:
    """Refuse thresholds that do not fit the hierarchy's channels, and label maps (of the training
    and validation ``stacks``, and the test label files with the values found in them) with values
    the hierarchy does not name, each reported by file and value."""
    check_thresholds(config.thresholds, hierarchy.names, "config thresholds")
    found: dict[Path, list[int]] = {Path(s.session.labels): list(s.values) for s in stacks if s.session.labels}
    check_label_values(hierarchy, {**test_values, **found})


def check_label_values(hierarchy: Hierarchy, found: dict[Path, list[int]]) -> None:
    """``found``: the label values of each label file. Raises ValueError listing the files whose
    values ``hierarchy`` does not name, with those values."""
    bad = {path: hierarchy.unnamed(values) for path, values in found.items()}
    bad = {path: values for path, values in bad.items() if values}
    if not bad:
        return
    listed = "; ".join(f"{path}: {', '.join(map(str, values))}" for path, values in list(bad.items())[:SHOWN_FILES])
    more = f"; and {len(bad) - SHOWN_FILES} more files" if len(bad) > SHOWN_FILES else ""
    raise ValueError(f"{len(bad)} label map(s) hold values that hierarchy '{hierarchy.name}' does not name "
                     f"(it names {hierarchy.label_values}): {listed}{more}; pass the hierarchy the maps were "
                     f"labelled with (--hierarchy FILE) or fix the maps")
