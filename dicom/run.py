"""One DICOM series through neoseg: read and check it, segment it, and write the NIfTI outputs (and,
when asked, the DICOM SEG and the volumes keyed by study and series UIDs) all or nothing."""

from __future__ import annotations

import re
from pathlib import Path

from neoseg.runtime.clock import PhaseClock
from neoseg.runtime.files import output_paths, segment_scan, working_bytes

from .series import Series
from .volume import read_series

SEG_OUTPUTS = {"seg": "_desc-neoseg_seg.dcm", "uids": "_desc-neoseg_volumes.json"}


def output_stem(folder: Path) -> str:
    """Output names of a DICOM input: its folder's name, as letters, digits and hyphens."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", Path(folder).resolve().name).strip("-") or "dicom"


def series_source(series: Series) -> str:
    """A series' fingerprint in a results sidecar: its UID (a new acquisition gets a new one)."""
    return f"SeriesInstanceUID:{series.uid}"


def dicom_output_paths(stem: str, outdir: str | Path, probabilities: bool = False, qc: bool = False,
                       seg: bool = False) -> dict[str, Path]:
    paths = output_paths(Path(f"{stem}.nii.gz"), outdir, probabilities, qc)
    if seg:
        paths.update({k: Path(outdir) / f"{stem}{suffix}" for k, suffix in SEG_OUTPUTS.items()})
    return paths


def segment_series(series: Series, where: Path, segmenter, paths: dict[str, Path], overwrite: bool = False,
                   probabilities: bool = False, qc: bool = False, equipment: dict | None = None):
    """Segment ``series`` (found under ``where``) and write ``paths``; with ``seg`` and ``uids`` among
    them, also the DICOM SEG and the UID-keyed volumes. Returns (paths, Segmentation)."""
    clock = PhaseClock()
    clock("read")
    read = read_series(series, where, working_bytes(segmenter, probabilities))
    read.scan.source = series_source(series)
    clock(None)
    extra = None
    if "seg" in paths:
        from .seg import write_seg_outputs

        def extra(tmp, seg):
            write_seg_outputs(read, seg.labels, segmenter.info, tmp["seg"], tmp["uids"], equipment)
    return segment_scan(read.scan, segmenter, paths, overwrite, probabilities, qc, clock.wall["read"],
                        extra, read_cpu_seconds=clock.cpu["read"])
