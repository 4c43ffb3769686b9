"""What ``--atlas-resolution`` buys on fine scans: one atlas registered to a few sessions of a
synthetic 0.5 mm cohort (v2 anatomy, 256^3), at each registration resolution, as ``neoseg-train
--atlas`` registers it (Greedy, T2 + parent outline, one thread). Reports seconds per pair and the
Dice of the warped children (the most likely child inside the target's known TCV) against the
hidden truth, on the scan's own grid and after both are resampled to 2 mm, as the ``cpu`` profile
trains on 0.5 mm scans.

    python -m neoseg.benchmarks.atlas_resolution [--pairs 2] [--resolutions 0.5 1 2] [--out DIR]

Timings depend on what else runs; the script prints the load before and after.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .common import cohort, machine, table, write_results

TRAINING_MM = 2.0  # the cpu profile's voxel size, which 0.5 mm scans are resampled to for training


def register(atlas, target, resolution: float, hierarchy) -> tuple[float, np.ndarray, np.ndarray, tuple]:
    """(seconds, the target's labels, its children as the warped atlas has them, its voxel size)."""
    from neoseg.core.scans import voxel_size
    from neoseg.core import registration
    from neoseg.train.atlas import PARAMS, inside_parents
    from neoseg.core.atlas_fusion import leaf_values
    from neoseg.train.volumes import load_session

    a_img, a_lab, a_nii = load_session(atlas)
    t_img, t_lab, t_nii = load_session(target)
    zooms = [voxel_size(n) for n in (t_nii, a_nii)]
    table_ = hierarchy.target_table()
    leaves = leaf_values(hierarchy)
    parent = inside_parents(t_lab, table_, hierarchy)
    maps = [a_img] + [(a_lab == v).astype(np.float32) for v in leaves]  # what register_pair warps
    began = time.perf_counter()
    warped = registration.warp_atlas(t_img, parent, a_img, inside_parents(a_lab, table_, hierarchy), maps, *zooms,
                                     PARAMS, skipped=registration.skipped_levels(zooms[0], resolution))
    seconds = time.perf_counter() - began
    children = np.where(parent > 0, np.asarray(leaves)[np.argmax(np.stack(warped[1:]), axis=0)], t_lab)
    return seconds, t_lab, children.astype(t_lab.dtype), zooms[0]


def children_dice(predicted: np.ndarray, truth: np.ndarray, values: dict[str, int]) -> dict[str, float]:
    """Per named child, Dice inside the true parent (the children's union), as atlas.json scores it."""
    from neoseg.core.atlas_fusion import dice_by_value

    scores = dice_by_value(predicted, truth, list(values.values()), np.isin(truth, list(values.values())))
    return {name: scores[v] for name, v in values.items()}


def at_training_size(labels: np.ndarray, zooms) -> np.ndarray:
    from neoseg.train.volumes import resample_labels

    shape = [round(n * z / TRAINING_MM) for n, z in zip(labels.shape, zooms)]
    return resample_labels(labels, shape, zooms, (TRAINING_MM,) * 3)


def main(argv=None) -> None:
    from neoseg.core.hierarchy import builtin

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2, help="targets registered to the first session")
    p.add_argument("--resolutions", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="mm")
    p.add_argument("--grid", type=int, default=256, help="voxels a side of the cohort (128 mm: 256 is 0.5 mm)")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    hierarchy = builtin()
    values = {c.name: c.value for c in hierarchy.channels if c.name in ("cgm", "wm", "dgm")}
    sessions = cohort(None, args.pairs + 1, args.grid, seed=3)
    result = {"machine": machine(), "pairs": [], "resolutions": args.resolutions}
    rows = []
    for target in sessions[1:args.pairs + 1]:
        for mm in args.resolutions:
            seconds, truth, children, zooms = register(sessions[0], target, mm, hierarchy)
            native = children_dice(children, truth, values)
            coarse = children_dice(at_training_size(children, zooms), at_training_size(truth, zooms), values)
            result["pairs"].append({"atlas": sessions[0].key, "target": target.key, "resolution_mm": mm,
                                    "seconds": seconds, "dice": native, f"dice_at_{TRAINING_MM:g}mm": coarse})
            rows.append([f"{sessions[0].key} -> {target.key}", f"{mm:g}", f"{seconds:.1f}",
                         *(f"{native[n]:.3f}" for n in values), *(f"{coarse[n]:.3f}" for n in values)])
            print(" | ".join(rows[-1]), flush=True)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    m = result["machine"]
    text = (f"Machine: {m['cpu']} ({m['cores']} cores); load at start {m['load']}, at the end {result['load_end']}\n\n"
            + table(["pair", "resolution (mm)", "seconds", *(f"{n} Dice" for n in values),
                     *(f"{n} at {TRAINING_MM:g} mm" for n in values)], rows) + "\n")
    write_results(args.out, "atlas-resolution", result, text)
    print(text)


if __name__ == "__main__":
    main()
