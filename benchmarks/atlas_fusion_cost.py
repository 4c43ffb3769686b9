"""What atlas fusion at inference (``neoseg-infer --atlas``) costs per scan, with its registrations
one after another and side by side (one process each): a synthetic cohort's first session is the
scan, the next ``--atlases`` are the atlases. The network is left out (its parent stands in as
the scan's TCV, its children as a uniform guess): only the registrations, the fusion and the blend
are timed, each setting ``--repeats`` times (median). Both settings must give the same labels.

    python -m neoseg.benchmarks.atlas_fusion_cost [--grid 64] [--atlases 2] [--workers 2]

Timings depend on what else runs; the script prints the load before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import nibabel as nib
import numpy as np

from .common import cohort, machine, table, write_results


def network_stand_in(labels: np.ndarray, hierarchy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, masks and probabilities of a network that finds the parent exactly and cannot tell
    its children apart (each child 1/K of the parent)."""
    table_ = hierarchy.target_table()[labels]  # (X, Y, Z, C): 1 known in, 0 known out
    probs = (table_ == 1).astype(np.float32)
    for parent, kids in hierarchy.sibling_groups:
        for k in kids:
            probs[..., k] = probs[..., parent] / len(kids)
    masks = (probs >= 0.5).astype(np.uint8)
    return labels.copy(), masks, probs


def run(atlases, image, labels, spacing, hierarchy, workers: int, repeats: int) -> tuple[float, np.ndarray]:
    from neoseg.runtime.atlas import AtlasFusion

    seconds, out = [], None
    for _ in range(repeats):
        fusion = AtlasFusion.from_sessions(atlases, hierarchy, per_scan=len(atlases))  # new: nothing remembered
        result = network_stand_in(labels, hierarchy)
        began = time.perf_counter()
        fusion.refine(image, spacing, *result, (0.5,) * len(hierarchy), workers=workers)
        seconds.append(time.perf_counter() - began)
        out = result[0]
    return statistics.median(seconds), out


def main(argv=None) -> None:
    from neoseg.core.hierarchy import builtin

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=64, help="voxels a side of the cohort (128 mm: 64 is 2 mm, 256 0.5 mm)")
    p.add_argument("--atlases", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="registrations at once in the parallel setting")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    hierarchy = builtin()
    sessions = cohort(None, args.atlases + 1, args.grid, seed=5)
    scan, atlases = sessions[0], sessions[1:args.atlases + 1]
    img = nib.as_closest_canonical(nib.load(scan.t2))
    image = np.asarray(img.dataobj, np.float32)
    labels = np.asarray(nib.as_closest_canonical(nib.load(scan.labels)).dataobj).astype(np.uint8)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    result = {"machine": machine(), "grid": args.grid, "atlases": len(atlases), "repeats": args.repeats}
    one, labels_one = run(atlases, image, labels, spacing, hierarchy, 1, args.repeats)
    several, labels_several = run(atlases, image, labels, spacing, hierarchy, args.workers, args.repeats)
    result.update(sequential_s=one, parallel_s=several, workers=args.workers, speedup=one / several,
                  same_labels=bool(np.array_equal(labels_one, labels_several)), load_end=os.getloadavg())
    m = result["machine"]
    text = (f"Machine: {m['cpu']} ({m['cores']} cores); load at start {m['load']}, at the end "
            f"{[round(x, 2) for x in result['load_end']]}\n\n"
            + table(["scan", "atlases", "one at a time (s)", f"{args.workers} at once (s)", "speed-up", "same labels"],
                    [[f"{args.grid}^3, {spacing[0]:g} mm", len(atlases), f"{one:.1f}", f"{several:.1f}",
                      f"{one / several:.2f}x", "yes" if result["same_labels"] else "NO"]]) + "\n")
    write_results(args.out, "atlas-fusion-cost", result, text)
    print(text)


if __name__ == "__main__":
    main()
