"""Reading scans and writing results named like BIDS derivatives, all or nothing per scan."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import nibabel as nib
import numpy as np

from neoseg.core.io import atomic_path, check_writable, load_nifti, write_nifti

from .pipeline import Segmentation, Segmenter
from .qc import render_qc, save_qc
from .volumes import Volume, structure_volumes, volumes_tsv

OUTPUTS = {"dseg": "_desc-neoseg_dseg.nii.gz", "mask": "_desc-neoseg_mask.nii.gz",
           "sidecar": "_desc-neoseg_mask.json", "volumes": "_desc-neoseg_volumes.tsv",
           "probseg": "_desc-neoseg_probseg.nii.gz", "qc": "_desc-neoseg_qc.png"}
OPTIONAL = {"probseg": "probabilities", "qc": "qc"}  # outputs written only when asked for


def stem(scan: str | Path) -> str:
    """BIDS entities of a scan's name: ``sub-1_ses-2_desc-restore_T2w.nii.gz`` -> ``sub-1_ses-2``
    (``desc-*`` and the suffix dropped); a plain ``scan.nii.gz`` -> ``scan``."""
    name = Path(scan).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    parts = name.split("_")
    if len(parts) > 1 and "-" not in parts[-1]:
        parts = parts[:-1]
    kept = [p for p in parts if not p.startswith("desc-")]
    return "_".join(kept) or name


def output_paths(scan: str | Path, outdir: str | Path, probabilities: bool = False,
                 qc: bool = False) -> dict[str, Path]:
    base, asked = stem(scan), {"probabilities": probabilities, "qc": qc}
    return {k: Path(outdir) / f"{base}{suffix}" for k, suffix in OUTPUTS.items()
            if k not in OPTIONAL or asked[OPTIONAL[k]]}


def load_scan(path: str | Path) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"scan {path} does not exist")
    try:
        img = load_nifti(path)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for unreadable files
        raise ValueError(f"{path} is not a readable NIfTI file ({e})") from None
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {img.shape}")
    return img


def segment_file(scan: str | Path, segmenter: Segmenter, outdir: str | Path, overwrite: bool = False,
                 probabilities: bool = False, qc: bool = False) -> tuple[dict[str, Path], Segmentation]:
    """Segment one scan and write its outputs (temporary files renamed only once all are written)."""
    paths = output_paths(scan, outdir, probabilities, qc)
    for p in paths.values():  # fail before the expensive part
        check_writable(p, overwrite)
    start = time.perf_counter()
    img = load_scan(scan)
    data = np.asanyarray(img.dataobj)
    read = time.perf_counter() - start
    seg = segmenter.segment(data, img.affine, img.header.get_zooms()[:3], probabilities)
    seg.timings = {"read": read, **seg.timings}
    start = time.perf_counter()
    with ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p, overwrite)) for k, p in paths.items()}
        write_nifti(_like(img, seg.labels, seg.labels.dtype), tmp["dseg"])
        write_nifti(_like(img, seg.masks, np.uint8), tmp["mask"])
        if probabilities:  # stored as uint8 with a scale factor of ~1/255
            write_nifti(_like(img, seg.probs, np.uint8), tmp["probseg"])
        volumes = structure_volumes(seg.labels, img.header.get_zooms()[:3], segmenter.info.hierarchy)
        tmp["volumes"].write_text(volumes_tsv(volumes))
        if qc:
            save_qc(render_qc(data, seg.labels, img.affine, img.header.get_zooms()[:3], segmenter.info.hierarchy,
                              stem(scan), _qc_subtitle(volumes)), tmp["qc"])
        tmp["sidecar"].write_text(json.dumps(_sidecar(scan, segmenter, seg), indent=2))
    seg.timings["write"] = time.perf_counter() - start
    return paths, seg


def _like(img: nib.Nifti1Image, data: np.ndarray, dtype) -> nib.Nifti1Image:
    """``data`` on ``img``'s grid: same affine and header, with the data type of the result."""
    header = img.header.copy()
    header.set_data_dtype(dtype)
    if "descrip" in header:
        header["descrip"] = b"neoseg"
    return type(img)(data, img.affine, header)


def _sidecar(scan, segmenter: Segmenter, seg: Segmentation) -> dict:
    info = segmenter.info
    return {"Sources": [str(Path(scan).name)], "Channels": info.hierarchy.names,
            "Thresholds": list(info.thresholds), "Hierarchy": info.hierarchy.to_dict(),
            "Model": {"architecture": info.architecture, "neoseg_version": info.version,
                      "config_digest": info.config_digest, "backend": segmenter.backend.name},
            "Timings": {k: round(v, 4) for k, v in seg.timings.items()}}


def _qc_subtitle(volumes: list[Volume]) -> str:
    tcv = next((v for v in volumes if v.structure == "tcv"), None)
    return f"TCV {tcv.ml:.1f} ml" if tcv else ""
