"""Reading scans and writing results named like BIDS derivatives, all or nothing per scan."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from typing import Callable

from neoseg.core.io import atomic_paths, check_writable, files_digest, write_niftis
from neoseg.core.scans import Scan, read_scan

from . import geometry
from .clock import PhaseClock
from .pipeline import Segmentation, Segmenter
from .qc import render_qc, save_qc
from .volumes import Volume, structure_volumes, volumes_tsv

OUTPUTS = {"dseg": "_desc-neoseg_dseg.nii.gz", "mask": "_desc-neoseg_mask.nii.gz",
           "sidecar": "_desc-neoseg_mask.json", "volumes": "_desc-neoseg_volumes.tsv",
           "dseg_sidecar": "_desc-neoseg_dseg.json", "probseg": "_desc-neoseg_probseg.nii.gz",
           "qc": "_desc-neoseg_qc.png"}
OPTIONAL = {"probseg": "probabilities", "qc": "qc"}  # outputs written only when asked for
EXTENSIONS = (".nii.gz", ".nii", ".hdr.gz", ".img.gz", ".hdr", ".img")


def stem(scan: str | Path) -> str:
    """BIDS entities of a scan's name: ``sub-1_ses-2_desc-restore_T2w.nii.gz`` -> ``sub-1_ses-2``
    (``desc-*`` and the suffix dropped); a plain ``scan.nii.gz`` -> ``scan``."""
    name = Path(scan).name
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
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


def output_state(paths: dict[str, Path], source: Callable[[], str] | None = None, model: str = "") -> str:
    """'done' (every output exists: a rerun skips the scan), 'partial' (some: an interrupted run,
    or one that asked for fewer outputs; redone) or 'todo'; and, never skipped nor replaced unasked,
    'other-scan' or 'other-model' where the results' sidecar says they were made from another input
    (``source()``) or by another model (digest ``model``), and 'edited' where outputs are missing
    but the label map is not the one neoseg wrote (a hand correction: redoing the scan would
    replace it; with every output there it is 'done', kept). Sidecars of versions that did not
    record these count as this input's and model's, unedited. The one rule of file, dataset and
    DICOM mode."""
    present = {k: p.exists() for k, p in paths.items()}
    if not any(present.values()):
        return "todo"
    made = _made_from(paths["sidecar"]) if present["sidecar"] else {}
    if model and made.get("model", model) != model:
        return "other-model"
    if source is not None and made.get("source", "") not in ("", source()):
        return "other-scan"
    if all(present.values()):
        return "done"
    edited = present["dseg"] and "dseg" in made and file_digest(paths["dseg"]) != made["dseg"]
    return "edited" if edited else "partial"


def _made_from(sidecar: Path) -> dict[str, str]:
    """The input, model and label map digests a results sidecar records ({} where it cannot be read)."""
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    made = {"source": record.get("SourceDigest"), "model": (record.get("Model") or {}).get("digest"),
            "dseg": record.get("LabelMapDigest")}
    return {k: v for k, v in made.items() if isinstance(v, str) and v}


def file_digest(file: str | Path) -> str:
    """A file's fingerprint (a model's, a scan's): ``sha256:`` and the SHA-256 of its bytes, with its
    ``.img`` where it is a header."""
    path = Path(file)
    parts = [path]
    for header, data in ((".hdr", ".img"), (".hdr.gz", ".img.gz")):
        if path.name.lower().endswith(header):
            parts += [p for p in (path.with_name(path.name[: -len(header)] + data),) if p.exists()]
    return "sha256:" + files_digest(*parts)


def load_scan(path: str | Path) -> nib.Nifti1Image:
    """A scan, checked (:func:`neoseg.core.scans.read_scan`), as a single-file image in memory."""
    return read_scan(path).image


def segment_file(scan: str | Path, segmenter: Segmenter, outdir: str | Path, overwrite: bool = False,
                 probabilities: bool = False, qc: bool = False) -> tuple[dict[str, Path], Segmentation]:
    """Segment one scan and write its outputs: all appear together, or none (temporary files are
    moved in place only once all are written; see :func:`neoseg.core.io.atomic_paths`). An input
    neoseg refuses raises ValueError with one line; ``Segmentation.warnings`` says what the user
    should know about an accepted one (also written into the sidecar)."""
    paths = output_paths(scan, outdir, probabilities, qc)
    for p in paths.values():  # fail before the expensive part
        check_writable(p, overwrite)
    clock = PhaseClock()
    clock("read")
    with ThreadPoolExecutor(1, "neoseg-digest") as pool:  # the file hashed while it is decoded (both free the GIL)
        source = pool.submit(file_digest, scan) if segmenter.host_threads > 1 else None
        checked = read_scan(scan, working_bytes=working_bytes(segmenter, probabilities))
        checked.source = source.result() if source is not None else file_digest(scan)
    clock(None)
    return segment_scan(checked, segmenter, paths, overwrite, probabilities, qc, clock.wall["read"],
                        read_cpu_seconds=clock.cpu["read"])


def segment_scan(checked: Scan, segmenter: Segmenter, paths: dict[str, Path], overwrite: bool = False,
                 probabilities: bool = False, qc: bool = False, read_seconds: float = 0.0,
                 extra=None, read_cpu_seconds: float = 0.0) -> tuple[dict[str, Path], Segmentation]:
    """Segment a scan already read and checked (a NIfTI file, a DICOM series) and write the outputs
    ``paths`` (from :func:`output_paths`, plus any that ``extra(tmp, seg)`` writes: a caller's own
    outputs, e.g. a DICOM SEG, written to ``tmp[key]`` in the same all-or-nothing step)."""
    outdir = next(iter(paths.values())).parent
    seg = segment_checked(checked, segmenter, probabilities, read_seconds, read_cpu_seconds)
    img = checked.image
    name = paths["dseg"].name.removesuffix(OUTPUTS["dseg"])
    stale = _stale_outputs(paths, outdir, name, checked, segmenter) if overwrite else []
    clock = PhaseClock(seg.timings, seg.cpu_timings)
    clock("write")
    try:
        with atomic_paths(paths, overwrite) as tmp:
            images = [(_like(img, seg.labels, seg.labels.dtype, intent="label"), tmp["dseg"]),
                      (_like(img, seg.masks, np.uint8), tmp["mask"])]
            if probabilities:  # stored as uint8 with a scale factor of ~1/255
                images.append((_like(img, seg.probs, np.uint8), tmp["probseg"]))
            write_niftis(images, segmenter.host_threads)  # compressed side by side
            zooms = checked.zooms  # mm, from the affine, as the scan was segmented
            volumes = structure_volumes(seg.labels, zooms, segmenter.info.hierarchy)
            tmp["volumes"].write_text(volumes_tsv(volumes))
            if qc:
                save_qc(render_qc(checked.data, seg.labels, img.affine, zooms, segmenter.info.hierarchy,
                                  name, _qc_subtitle(volumes)), tmp["qc"])
            sidecar = _sidecar(checked.path, segmenter, seg, checked)
            sidecar["LabelMapDigest"] = file_digest(tmp["dseg"])  # a later hand correction is told from it
            tmp["sidecar"].write_text(json.dumps(sidecar, indent=2))
            tmp["dseg_sidecar"].write_text(json.dumps(_dseg_sidecar(sidecar, segmenter.info.hierarchy.name), indent=2))
            if extra is not None:
                extra(tmp, seg)
    except FileExistsError:
        raise
    except OSError as e:  # a full disk, a read-only folder: nothing was left behind
        raise ValueError(f"{checked.path}: its results could not be written to {outdir} ({e.strerror or e}); "
                         f"check the folder's free space and permissions") from None
    for path in stale:
        path.unlink(missing_ok=True)
    clock(None)
    return paths, seg


def _stale_outputs(paths: dict[str, Path], outdir: Path, name: str, checked: Scan,
                   segmenter: Segmenter) -> list[Path]:
    """The scan's outputs not asked for this time (QC picture, probabilities, a DICOM SEG), left by
    results of another model or input that these replace: removed with them, never kept beside them."""
    unasked = set(outdir.glob(f"{name}_desc-neoseg_*")) - set(paths.values())
    made = _made_from(paths["sidecar"])
    same = made.get("model", "") == (segmenter.model_digest or "") and made.get("source", "") == (checked.source or "")
    return [] if same else sorted(p for p in unasked if p.is_file())


def segment_checked(checked: Scan, segmenter: Segmenter, probabilities: bool = False,
                    read_seconds: float = 0.0, read_cpu_seconds: float = 0.0) -> Segmentation:
    """The segmentation of a scan already read and checked, as ``neoseg-infer`` writes it (and as
    every evaluation scores it): non-finite voxels set to outside, and the warnings a user should
    read."""
    try:
        seg = segmenter.segment(checked.data, checked.affine, checked.zooms, probabilities)
    except MemoryError:
        raise ValueError(f"{checked.path}: ran out of memory while segmenting it; use a machine with more memory, "
                         f"or crop or downsample the scan") from None
    seg.timings = {"read": read_seconds, **seg.timings}
    seg.cpu_timings = {"read": read_cpu_seconds, **seg.cpu_timings}
    seg.warnings = list(checked.notes) + [f"{checked.path}: {note}" for note in seg.warnings]
    if checked.nonfinite is not None:
        _set_outside(seg, checked.nonfinite, segmenter)
    if _empty(seg, segmenter):
        seg.warnings.append(f"{checked.path}: no brain found, every voxel is labelled outside; check that it is a "
                            f"T2-weighted head scan")
    return seg


def working_bytes(segmenter: Segmenter, probabilities: bool = False):
    """Estimate of the memory :meth:`Segmenter.segment` needs for a scan of ``shape`` and ``zooms``
    (stored axis order), besides the data as read: float32 copies of the volume on its grid and on
    the model's, the slice stacks, and the per-channel results (logits when resampling)."""
    info = segmenter.info
    n_ch = len(info.hierarchy)
    probabilities = probabilities or segmenter.atlas is not None  # atlas fusion blends probabilities

    def estimate(shape, zooms) -> int:
        native = math.prod(shape)
        resample = geometry.needs_resampling(sorted(zooms), sorted(info.spacing))  # axis order aside
        model = int(native * math.prod(zooms) / math.prod(info.spacing)) if resample else native
        per_native = 12 + 2 * n_ch + 2 + (8 * n_ch if resample else 0) + (8 * n_ch if probabilities else 0)
        per_model = 12 + (8 * n_ch if resample else n_ch + 1) + (4 * n_ch if probabilities else 0)
        return native * per_native + model * per_model

    return estimate


