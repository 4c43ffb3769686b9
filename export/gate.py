"""The parity gate of a reduced precision, measured on what ``neoseg-infer`` gives users: the
runtime's masks (what ``_dseg`` and the structure masks are built from) of whole scans, held out
by the run's split where it is known (:mod:`.scans`), each precision against FP32 through the same
:class:`~neoseg.runtime.pipeline.Segmenter`.

Dice is pooled over the scans: each structure's overlap and sizes are summed over all of them
before the ratio is taken. On one 64³ scan a structure the model barely segments holds 5–30
voxels, so one flipped voxel costs it 0.02–0.1 of Dice and a per-scan Dice cannot resolve the
0.99 it is held to; pooled, the gate measures the share of each structure's voxels that change,
and the record keeps the worst structure's size (``voxels``) so a reader sees what one voxel is
worth. Below 50 voxels even the pooled Dice cannot resolve 0.99, so a structure whose masks differ
in at most :data:`~neoseg.runtime.precision.PARITY_VOXELS` voxel passes
(docs/reduced-precision.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from neoseg.core.scans import voxel_size
from neoseg.runtime.precision import PARITY_DICE, PARITY_VOXELS, ParityRecord

from .parity import dice, overlap
from .scans import Scans


def runtime_parity(reference, candidate, scans: Scans, measured_with: str,
                   kept_fp32: tuple[str, ...] = ()) -> ParityRecord:
    """The worst structure's pooled Dice of ``candidate``'s masks against ``reference``'s (two
    Segmenters, ``reference`` in FP32) over ``scans``, which the record names;
    ``measured_with`` names the candidate, ``kept_fp32`` the layers it keeps in FP32."""
    names = reference.info.hierarchy.names
    both, total, size = (np.zeros(len(names), np.int64) for _ in range(3))
    slices = 0
    for image, img in scans.images:
        zooms = voxel_size(img)
        ref, got = (s.segment(image, img.affine, zooms) for s in (reference, candidate))
        b, t = overlap(got.masks, ref.masks, len(names), axis=-1)
        both, total = both + b, total + t
        size += np.count_nonzero(ref.masks.reshape(-1, len(names)), axis=0)
        slices += got.computed_slices
    score, differing = dice(both, total), total - 2 * both
    # the worst structure: of those that fail, else of those Dice resolves (more than the floor differ)
    failed, resolved = (score < PARITY_DICE) & (differing > PARITY_VOXELS), differing > PARITY_VOXELS
    among = failed if failed.any() else resolved if resolved.any() else np.ones_like(failed)
    k = int(np.argmin(np.where(among, score, np.inf)))
    return ParityRecord(min_dice=round(float(score[k]), 6), worst=names[k], slices=slices,
                        measured_with=f"{measured_with}; {len(scans)} whole scans through the runtime, pooled, "
                                      f"vs its FP32",
                        scans=len(scans), voxels=int(size[k]), kept_fp32=tuple(kept_fp32), differing=int(differing[k]),
                        scan_keys=scans.keys, scans_from=scans.source)


def first_passing(remedies: list[int], measure: Callable[[int], ParityRecord],
                  log: Callable[[ParityRecord, int], None]) -> tuple[int, int, dict[int, ParityRecord]]:
    """Gate each of ``remedies`` in turn (``measure`` writes that model and gates it; 0: none) until
    one passes; ``log(record, next)`` says which missed before the next is tried. Returns the one to
    keep (the first that passed, else the best, the cheaper on a tie), the one measured last and
    every record."""
    records = {}
    for i, level in enumerate(remedies):
        records[level] = measure(level)
        if records[level].passed:
            break
        if i + 1 < len(remedies):
            log(records[level], remedies[i + 1])
    best = max(records, key=lambda k: (records[k].passed, records[k].min_dice, -k))
    return best, level, records
