"""``OUT/experiment.json``: the experiment's profile, grid, data and every invocation of the command."""

from __future__ import annotations

import dataclasses
import json
import platform
from datetime import datetime
from pathlib import Path

from neoseg.benchmarks.common import machine as benchmark_machine
from neoseg.core.io import write_text

from .profiles import RENAMED, Profile


def load(out: Path, profile: Profile, builtin_cohort: bool = True) -> dict:
    """The metadata of the experiment in ``out`` (new when there is none); refuses another profile's,
    and runs on another anatomy of the built-in cohort (``builtin_cohort``: no ``--data``)."""
    path = out / "experiment.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"profile": profile.name, "invocations": []}
    meta["profile"] = RENAMED.get(meta["profile"], meta["profile"])
    meta["grid"] = profile.grid
    if meta["profile"] != profile.name:
        raise ValueError(f"{out} holds a '{meta['profile']}' experiment; use --profile {meta['profile']} or another --out")
    if builtin_cohort:
        held = meta.get("anatomy")
        if held is None and builtin_data(out, meta):
            # made before the anatomy was recorded: the profile settings it stored name it (none: before v2)
            held = meta.get("profile_settings", {}).get("cohort_anatomy", "v1")
        if held is not None and held != profile.cohort_anatomy:
            raise ValueError(f"{out} holds runs on the built-in cohort's anatomy {held}, not "
                             f"{profile.cohort_anatomy}; pass --anatomy {held}, or another --out for {profile.cohort_anatomy}")
        meta["anatomy"] = profile.cohort_anatomy
    return meta


def add_invocation(meta: dict, started_at: datetime, seconds: float, setup_seconds: float, workers: int,
                   threads: int | None, device: str, failed: dict) -> None:
    meta["invocations"].append({"started": started_at.isoformat(timespec="seconds"),
                                "seconds": round(seconds, 1),
                                "setup_seconds": round(setup_seconds, 1), "workers": workers,
                                "threads": threads, "device": device, "failed": failed,
                                "machine": machine()})


def describe(out: Path, meta: dict, profile: Profile, data: Path, sessions: int) -> None:
    """The profile's settings, the data and its number of sessions; the built-in cohort is named by its
    place in ``out``, so that the file travels without the machine's paths."""
    meta["profile_settings"] = dataclasses.asdict(profile)
    meta["data"] = "cohort" if _folder_cohort(out, data) else str(data.resolve())
    meta["sessions"] = sessions


def builtin_data(out: Path, meta: dict) -> bool:
    """Whether the experiment in ``out`` ran on the cohort in its own folder (a relative path is the
    folder's; older files hold it absolute)."""
    data = meta.get("data")
    return data is not None and _folder_cohort(out, out / data)


def _folder_cohort(out: Path, data: Path) -> bool:
    return data.resolve() == (out / "cohort").resolve()


def save(out: Path, meta: dict) -> None:
    write_text(out / "experiment.json", json.dumps(meta, indent=2), overwrite=True)


def machine() -> dict:
    """The shared benchmark description of this machine, plus the operating system."""
    return {**benchmark_machine(), "system": f"{platform.system()} {platform.release()}"}
