"""Real partial annotations: what a session's files say about each channel at each voxel.

A session may come with a label map (full, or partial: some voxels hold a parent's own value, so
its children are unknown there) and/or binary masks of single structures (``desc-tcv_mask``: the
TCV parent; ``desc-brain_mask``: everything but the outside channel). Each voxel's {0,1,2} target
row follows from what is known there:

- inside a mask of channel c: c and its ancestors are 1, c's descendants unknown, every other
  channel 0 (a voxel lies in exactly one leaf, and that leaf is under c);
- outside it: c and its descendants are 0, the rest unknown;
- a label value v: the hierarchy's row of v (``Hierarchy.target_table``).

Where several sources speak of one voxel their rows are combined; a 1 against a 0 (a child mask
reaching outside its parent's mask, say) is refused, naming the files. Voxels get *codes*: the
label value whose row they match, else an extra code above the hierarchy's values with its row
listed beside the map. Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hierarchy import UNKNOWN, Hierarchy
from .labels import label_dtype

BRAIN = "brain"  # the mask name that means "not the outside channel" (dHCP's desc-brain_mask)


@dataclass(frozen=True)
class Coded:
    """A session's targets as a code map: ``codes`` (same grid as the sources) hold label values
    of the hierarchy, or ``first_extra + k`` for ``extra_rows[k]`` ((C,) uint8 target rows)."""

    codes: np.ndarray
    extra_rows: tuple[tuple[int, ...], ...]
    first_extra: int

    def table(self, hierarchy: Hierarchy) -> np.ndarray:
        """(codes x channels) target rows: the hierarchy's table, then the extra rows."""
        extra = np.asarray(self.extra_rows, np.uint8).reshape(-1, len(hierarchy))
        return np.concatenate([hierarchy.target_table(), extra])


def partial_values(hierarchy: Hierarchy) -> set[int]:
    """The label values whose voxels leave some child unknown: the parents' own values."""
    table = hierarchy.target_table()
    return {v for v in hierarchy.label_values if (table[v] == UNKNOWN).any()}


def mask_channel(hierarchy: Hierarchy, name: str) -> tuple[int, bool]:
    """(channel, inverted) of a mask name: a channel's own name, or ``brain`` for the complement
    of the outside channel (label value 0)."""
    if name == BRAIN:
        outside = hierarchy.outside_channel
        if outside is None:
            raise ValueError(f"a brain mask needs a channel of label value 0 (outside the brain), but hierarchy "
                             f"'{hierarchy.name}' has none; name the mask after a channel ({hierarchy.names})")
        return outside, True
    return hierarchy.index(name), False


def mask_names(hierarchy: Hierarchy) -> list[str]:
    """The mask names this hierarchy understands."""
    return hierarchy.names + ([BRAIN] if hierarchy.outside_channel is not None and BRAIN not in hierarchy.names else [])


def inside_row(hierarchy: Hierarchy, c: int) -> np.ndarray:
    row = np.zeros(len(hierarchy), np.uint8)
    row[[c] + hierarchy.ancestors(c)] = 1
    row[hierarchy.descendants(c)] = UNKNOWN
    return row


def outside_row(hierarchy: Hierarchy, c: int) -> np.ndarray:
    row = np.full(len(hierarchy), UNKNOWN, np.uint8)
    row[[c] + hierarchy.descendants(c)] = 0
    return row


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The row that both ``a`` and ``b`` allow (known entries kept), or None if they contradict."""
    known_a, known_b = a != UNKNOWN, b != UNKNOWN
    if (known_a & known_b & (a != b)).any():
        return None
    return np.where(known_a, a, b).astype(np.uint8)


def code_session(hierarchy: Hierarchy, labels: np.ndarray | None, masks: list[tuple[str, np.ndarray]],
                 sources: list[str]) -> Coded:
    """Codes and extra rows of one session from its label map (or None) and named binary masks
    (same grid). ``sources`` names the files (label map first if any, then the masks) for errors."""
    table = hierarchy.target_table()
    if not masks:
        if labels is None:
            raise ValueError("a session needs a label map or a mask")
        return Coded(labels, (), len(table))
    shape = masks[0][1].shape if labels is None else labels.shape
    key = np.zeros(shape, np.int64)  # (label value, mask bits) packed into one integer per voxel
    for bit, (_, mask) in enumerate(masks):
        key |= (np.asarray(mask) > 0).astype(np.int64) << bit
    if labels is not None:
        key |= labels.astype(np.int64) << len(masks)
    combos, inverse = np.unique(key, return_inverse=True)
    value_of_row = {bytes(table[v]): v for v in reversed(hierarchy.label_values)}  # the first value wins
    extra: list[bytes] = []
    codes = np.empty(len(combos), np.int64)
    for k, combo in enumerate(combos.tolist()):
        row, failed = _combo_row(hierarchy, table, combo, masks, labels is not None)
        if row is None:
            n_masks, name = len(masks), masks[failed][0]
            where = "inside" if combo >> failed & 1 else "outside"
            raise ValueError(f"{sources[len(sources) - n_masks + failed]}: {int(np.count_nonzero(inverse == k))} "
                             f"voxels lie {where} this {name} mask but "
                             f"{', '.join(sources[:len(sources) - n_masks + failed])} put them in a structure that "
                             f"contradicts it (e.g. a child outside its parent); fix the masks or label map")
        if bytes(row) in value_of_row:
            codes[k] = value_of_row[bytes(row)]
        else:
            if bytes(row) not in extra:
                extra.append(bytes(row))
            codes[k] = len(table) + extra.index(bytes(row))
    dtype = label_dtype(int(codes.max()))
    return Coded(codes.astype(dtype)[inverse.reshape(shape)], tuple(tuple(r) for r in extra), len(table))


def _combo_row(hierarchy: Hierarchy, table: np.ndarray, combo: int, masks, has_labels: bool):
    """(target row, None) of the voxels whose label value and mask bits are packed in ``combo``,
    or (None, the bit of the mask that contradicts what came before it)."""
    row = table[combo >> len(masks)] if has_labels else np.full(len(hierarchy), UNKNOWN, np.uint8)
    for bit, (name, _) in enumerate(masks):
        c, inverted = mask_channel(hierarchy, name)
        inside = bool(combo >> bit & 1) != inverted
        row = combine(row, inside_row(hierarchy, c) if inside else outside_row(hierarchy, c))
        if row is None:
            return None, bit
    return row, None


def known_channels(rows: np.ndarray) -> np.ndarray:
    """(C,) bool: the channels whose target is known at every voxel, given the (K, C) rows of the
    codes a session holds."""
    return (np.asarray(rows) != UNKNOWN).all(axis=0)
