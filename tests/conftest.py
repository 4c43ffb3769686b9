"""Shared fixtures: a tiny dHCP-layout dataset of nested-shell phantoms (fast, deterministic)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

T2_OF_LABEL = np.array([0, 250, 120, 170, 60, 240, 110, 90, 100, 130], np.float32)


def phantom(n: int, shift: int, radius_scale: float) -> np.ndarray:
    """Concentric drawem9-valued shells: background, csf, cgm, wm, with dgm, ventricles,
    hippocampi, cerebellum and brainstem blobs; ``shift`` moves everything along axis 0."""
    c = (n - 1) / 2
    x, y, z = np.mgrid[:n, :n, :n].astype(np.float32)
    x -= shift
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) / radius_scale
    labels = np.zeros((n, n, n), np.uint8)
    for radius, value in ((0.46 * n, 4), (0.42 * n, 1), (0.38 * n, 2), (0.32 * n, 3)):
        labels[r < radius] = value
    blob = lambda cx, cy, cz, rad: np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) < rad  # noqa: E731
    labels[blob(c, c, c, 0.1 * n)] = 7
    labels[blob(c + 0.15 * n, c, c + 0.1 * n, 0.05 * n)] = 5
    labels[blob(c - 0.15 * n, c, c - 0.1 * n, 0.05 * n)] = 9
    labels[blob(c, c - 0.25 * n, c - 0.2 * n, 0.07 * n)] = 6
    labels[blob(c, c, c - 0.3 * n, 0.04 * n)] = 8
    return labels


def write_dataset(root: Path, n_subjects: int = 6, n: int = 24, spacing: float = 2.0) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    for s in range(n_subjects):
        sub = f"T{s:02d}"
        labels = phantom(n, shift=s % 3 - 1, radius_scale=0.9 + 0.04 * s)
        t2 = T2_OF_LABEL[labels] + rng.normal(0, 8, labels.shape).astype(np.float32)
        anat = root / f"sub-{sub}" / "ses-1" / "anat"
        anat.mkdir(parents=True)
        stem = f"sub-{sub}_ses-1"
        nib.save(nib.Nifti1Image(t2.astype(np.float32), affine), anat / f"{stem}_desc-restore_T2w.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), anat / f"{stem}_desc-drawem9_dseg.nii.gz")
        (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(f"session_id\tscan_age\n1\t{30 + 2 * s}.0\n")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def model(tiny_dataset, tmp_path_factory) -> Path:
    """A toy U-Net trained for a few steps on tiny_dataset's first four scans, exported to ONNX (per module)."""
    from neoseg.benchmarks.toy import toy_onnx
    from neoseg.data.dhcp import find_sessions

    return toy_onnx(tmp_path_factory.mktemp("model"), find_sessions(tiny_dataset)[:4])[1]


@pytest.fixture(scope="session")
def toy_run(tiny_dataset, tmp_path_factory) -> Path:
    """A run folder as neoseg-train leaves it, of a toy U-Net trained on tiny_dataset's T00-T03:
    best.pt (its config naming the data) and split.json, which holds out T04 (validation) and T05
    (test)."""
    import dataclasses

    import torch

    from neoseg.benchmarks.toy import train_toy
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.splits import Split
    from neoseg.train import checkpoint
    from neoseg.train.rundir import write_split

    run = tmp_path_factory.mktemp("run")
    sessions = find_sessions(tiny_dataset)
    toy = train_toy(run / "toy.pt", sessions[:4], 32, widths=(8, 16), steps=40)
    payload = torch.load(toy, weights_only=True)
    payload["config"] = dataclasses.replace(checkpoint.load(toy).config, data=str(tiny_dataset)).to_json()
    torch.save(payload, run / "best.pt")
    toy.unlink()
    split = Split(tuple(sessions[:4]), (sessions[4],), (sessions[5],), frozenset(s.subject for s in sessions[:4]))
    write_split(run / "split.json", split, sessions[:4])
    return run
