"""Torch dataset of 2D slices with {0,1,2} targets, shuffled across scans by the loader."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from neoseg.core.hierarchy import Hierarchy

from .volumes import SliceStack


class SliceDataset(Dataset):
    """Every slice of every stack. Stacks marked partial have their labels coarsened on the fly
    (children -> parent value), so their children become unknown (2) in the targets: the
    simulation of partial labels. Really partial stacks (``SliceStack.partial``) are read as they
    are; the target rows of their mask codes join the hierarchy's table (``table``; each stack's
    codes are mapped onto it by ``luts``).

    Items: (image (1, H, W) float32, target (C, H, W) uint8, index (stack, slice))."""

    def __init__(self, stacks: list[SliceStack], hierarchy: Hierarchy, partial: list[bool]):
        if len(stacks) != len(partial):
            raise ValueError("one partial flag per stack is needed")
        self.stacks, self.partial = stacks, partial
        base = hierarchy.target_table()
        identity = np.arange(len(base), dtype=hierarchy.label_dtype)  # every value, none wrapped
        self.coarse_lut = hierarchy.coarsen(identity)
        self.hierarchy = hierarchy
        extra = sorted({row for stack in stacks for row in stack.extra_rows})
        self.table = np.concatenate([base, np.asarray(extra, np.uint8).reshape(-1, len(hierarchy))])
        self.luts = [_code_lut(stack, len(base), extra) for stack in stacks]
        self.index = [(s, k) for s, stack in enumerate(stacks) for k in range(len(stack.image))]

    @property
    def full(self) -> list[bool]:
        """Per stack: every target entry known (neither coarsened nor really partial)."""
        return [not (p or st.partial) for st, p in zip(self.stacks, self.partial)]

    @property
    def full_slices(self) -> list[bool]:
        """Per item: whether its stack is :attr:`full`."""
        full = self.full
        return [full[s] for s, _ in self.index]

    def codes(self, s: int, labels: np.ndarray) -> np.ndarray:
        """Stack ``s``'s stored labels as rows of :attr:`table` (coarsened where it is marked partial)."""
        labels = np.asarray(labels)
        if self.luts[s] is not None:
            labels = self.luts[s][labels]
        return self.coarse_lut[labels] if self.partial[s] else labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        s, k = self.index[i]
        stack = self.stacks[s]
        target = self.hierarchy.encode(self.codes(s, stack.labels[k]), self.table)
        image = np.asarray(stack.image[k], dtype=np.float32)[None]
        return torch.from_numpy(image), torch.from_numpy(np.ascontiguousarray(target)), torch.tensor([s, k])


def _code_lut(stack: SliceStack, n_values: int, extra: list[tuple[int, ...]]) -> np.ndarray | None:
    """Stack codes -> dataset codes: label values unchanged, the stack's extra codes onto ``extra``."""
    if not stack.extra_rows:
        return None
    lut = np.arange(stack.first_extra + len(stack.extra_rows), dtype=np.int64)
    for k, row in enumerate(stack.extra_rows):
        lut[stack.first_extra + k] = n_values + extra.index(row)
    return lut.astype(np.uint16 if lut.max() > 255 else np.uint8)
