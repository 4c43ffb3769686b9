"""The built-in synthetic cohort: anatomy, contrast, determinism, layout and caching."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from neoseg.data.synth import CohortSpec, affine, default_cohort_dir, generate_cohort, generate_subject

GRID = 48
MM = 128.0 / GRID
OUTSIDE_BRAIN = (0, 1, 4)  # unlabelled, CSF, background


@pytest.fixture(scope="module")
def scans() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One brain at 30 and 41 weeks (same anatomy), and another brain at 30 and 41 weeks."""
    out = {}
    for name, anatomy, age, seed in (("a30", 1, 30.0, 10), ("a41", 1, 41.0, 11), ("b30", 2, 30.0, 12),
                                     ("b41", 2, 41.0, 13), ("c28", 3, 28.0, 14), ("c44", 3, 44.0, 15)):
        out[name] = generate_subject(np.random.default_rng(seed), age, GRID, anatomy_seed=anatomy)
    return out


def neighbour_labels(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Labels of the 6 face neighbours of each voxel in ``where``, shape (6, n)."""
    return np.stack([np.roll(labels, s, axis=a)[where] for a in range(3) for s in (1, -1)])


def centroid_mm(labels: np.ndarray, values) -> np.ndarray:
    return (np.argwhere(np.isin(labels, values)).mean(0) - (GRID - 1) / 2) * MM


def test_types_values_and_every_structure(scans):
    for name, (t2, labels, mask) in scans.items():
        assert t2.shape == labels.shape == mask.shape == (GRID,) * 3
        assert (t2.dtype, labels.dtype, mask.dtype) == (np.float32, np.uint8, np.uint8)
        assert labels.max() <= 9 and np.isfinite(t2).all()
        missing = set(range(1, 10)) - set(np.unique(labels).tolist())
        assert not missing, f"{name}: labels {missing} absent"
        np.testing.assert_array_equal(mask, labels > 0)


def test_ventricles_lie_inside_the_brain(scans):
    for name, (_, labels, _) in scans.items():
        around = neighbour_labels(labels, labels == 5)
        assert not np.isin(around, OUTSIDE_BRAIN).any(), f"{name}: ventricles touch CSF or the outside"
        assert np.isin(around, (3, 5, 7, 8, 9)).mean() > 0.95, f"{name}: ventricles not embedded in WM/DGM"


def test_cortex_separates_white_matter_from_csf(scans):
    for name, (_, labels, _) in scans.items():
        wm = labels == 3
        touching = np.isin(neighbour_labels(labels, wm), OUTSIDE_BRAIN).any(0).mean()
        assert touching < 0.06, f"{name}: {touching:.1%} of WM voxels touch CSF/outside"
        cgm = labels == 2
        near = neighbour_labels(labels, cgm)
        # the ribbon is bounded by white matter on one side and CSF on the other
        assert np.isin(near, (1,)).any(0).mean() > 0.3 and np.isin(near, (3,)).any(0).mean() > 0.3, name


def test_layout_of_the_structures(scans):
    for name, (_, labels, _) in scans.items():
        cerebrum = centroid_mm(labels, (2, 3))
        dgm = centroid_mm(labels, 7)
        assert np.linalg.norm(dgm[:2] - cerebrum[:2]) < 10 and abs(dgm[0]) < 6, f"{name}: DGM off centre {dgm}"
        cerebellum = centroid_mm(labels, 6)
        assert cerebellum[1] < cerebrum[1] - 15 and cerebellum[2] < cerebrum[2] - 10, f"{name}: cerebellum {cerebellum}"
        brainstem = centroid_mm(labels, 8)
        assert brainstem[2] < dgm[2] - 10 and abs(brainstem[0]) < 6, f"{name}: brainstem {brainstem}"
        for value in (2, 3, 5, 7, 9):  # bilateral structures: both hemispheres, about equally
            x = np.argwhere(labels == value)[:, 0]
            left = np.mean(x < (GRID - 1) / 2 + dgm[0] / MM)
            assert 0.3 < left < 0.7, f"{name}: label {value} has {left:.0%} on the left"
        hippo = centroid_mm(labels, 9)
        assert hippo[2] < dgm[2] and abs(np.argwhere(labels == 9)[:, 0] - (GRID - 1) / 2).mean() * MM > 10


def test_term_brains_are_larger_and_more_folded(scans):
    for sub in "abc":
        young, old = sorted((k for k in scans if k[0] == sub), key=lambda k: float(k[1:]))
        tissue = lambda k: np.isin(scans[k][1], (2, 3, 5, 6, 7, 8, 9)).sum()
        assert tissue(old) > 1.4 * tissue(young), sub
        # folding: more cortex per unit of white matter at term
        ratio = lambda k: (scans[k][1] == 2).sum() / (scans[k][1] == 3).sum()
        assert ratio(old) > ratio(young), sub


def test_t2_contrast_order(scans):
    for name, (t2, labels, _) in scans.items():
        csf, wm, cgm, dgm = (float(t2[labels == v].mean()) for v in (1, 3, 2, 7))
        assert csf > wm > cgm, f"{name}: CSF {csf:.0f}, WM {wm:.0f}, CGM {cgm:.0f}"
        assert dgm < wm, name
        assert t2[labels == 5].mean() > wm, name


def test_deterministic_and_distinct():
    first = generate_subject(np.random.default_rng(7), 35.0, 32, anatomy_seed=3)
    again = generate_subject(np.random.default_rng(7), 35.0, 32, anatomy_seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = generate_subject(np.random.default_rng(8), 35.0, 32, anatomy_seed=4)
    assert (first[1] != other[1]).mean() > 0.02
    rescanned = generate_subject(np.random.default_rng(9), 35.0, 32, anatomy_seed=3)
    assert not np.array_equal(first[0], rescanned[0])


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="grid"):
        generate_subject(np.random.default_rng(0), 40.0, 8)
    with pytest.raises(ValueError, match="age_weeks"):
        generate_subject(np.random.default_rng(0), 60.0, 32)
    with pytest.raises(ValueError, match="both_sessions_fraction"):
        generate_cohort("unused", CohortSpec(both_sessions_fraction=2.0))


SPEC = CohortSpec(n_subjects=4, grid=32, seed=5, both_sessions_fraction=0.5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "cohort"
    return generate_cohort(root, SPEC, progress=False)


def test_cohort_layout(cohort):
    description = json.loads((cohort / "dataset_description.json").read_text())
    assert description["Name"] == "neoseg synthetic neonatal cohort"
    assert description["GeneratedBy"][0]["Parameters"]["seed"] == 5
    participants = (cohort / "participants.tsv").read_text().splitlines()
    assert participants == ["participant_id"] + [f"sub-SYN{i:04d}" for i in range(1, 5)]
    n_sessions = {1: 0, 2: 0}
    for sub in participants[1:]:
        with (cohort / sub / f"{sub}_sessions.tsv").open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert list(rows[0]) == ["session_id", "scan_age"]
        n_sessions[len(rows)] += 1
        ages = [float(r["scan_age"]) for r in rows]
        assert all(r["scan_age"] == f"{a:.1f}" for r, a in zip(rows, ages))
        if len(rows) == 2:  # a preterm and a later term session
            assert ages[0] <= 36.0 and ages[1] >= 37.0
        for row in rows:
            anat = cohort / sub / f"ses-{row['session_id']}" / "anat"
            stem = f"{sub}_ses-{row['session_id']}"
            t2 = nib.load(anat / f"{stem}_desc-restore_T2w.nii.gz")
            labels = nib.load(anat / f"{stem}_desc-drawem9_dseg.nii.gz")
            mask = nib.load(anat / f"{stem}_desc-brain_mask.nii.gz")
            for image in (t2, labels, mask):
                assert image.shape == (32, 32, 32)
                np.testing.assert_allclose(image.affine, affine(32))
                np.testing.assert_allclose(image.header.get_zooms(), (4.0, 4.0, 4.0))
            assert t2.get_data_dtype() == np.float32 and labels.get_data_dtype() == np.uint8
            assert nib.aff2axcodes(t2.affine) == ("R", "A", "S")
            np.testing.assert_allclose(nib.affines.apply_affine(t2.affine, (15.5, 15.5, 15.5)), 0, atol=1e-6)
    assert n_sessions == {1: 2, 2: 2}
    assert not [p for p in cohort.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    assert (cohort / "participants.tsv").stat().st_mode & 0o044, "files must be readable by others (umask allowing)"


def test_cohort_is_reused_and_byte_identical(cohort, tmp_path):
    stamp = {p: p.stat().st_mtime_ns for p in cohort.rglob("*.nii.gz")}
    assert generate_cohort(cohort, SPEC, progress=False) == cohort
    assert stamp == {p: p.stat().st_mtime_ns for p in cohort.rglob("*.nii.gz")}
    twin = generate_cohort(tmp_path / "twin", SPEC, progress=False)
    for path in cohort.rglob("*.nii.gz"):
        a = np.asarray(nib.load(path).dataobj)
        b = np.asarray(nib.load(twin / path.relative_to(cohort)).dataobj)
        np.testing.assert_array_equal(a, b)


def test_foreign_or_different_folder_is_refused(cohort, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_cohort(cohort, CohortSpec(n_subjects=4, grid=32, seed=6), progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_cohort(foreign, SPEC, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    small = CohortSpec(n_subjects=1, grid=16, seed=1)
    generate_cohort(foreign, small, overwrite=True, progress=False)
    assert not (foreign / "notes.txt").exists() and (foreign / "dataset_description.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_cohort(empty, small, progress=False) == empty


def test_default_cohort_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_cohort_dir(SPEC)
    assert path.parent == tmp_path / "neoseg" and path.name.startswith("cohort-")
    assert default_cohort_dir(SPEC) == path != default_cohort_dir(CohortSpec(seed=99))


def test_montage(cohort, tmp_path):
    from neoseg.data.montage import save_montage

    png = save_montage(cohort, tmp_path / "montage.png", n=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
