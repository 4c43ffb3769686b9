"""Anatomy v2 of the synthetic cohort at the default 2 mm grid: deep grey nuclei, folding that
deepens with age, cerebellar lobules with their own contrast, and byte-level determinism."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from neoseg.data.synth import CohortSpec, generate_cohort, generate_subject
from scipy import ndimage

GRID = 64
MM = 128.0 / GRID
CSF, CGM, WM, VENTRICLES, CEREBELLUM, DGM = 1, 2, 3, 5, 6, 7


def subject(seed: int, age: float, anatomy: str = "v2", folding: float = 1.0):
    return generate_subject(np.random.default_rng(seed), age, GRID, anatomy_seed=seed + 10, anatomy=anatomy,
                            folding=folding)


@pytest.fixture(scope="module")
def brains() -> dict[tuple[int, float], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {(seed, age): subject(seed, age) for seed in (1, 2) for age in (29.0, 41.0)}


def nuclei(labels: np.ndarray) -> list[list[dict]]:
    """Per hemisphere (split at the deep grey matter's median x), the three largest connected
    deep grey components: voxel count and centroid in mm (x measured away from the midline)."""
    dgm = labels == DGM
    mid = np.median(np.argwhere(dgm)[:, 0])
    out = []
    for side, sign in ((np.arange(GRID) < mid, -1), (np.arange(GRID) > mid, 1)):
        parts, n = ndimage.label(dgm & side[:, None, None])
        sizes = np.bincount(parts.ravel())[1:]
        total = sizes.sum()
        comps = []
        for k in np.argsort(sizes)[::-1][:3]:
            centre = np.argwhere(parts == k + 1).mean(0)
            comps.append({"share": sizes[k] / total, "x": sign * (centre[0] - mid) * MM,
                          "y": centre[1] * MM, "z": centre[2] * MM})
        out.append(comps)
    return out


def test_deep_grey_matter_is_three_nuclei_per_hemisphere(brains):
    for key, (_, labels, _) in brains.items():
        for comps in nuclei(labels):
            shares = [c["share"] for c in comps]
            assert len(comps) == 3 and min(shares) > 0.1 and sum(shares) > 0.85, f"{key}: components {shares}"
            lentiform = max(comps, key=lambda c: c["x"])
            caudate, thalamus = sorted((c for c in comps if c is not lentiform), key=lambda c: -c["y"])
            assert lentiform["x"] > thalamus["x"] + 3 and lentiform["x"] > caudate["x"] + 3, key  # lateral
            assert thalamus["y"] < caudate["y"] - 8 and thalamus["y"] < lentiform["y"] - 3, key  # posterior
            assert caudate["z"] > lentiform["z"], key  # the caudate rides on the lateral ventricle


def test_v1_deep_grey_matter_is_not_split():
    """The test above can fail: the first generator's nuclei merge into fewer, larger blobs."""
    _, labels, _ = subject(1, 41.0, anatomy="v1")
    merged = [sum(c["share"] for c in comps[:1]) for comps in nuclei(labels)]
    assert max(merged) > 0.6


def test_deep_grey_matter_lies_inside_the_cerebrum(brains):
    for key, (_, labels, _) in brains.items():
        dgm = labels == DGM
        around = np.stack([np.roll(labels, s, a)[dgm] for a in range(3) for s in (1, -1)])
        assert not np.isin(around, (0, CSF, 4)).any(), f"{key}: deep grey matter touches CSF or the outside"


def sulcal_depths(seed: int, age: float, folding: float = 1.0) -> np.ndarray:
    """Depth (mm, below the smooth cerebral surface of the same brain) of the white matter that
    folding turned into cortex or sulcal CSF."""
    folded = subject(seed, age, folding=folding)[1]
    smooth = subject(seed, age, folding=0.0)[1]
    depth = ndimage.distance_transform_edt(np.isin(smooth, (CGM, WM, DGM))) * MM
    return depth[(smooth == WM) & np.isin(folded, (CSF, CGM))]


@pytest.mark.slow
def test_folding_deepens_with_age_and_with_the_folding_knob():
    for seed in (1, 2):
        p90 = {age: np.percentile(sulcal_depths(seed, age), 90) for age in (29.0, 35.0, 41.0)}
        assert p90[29.0] < p90[35.0] < p90[41.0], p90
        assert p90[29.0] < 6.5 and p90[41.0] > 7.0, p90  # a few mm before 30 weeks, most of a cm at term
    shallow, default = (sulcal_depths(1, 41.0, f) for f in (0.5, 1.0))
    assert len(shallow) < 0.8 * len(default) and np.percentile(shallow, 90) < np.percentile(default, 90)


def test_cerebellum_has_lobules_and_its_own_contrast(brains):
    for (seed, age), (t2, labels, _) in brains.items():
        cb = labels == CEREBELLUM
        inside = ndimage.distance_transform_edt(cb) * MM
        rim, core = t2[cb & (inside <= MM)].mean(), t2[cb & (inside > 2.5 * MM)].mean()
        assert core < 0.8 * rim, f"{(seed, age)}: white-matter core {core:.0f} vs cortex {rim:.0f}"
    for seed in (1, 2):
        # CSF in the fissures: CSF voxels with cerebellum on both sides (antero-posterior or vertical)
        fissure = lambda lab: sum(((lab == CSF) & np.roll(lab == CEREBELLUM, 1, a) & np.roll(lab == CEREBELLUM, -1, a)).sum()
                                  for a in (1, 2))
        young, term = fissure(brains[seed, 29.0][1]), fissure(brains[seed, 41.0][1])
        assert term > 200 and term > 5 * young, (seed, young, term)


def test_contrast_is_neonatal(brains):
    for key, (t2, labels, _) in brains.items():
        csf, wm, cgm, dgm, cb = (float(t2[labels == v].mean()) for v in (CSF, WM, CGM, DGM, CEREBELLUM))
        assert csf > wm > cgm and wm > dgm and csf > cb, f"{key}: CSF {csf:.0f} WM {wm:.0f} CGM {cgm:.0f} DGM {dgm:.0f}"


def test_same_spec_same_bytes(tmp_path):
    spec = CohortSpec(n_subjects=2, grid=24, seed=4)
    digests = []
    for name in ("a", "b"):
        root = generate_cohort(tmp_path / name, spec, progress=False)
        digests.append({str(p.relative_to(root)): hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
                        for p in sorted(root.rglob("*.nii.gz"))})
    assert digests[0] == digests[1] and len(digests[0]) >= 6
    other = generate_cohort(tmp_path / "c", CohortSpec(n_subjects=2, grid=24, seed=4, folding=0.5), progress=False)
    labels = [p for p in digests[0] if "dseg" in p]
    assert any(hashlib.sha256(gzip.decompress((other / p).read_bytes())).hexdigest() != digests[0][p] for p in labels)
