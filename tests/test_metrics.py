"""Hand-worked numbers for neoseg.core.metrics (docs/method.md section 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from neoseg.core.metrics import (
    HD_MISS_PENALTY_MM,
    age_group,
    dice,
    evaluate_volume,
    format_table,
    hausdorff,
    miss_penalty_mm,
    summarize,
    volume_difference,
)


def box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def cube(shape, corner, side):
    return box(shape, corner, [c + side for c in corner])


# ----------------------------------------------------------------------------- dice
def test_dice_of_cube_and_its_one_voxel_shift():
    # 4^3 = 64 voxels each; shifted by 1 along x they share 3*4*4 = 48 -> 2*48/128 = 0.75.
    a = cube((8, 8, 8), (1, 1, 1), 4)
    b = cube((8, 8, 8), (2, 1, 1), 4)
    assert dice(a, b) == pytest.approx(0.75)


def test_dice_counts_voxels_of_uint8_masks():
    # |A| = 10, |B| = 6, |A∩B| = 4 -> 2*4/16 = 0.5.
    a = np.zeros((20, 1, 1), np.uint8)
    b = np.zeros((20, 1, 1), np.uint8)
    a[0:10] = 1
    b[6:12] = 255  # any non-zero is inside
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0


def test_dice_empty_cases():
    empty = np.zeros((4, 4, 4), bool)
    full = cube((4, 4, 4), (0, 0, 0), 2)
    assert math.isnan(dice(empty, empty))
    assert dice(full, empty) == 0.0
    assert dice(empty, full) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


# ----------------------------------------------------------------------------- hausdorff
SPACING = (1.5, 1.0, 0.8)


@pytest.mark.parametrize(
    "shift, expected",
    [
        ((2, 0, 0), 2 * 1.5),  # 3.0 mm
        ((0, 3, 0), 3 * 1.0),  # 3.0 mm
        ((0, 0, 4), 4 * 0.8),  # 3.2 mm
        ((2, 3, 0), math.sqrt((2 * 1.5) ** 2 + (3 * 1.0) ** 2)),  # sqrt(18) mm
    ],
)
def test_hd100_of_translated_cube_is_the_shift_in_mm(shift, expected):
    # B is A translated by `shift`: every surface voxel p of A has the surface voxel p + shift in B,
    # so HD <= |shift| in mm; the corner/face voxel of A that trails the shift has every voxel of B
    # at least |shift| away, so HD >= |shift|. Hence HD100 = |shift · spacing| exactly (the cube is
    # 10 wide, so its sides (>= 4 mm away from the face centre) never come closer).
    shape = (24, 24, 24)
    a = cube(shape, (4, 4, 4), 10)
    b = cube(shape, [4 + s for s in shift], 10)
    assert hausdorff(a, b, SPACING) == pytest.approx(expected)
    assert hausdorff(b, a, SPACING) == pytest.approx(expected)


def line_case():
    # truth: one voxel at x=2; pred: a line of 20 voxels at x=3..22 (all surface, 1 voxel thick).
    truth = np.zeros((30, 5, 5), bool)
    pred = np.zeros((30, 5, 5), bool)
    truth[2, 2, 2] = True
    pred[3:23, 2, 2] = True
    return pred, truth, (0.5, 0.7, 0.9)


def test_hd95_is_the_percentile_of_the_pooled_directed_distances():
    # pred -> truth: 1, 2, ..., 20 voxels; truth -> pred: 1 voxel. Pooled (21 values) sorted:
    # [1, 1, 2, 3, ..., 20]; numpy's linear percentile at 95 sits at index 0.95 * 20 = 19 -> 19.
    # With 0.5 mm along x: HD95 = 9.5 mm, HD100 = 10 mm, median (index 10) = 5 mm.
    # (MONAI-style max of the two directed 95th percentiles would give 19.05 * 0.5 = 9.525 mm.)
    pred, truth, spacing = line_case()
    assert hausdorff(pred, truth, spacing, percentile=95) == pytest.approx(9.5)
    assert hausdorff(pred, truth, spacing) == pytest.approx(10.0)
    assert hausdorff(pred, truth, spacing, percentile=50) == pytest.approx(5.0)


@pytest.mark.parametrize("percentile", [50.0, 95.0, 100.0])
def test_hausdorff_is_symmetric(percentile):
    pred, truth, spacing = line_case()
    assert hausdorff(pred, truth, spacing, percentile) == hausdorff(truth, pred, spacing, percentile)
    grid = np.indices((20, 20, 20))
    ball = ((grid - 9.0) ** 2).sum(0) <= 36
    blob = box((20, 20, 20), (5, 3, 4), (15, 12, 17))
    assert hausdorff(ball, blob, SPACING, percentile) == hausdorff(blob, ball, SPACING, percentile)


def brute_force(pred, truth, spacing, percentile):
    """Reference without cropping: surfaces on the full array, all pairwise distances."""
    def surface_points(m):
        s = m & ~ndimage.binary_erosion(m, border_value=0)
        return np.argwhere(s) * np.asarray(spacing)

    d = cdist(surface_points(pred), surface_points(truth))
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), percentile)


@pytest.mark.parametrize("percentile", [95.0, 100.0])
def test_cropped_computation_matches_brute_force_even_at_the_array_border(percentile):
    shape = (18, 22, 15)
    grid = np.indices(shape)
    ball = ((grid - np.array([8, 11, 7])[:, None, None, None]) ** 2).sum(0) <= 30
    # An L shape touching three faces of the array: voxels on the border count as surface.
    ell = box(shape, (0, 0, 0), (18, 4, 5)) | box(shape, (0, 0, 0), (3, 22, 5))
    spacing = (0.5, 1.2, 0.9)
    for pred, truth in [(ball, ell), (ell, ball), (ball, np.roll(ball, 3, axis=1))]:
        assert hausdorff(pred, truth, spacing, percentile) == pytest.approx(
            brute_force(pred, truth, spacing, percentile)
        )


def test_hausdorff_empty_cases_and_penalty():
    shape, spacing = (10, 20, 30), (1.0, 0.5, 2.0)
    empty = np.zeros(shape, bool)
    some = cube(shape, (2, 2, 2), 3)
    # Extent 10 x 10 x 60 mm -> diagonal sqrt(100 + 100 + 3600) = sqrt(3800) mm.
    assert miss_penalty_mm(shape, spacing) == pytest.approx(math.sqrt(3800.0))
    assert math.isnan(hausdorff(empty, empty, spacing))
    assert hausdorff(empty, some, spacing) == pytest.approx(math.sqrt(3800.0))  # missed
    assert hausdorff(some, empty, spacing, percentile=95) == pytest.approx(math.sqrt(3800.0))
    assert hausdorff(empty, some, spacing, penalty_mm=123.0) == 123.0


def test_standard_penalty_is_the_diagonal_of_the_256_grid_at_half_a_millimetre():
    assert HD_MISS_PENALTY_MM == pytest.approx(128 * math.sqrt(3))
    assert miss_penalty_mm((256, 256, 256), (0.5, 0.5, 0.5)) == pytest.approx(HD_MISS_PENALTY_MM)


def test_bad_spacing_and_percentile_are_errors():
    a = cube((6, 6, 6), (1, 1, 1), 2)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(a, a, (1.0, 1.0, 1.0), percentile=101)


# ----------------------------------------------------------------------------- volume
def test_volume_difference_in_ml_at_half_a_millimetre():
    # 0.5^3 = 0.125 mm^3 = 0.125 µl per voxel. pred 10*10*10 = 1000, truth 10*10*8 = 800 voxels:
    # difference 200 voxels = 25 mm^3 = 0.025 ml; relative 200 / 800 = 0.25.
    spacing = (0.5, 0.5, 0.5)
    pred = box((12, 12, 12), (0, 0, 0), (10, 10, 10))
    truth = box((12, 12, 12), (0, 0, 0), (10, 10, 8))
    diff_ml, rel = volume_difference(pred, truth, spacing)
    assert diff_ml == pytest.approx(0.025)
    assert rel == pytest.approx(0.25)
    diff_ml, rel = volume_difference(truth, pred, spacing)
    assert diff_ml == pytest.approx(-0.025) and rel == pytest.approx(-0.2)
    diff_ml, rel = volume_difference(pred, np.zeros_like(pred), spacing)
    assert diff_ml == pytest.approx(0.125) and math.isnan(rel)


# ----------------------------------------------------------------------------- per volume
def test_evaluate_volume_rows():
    shape, spacing = (24, 24, 24), SPACING
    names = ["wm", "hippocampi_amygdala", "dgm"]
    pred = np.zeros((3, *shape), np.uint8)
    true = np.zeros((3, *shape), np.uint8)
    pred[0] = cube(shape, (6, 4, 4), 10)  # truth shifted by 2 voxels along x
    true[0] = cube(shape, (4, 4, 4), 10)
    pred[1] = cube(shape, (0, 0, 0), 2)  # 8 voxels predicted where truth has nothing
    true[2] = cube(shape, (4, 4, 4), 2)  # 8 voxels of truth, prediction misses them
    rows = evaluate_volume(pred, true, names, spacing)
    voxel_ml = 1.5 * 1.0 * 0.8 / 1000
    penalty = math.sqrt((24 * 1.5) ** 2 + 24.0**2 + (24 * 0.8) ** 2)
    assert [r["structure"] for r in rows] == names
    assert set(rows[0]) == {
        "structure", "dice", "hd95", "hd100", "vol_pred_ml", "vol_true_ml", "vol_diff_ml",
        "vol_diff_rel", "truth_empty", "missed",
    }
    wm, hip, dgm = rows
    assert wm["dice"] == pytest.approx(2 * 800 / 2000)  # overlap 8*10*10 of 1000 each
    assert wm["hd100"] == pytest.approx(3.0)
    assert wm["hd95"] == pytest.approx(hausdorff(pred[0], true[0], spacing, 95))
    assert wm["vol_true_ml"] == pytest.approx(1000 * voxel_ml) and wm["vol_diff_ml"] == 0.0
    assert not wm["truth_empty"] and not wm["missed"]
    # Truth empty: Dice/HD undefined (NaN) per docs/method.md; the false positive stays in the volume.
    assert hip["truth_empty"] and not hip["missed"]
    assert all(math.isnan(hip[k]) for k in ("dice", "hd95", "hd100", "vol_diff_rel"))
    assert hip["vol_pred_ml"] == pytest.approx(8 * voxel_ml)
    assert hip["vol_diff_ml"] == pytest.approx(8 * voxel_ml)
    # Missed: a failure, Dice 0 and HD = the diagonal of the volume's extent.
    assert dgm["missed"] and not dgm["truth_empty"]
    assert dgm["dice"] == 0.0
    assert dgm["hd95"] == pytest.approx(penalty) and dgm["hd100"] == pytest.approx(penalty)
    assert dgm["vol_diff_rel"] == -1.0
    assert evaluate_volume(pred, true, names, spacing, penalty_mm=50.0)[2]["hd100"] == 50.0


def test_evaluate_volume_checks_channel_names():
    with pytest.raises(ValueError, match="len\\(names\\)"):
        evaluate_volume(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 4)), ["wm"], (1, 1, 1))


# ----------------------------------------------------------------------------- summary
def row(group, structure, dice_, hd95, truth_empty=False, missed=False):
    nan = float("nan")
    return {
        "age_group": group, "structure": structure,
        "dice": nan if truth_empty else dice_, "hd95": nan if truth_empty else hd95,
        "hd100": nan if truth_empty else hd95, "vol_diff_ml": 0.1,
        "truth_empty": truth_empty, "missed": missed,
    }


ROWS = [
    row("preterm", "dgm", 1.0, 2.0),
    row("preterm", "dgm", 0.5, 4.0),
    row("preterm", "dgm", 0.0, 6.0, missed=True),  # penalty 6.0 here for round numbers
    row("preterm", "dgm", None, None, truth_empty=True),
    row("term", "dgm", 0.9, 1.5),
    row("term", "wm", None, None, truth_empty=True),
]


def test_summarize_keeps_missed_and_counts_empty_separately():
    out = summarize(ROWS)
    assert [(s["age_group"], s["structure"]) for s in out] == [
        ("preterm", "dgm"), ("term", "dgm"), ("term", "wm"),
    ]
    pre, term, empty = out
    # Dice 1.0, 0.5, 0.0 (missed kept): mean 0.5, sample std sqrt((0.25 + 0 + 0.25) / 2) = 0.5.
    assert (pre["n"], pre["n_empty"], pre["n_missed"]) == (3, 1, 1)
    assert pre["dice_mean"] == pytest.approx(0.5) and pre["dice_std"] == pytest.approx(0.5)
    # HD95 2, 4, 6: mean 4, sample std sqrt((4 + 0 + 4) / 2) = 2.
    assert pre["hd95_mean"] == pytest.approx(4.0) and pre["hd95_std"] == pytest.approx(2.0)
    assert pre["vol_diff_ml_mean"] == pytest.approx(0.1) and pre["vol_diff_ml_std"] == pytest.approx(0.0)
    # One volume: std 0.0 by convention. Only empty truth: no statistics at all.
    assert term["n"] == 1 and term["dice_mean"] == pytest.approx(0.9) and term["dice_std"] == 0.0
    assert (empty["n"], empty["n_empty"]) == (0, 1)
    assert math.isnan(empty["dice_mean"]) and math.isnan(empty["dice_std"])


def test_summarize_by_structure_only_pools_age_groups():
    (dgm, wm) = summarize(ROWS, by=("structure",), metrics=("dice",))
    assert dgm == {
        "structure": "dgm", "n": 4, "n_empty": 1, "n_missed": 1,
        "dice_mean": pytest.approx(0.6), "dice_std": pytest.approx(np.std([1.0, 0.5, 0.0, 0.9], ddof=1)),
    }
    assert wm["n"] == 0


def test_summarize_errors_are_actionable():
    with pytest.raises(ValueError, match="age_group"):
        summarize([{k: v for k, v in ROWS[0].items() if k != "age_group"}])
    bad = dict(ROWS[0], hd95=float("nan"))
    with pytest.raises(ValueError, match="hd95"):
        summarize([bad])


def test_format_table():
    table = format_table(summarize(ROWS))
    lines = table.splitlines()
    assert lines[0] == (
        "| structure | preterm dice | preterm hd95 | preterm n | term dice | term hd95 | term n |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == (
        "| dgm | 0.500 ± 0.500 | 4.00 ± 2.00 | 3 (1 missed, 1 empty) | 0.900 ± 0.000 | 1.50 ± 0.00 | 1 |"
    )
    assert lines[3] == "| wm | – | – | – | – | – | 0 (1 empty) |"


# ----------------------------------------------------------------------------- age groups
@pytest.mark.parametrize(
    "weeks, group",
    [(28.0, "preterm"), (36.9, "preterm"), (37.0, "term"), (44.0, "term"),
     (None, "unknown"), (float("nan"), "unknown")],
)
def test_age_group_edges(weeks, group):
    assert age_group(weeks) == group
