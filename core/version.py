"""The installed neoseg's version, as written into models, sidecars, summaries and DICOM objects."""

from __future__ import annotations


def neoseg_version() -> str:
    """The version of the installed ``neoseg`` distribution, or ``unknown`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neoseg")
    except PackageNotFoundError:
        return "unknown"
