"""The experiment's data: the dataset (or the built-in cohort) and its slice caches."""

from __future__ import annotations

from pathlib import Path

from .profiles import Profile


def cohort_spec(profile: Profile):
    """The built-in cohort of ``profile``: anatomy v1 by default, the cohort the committed report was measured on."""
    from neoseg.data.synth import CohortSpec

    return CohortSpec(n_subjects=profile.cohort_subjects, grid=profile.cohort_grid, seed=0, anatomy=profile.cohort_anatomy)


def prepare_data(profile: Profile, out: Path, data: Path | None, progress: bool):
    """The dataset (``data``, or the built-in cohort written to ``OUT/cohort``) and its slice cache."""
    from neoseg.data.dhcp import find_sessions
    from neoseg.core.hierarchy import builtin
    from neoseg.train.volumes import VolumeCache

    if data is None:
        from neoseg.data.synth import generate_cohort

        data = generate_cohort(out / "cohort", cohort_spec(profile), progress=progress)
    sessions = find_sessions(data)
    for size in sorted(set(profile.slice_size.values())):
        cache = VolumeCache(out / "cache", 0, size, builtin())
        for s in sessions:
            cache.get(s)
    return Path(data), sessions