def _outside(segmenter: Segmenter) -> tuple[int | None, int]:
    """The "outside" channel and its label value (0 when the hierarchy has none)."""
    h = segmenter.info.hierarchy
    out_ch = h.outside_channel
    return out_ch, 0 if out_ch is None else h.channels[out_ch].value


def _set_outside(seg: Segmentation, where: np.ndarray, segmenter: Segmenter) -> None:
    """Voxels that held no value (NaN, +-Inf) are labelled outside, whatever the network said."""
    out_ch, value = _outside(segmenter)
    seg.labels = np.array(seg.labels)
    seg.labels[where] = value
    seg.masks = np.array(seg.masks)
    seg.masks[where] = 0
    if seg.probs is not None:
        seg.probs = np.array(seg.probs)
        seg.probs[where] = 0
    if out_ch is not None:
        seg.masks[where, out_ch] = 1
        if seg.probs is not None:
            seg.probs[where, out_ch] = 1


def _empty(seg: Segmentation, segmenter: Segmenter) -> bool:
    return not np.any(seg.labels != _outside(segmenter)[1])


def _like(img: nib.Nifti1Image, data: np.ndarray, dtype, intent: str = "none") -> nib.Nifti1Image:
    """``data`` on ``img``'s grid: the scan's affine, orientation codes and voxel sizes, with the
    result's data type and intent; the scan's text (description, aux file, extensions: they may
    name the patient), display window and time units are not carried over."""
    header = img.header.copy()
    header.set_data_dtype(dtype)
    if "descrip" in header:
        header["descrip"] = b"neoseg"
    for key, blank in (("aux_file", b""), ("db_name", b""), ("data_type", b""), ("cal_min", 0), ("cal_max", 0)):
        if key in header:
            header[key] = blank
    if hasattr(header, "extensions"):
        header.extensions.clear()
        header.set_intent(intent)
        header["xyzt_units"] = int(header["xyzt_units"]) & 0x07  # spatial units kept; channels are no time points
    return type(img)(data, img.affine, header)


