"""A PNG overview of T2 scans with their drawem9 labels: axial, coronal and sagittal views."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

T2_SUFFIX = "_desc-restore_T2w.nii.gz"
LABEL_SUFFIX = "_desc-drawem9_dseg.nii.gz"
LABEL_NAMES = ("unlabelled", "CSF", "cortical GM", "white matter", "background", "ventricles",
               "cerebellum", "deep GM", "brainstem", "hippocampi+amygdala")
LABEL_COLOURS = ("#000000", "#4fa3e0", "#e8563a", "#f2f2e6", "#7f7f7f", "#1f3fbf",
                 "#3cb44b", "#b04fc8", "#ffd92f", "#17d0c0")


def _age(t2: Path) -> float:
    """Scan age from the subject's sessions.tsv, NaN when unknown."""
    subject_dir, session = t2.parents[2], t2.parents[1].name.removeprefix("ses-")
    tsv = subject_dir / f"{subject_dir.name}_sessions.tsv"
    if tsv.is_file():
        with tsv.open(newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if str(row.get("session_id", "")).removeprefix("ses-") == session:
                    try:
                        return float(row.get("scan_age", "nan"))
                    except ValueError:
                        return math.nan
    return math.nan


def _pick(root_or_paths: Path | str | Sequence[Path | str], n: int) -> list[tuple[Path, float]]:
    """``n`` T2 files spread over the age range (all of them if a list of files is given)."""
    if isinstance(root_or_paths, (str, Path)):
        root = Path(root_or_paths)
        files = sorted(root.glob(f"sub-*/ses-*/anat/*{T2_SUFFIX}"))
        if not files:
            raise ValueError(f"no *{T2_SUFFIX} under {root}; pass a dHCP-layout root or a list of T2 files")
        aged = sorted(((f, _age(f)) for f in files), key=lambda fa: (math.isnan(fa[1]), fa[1]))
        picks = np.unique(np.linspace(0, len(aged) - 1, min(n, len(aged))).round().astype(int))
        return [aged[i] for i in picks]
    return [(Path(p), _age(Path(p))) for p in root_or_paths][:n]


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre``, transposed for display (origin lower)."""
    i, j, k = centre
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def _deep_grey_views(labels: np.ndarray) -> tuple[int, int, int]:
    """Slices that show the deep grey matter best: the axial and sagittal (right side) slices with
    the most deep grey voxels, the coronal one through its centre; the volume centre without it."""
    dgm = labels == 7
    if not dgm.any():
        return tuple(s // 2 for s in labels.shape)
    centre = np.argwhere(dgm).mean(0)
    per_x = dgm.sum((1, 2))
    per_x[: int(np.ceil(centre[0]))] = 0  # the right hemisphere
    sagittal = int(per_x.argmax()) if per_x.any() else round(centre[0])
    return sagittal, round(centre[1]), int(dgm.sum((0, 1)).argmax())


def save_montage(root_or_paths: Path | str | Sequence[Path | str], png_path: Path | str, n: int = 6) -> Path:
    """Save a PNG with, for ``n`` scans (spread over ages), axial, coronal and sagittal T2 slices
    beside the same slices with the drawem9 labels overlaid. Accepts a dHCP-layout root or a list
    of ``*_desc-restore_T2w.nii.gz`` files (their ``*_desc-drawem9_dseg.nii.gz`` must sit beside)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    picks = _pick(root_or_paths, n)
    cmap = ListedColormap(LABEL_COLOURS)
    fig, axes = plt.subplots(len(picks), 6, figsize=(12, 2.1 * len(picks) + 0.6), squeeze=False,
                             facecolor="black")
    for row, (t2_path, age) in zip(axes, picks):
        label_path = t2_path.with_name(t2_path.name.replace(T2_SUFFIX, LABEL_SUFFIX))
        if not label_path.is_file():
            raise ValueError(f"label map {label_path} not found beside {t2_path}")
        t2 = np.asarray(nib.load(t2_path).dataobj, np.float32)
        labels = np.asarray(nib.load(label_path).dataobj).astype(np.uint8)
        centre = _deep_grey_views(labels)
        vmax = float(np.percentile(t2[labels > 0], 99.5)) if (labels > 0).any() else float(t2.max())
        for col, (image, lab) in enumerate(zip(_views(t2, centre), _views(labels, centre))):
            axes_t2, axes_lab = row[col], row[col + 3]
            axes_t2.imshow(image, cmap="gray", origin="lower", vmin=0, vmax=vmax, interpolation="nearest")
            axes_lab.imshow(image, cmap="gray", origin="lower", vmin=0, vmax=vmax, interpolation="nearest")
            overlay = np.ma.masked_equal(lab, 0)
            axes_lab.imshow(overlay, cmap=cmap, vmin=-0.5, vmax=9.5, origin="lower", alpha=0.55,
                            interpolation="nearest")
        name = t2_path.name.replace(T2_SUFFIX, "")
        row[0].set_ylabel(f"{name}\n{age:.1f} wk" if not math.isnan(age) else name, color="white", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for col, title in enumerate(("axial", "coronal", "sagittal") * 2):
        axes[0, col].set_title(title + (" + labels" if col >= 3 else ""), color="white", fontsize=9)
    handles = [Patch(color=c, label=f"{v} {name}") for v, (c, name) in enumerate(zip(LABEL_COLOURS, LABEL_NAMES)) if v]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False, labelcolor="white")
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight() + 0.02, 1, 1), h_pad=0.2, w_pad=0.1)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110, facecolor="black")
    plt.close(fig)
    return png_path
