"""Torch dataset of 2D slices with {0,1,2} targets, shuffled across scans by the loader."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from neoseg.core.hierarchy import Hierarchy

from .volumes import SliceStack


class SliceDataset(Dataset):
    """Every slice of every stack. Stacks marked partial have their labels coarsened on the fly
    (children -> parent value), so their children become unknown (2) in the targets.

    Items: (image (1, H, W) float32, target (C, H, W) uint8, index (stack, slice))."""

    def __init__(self, stacks: list[SliceStack], hierarchy: Hierarchy, partial: list[bool]):
        if len(stacks) != len(partial):
            raise ValueError("one partial flag per stack is needed")
        self.stacks, self.partial = stacks, partial
        self.table = hierarchy.target_table()
        identity = np.arange(len(self.table), dtype=hierarchy.label_dtype)  # every value, none wrapped
        self.coarse_lut = hierarchy.coarsen(identity)
        self.hierarchy = hierarchy
        self.index = [(s, k) for s, stack in enumerate(stacks) for k in range(len(stack.image))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        s, k = self.index[i]
        stack = self.stacks[s]
        labels = np.asarray(stack.labels[k])
        if self.partial[s]:
            labels = self.coarse_lut[labels]
        target = self.hierarchy.encode(labels, self.table)
        image = np.asarray(stack.image[k], dtype=np.float32)[None]
        return torch.from_numpy(image), torch.from_numpy(np.ascontiguousarray(target)), torch.tensor([s, k])
