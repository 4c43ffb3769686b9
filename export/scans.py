"""The scans an export is verified and gated on, and those INT8 is calibrated on.

A checkpoint of ``neoseg-train`` lies in its run folder beside ``split.json``
(:func:`neoseg.train.rundir.write_split`). Where the scans come from that run's data, the gate takes
the run's test sessions, then its validation sessions, never a training subject; INT8 is calibrated
on training sessions. Without a known split (no ``split.json`` beside the checkpoint, or a folder
named by ``--data``/``--calibration-data`` other than the run's data) the first scans of the folder
are taken, calibration never on a scan gated on, and the record says so and names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELD_OUT = ("test", "val")  # the parts of a run's split the gate draws on, in order
PART_NAMES = {"test": "test", "val": "validation"}


@dataclass(frozen=True)
class Scans:
    """Whole scans, loaded: (canonical array, NIfTI image) pairs, their session keys and where they
    come from (stored in the parity records)."""

    images: list
    keys: tuple[str, ...]
    source: str

    @classmethod
    def load(cls, sessions: list, source: str) -> "Scans":
        from neoseg.train.volumes import load_canonical

        return cls([load_canonical(s.t2, np.float32) for s in sessions], tuple(s.key for s in sessions), source)

    def __len__(self) -> int:
        return len(self.images)


def verification_sessions(checkpoint: Path, config, data: Path | None, n: int) -> tuple[list, str]:
    """Up to ``n`` sessions to verify the export and gate its reduced precisions on, and where they
    come from: the run's test, then validation sessions where its split is known (see the module)."""
    from .onnx_export import scan_sessions

    sessions = scan_sessions(config, data, "verify the export on", "pass --data ROOT or --verify-scans 0")
    split = _split_of(checkpoint, config, data)
    if split is None:
        return sessions[:n], _unknown(checkpoint, config, data, "the first scans of")
    (parts, path), present = split, {s.subject for s in sessions}
    missing = sorted(set(parts["test"]) - present)
    if missing:
        raise ValueError(f"{path} names test subjects that the checkpoint's data lacks ({', '.join(missing[:3])}); "
                         f"is it the split of this checkpoint's run? Pass --data FOLDER to verify on other scans")
    chosen = [s for part in HELD_OUT for s in sessions if s.subject in set(parts[part])][:n]
    used = [PART_NAMES[p] for p in HELD_OUT if any(s.subject in set(parts[p]) for s in chosen)]
    return chosen, f"held out: the {' and '.join(used)} sessions of the run's split ({path.name})"


def calibration_sessions(checkpoint: Path, config, data: Path | None, n: int, verified: list) -> tuple[list, str]:
    """Up to ``n`` sessions to calibrate INT8 on, none of ``verified`` (by file or session key), and
    where they come from: the run's training sessions where its split is known."""
    from .onnx_export import scan_sessions

    sessions = scan_sessions(config, data, "calibrate INT8 on", "pass --calibration-data FOLDER or --no-int8")
    split = _split_of(checkpoint, config, data)
    if split is not None:
        train = set(split[0]["train"])
        sessions, source = [s for s in sessions if s.subject in train], \
            f"training sessions of the run's split ({split[1].name})"
    else:
        source = _unknown(checkpoint, config, data, "scans of")
    gated = {s.key for s in verified} | {s.t2.resolve() for s in verified}
    chosen = [s for s in sessions if s.key not in gated and s.t2.resolve() not in gated][:n]
    if not chosen:
        raise ValueError(f"no scans to calibrate INT8 on besides the {len(verified)} it is gated on; pass "
                         f"--calibration-data FOLDER or --no-int8")
    return chosen, source


def _split_of(checkpoint: Path, config, data: Path | None) -> tuple[dict, Path] | None:
    """The run's split where ``data`` (None: the checkpoint's own) is the run's data."""
    from neoseg.train.rundir import read_split

    return read_split(checkpoint) if _own_data(config, data) else None


def _own_data(config, data: Path | None) -> bool:
    return data is None or (config.data is not None and Path(config.data).resolve() == Path(data).resolve())


def _unknown(checkpoint: Path, config, data: Path | None, what: str) -> str:
    """Where scans without a known split come from, and why none is known."""
    folder = "the checkpoint's training data" if data is None else str(data)
    why = f"{data} is not the run's data" if not _own_data(config, data) else \
        f"no split.json beside {Path(checkpoint).name}"
    return f"{what} {folder}; no split known ({why}): they may include training scans"