def _sidecar(scan, segmenter: Segmenter, seg: Segmentation, checked: Scan) -> dict:
    info = segmenter.info
    model = {"architecture": info.architecture, "neoseg_version": info.version,
             "config_digest": info.config_digest, "backend": segmenter.backend.name}
    if segmenter.model_digest:  # the model file's: a rerun with another model is told from this one
        model["digest"] = segmenter.model_digest
    if seg.atlas is not None:  # the children blended with registered atlases (--atlas)
        model["atlas_fusion"] = seg.atlas
    return {"Sources": [str(Path(scan).name)], "Channels": info.hierarchy.names,
            "Thresholds": list(info.thresholds), "Hierarchy": info.hierarchy.to_dict(), "Model": model,
            **({"SourceDigest": checked.source} if checked.source else {}),
            "NonFiniteVoxels": checked.nonfinite_count, "Empty": _empty(seg, segmenter),
            "Warnings": list(seg.warnings), "Timings": {k: round(v, 4) for k, v in seg.timings.items()}}


def _dseg_sidecar(mask_sidecar: dict, hierarchy: str) -> dict:
    """The label map's BIDS sidecar: what its values mean (``dseg.tsv`` beside the results) and
    what made it (as in the mask's sidecar)."""
    return {"Description": "Automatic segmentation by neoseg: one label per voxel, the leaves of the hierarchy; "
                           "values and names in dseg.tsv",
            "Sources": mask_sidecar["Sources"], "Manual": False, "Hierarchy": hierarchy,
            "Model": mask_sidecar["Model"], "Warnings": mask_sidecar["Warnings"]}


def _qc_subtitle(volumes: list[Volume]) -> str:
    tcv = next((v for v in volumes if v.structure == "tcv"), None)
    return f"TCV {tcv.ml:.1f} ml" if tcv else ""
