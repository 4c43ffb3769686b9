"""Decoded slices on their way into the outputs: staging buffers decoded into, then copied out
to the (Fortran-ordered) NIfTI volumes in cache-friendly blocks, on a second thread where there is
one (:class:`Staged`, used by :class:`neoseg.runtime.pipeline.Segmenter`)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .pipeline import Segmenter

STAGED = 64  # slices decoded before they are copied to the outputs: one 64-byte cache line of uint8
CACHE_LINE, PAGE = 64, 4096  # bytes


@dataclass
class Decoded:
    """Channel-first results on one grid: labels (*grid) in label values, masks (C, *grid) uint8,
    probs (C, *grid) float32 or None."""

    labels: np.ndarray
    masks: np.ndarray
    probs: np.ndarray | None = None



class Staged:
    """Slices (a batch on the model's grid, or a plane resampled onto the scan's) decoded into
    contiguous staging buffers of STAGED slices (fast ufunc loops), then copied to the
    (Fortran-ordered) outputs in blocks: along the sagittal axis, the file's fastest, STAGED uint8
    slices fill whole cache lines, where one slice at a time would touch every line once per slice."""

    def __init__(self, segmenter: Segmenter, todo: slice, dst: list, crop: tuple[slice, slice],
                 pool: ThreadPoolExecutor | None = None):
        """``dst``: labels, masks, probs (or None) with the slices first, the part that ``todo``'s
        slices fill; ``crop``: the part of each slice's (rows, cols) that goes there; ``pool``: a
        thread that copies one staging buffer out while a second one fills (None: one buffer,
        copied out in place)."""
        self.segmenter, self.todo, self.dst, (self.lr, self.lc) = segmenter, todo, dst, crop
        self.pool = pool if dst[2] is None else None  # probabilities: 4x the staging memory, kept single
        h = segmenter.info.hierarchy
        out_ch = h.outside_channel  # what the outputs hold before they are written: "outside"
        self.fill = (0 if out_ch is None else h.channels[out_ch].value, [int(c == out_ch) for c in range(len(h))])
        batch = segmenter.batch
        staged = min(max(1, todo.stop - todo.start), max(batch, -(-STAGED // batch) * batch))
        shape = (staged, len(segmenter.info.hierarchy)) + dst[0].shape[1:]
        self.buffers = [Decoded(aligned_empty((staged,) + shape[2:], self.dst[0].dtype),
                                aligned_empty(shape, np.uint8),
                                aligned_empty(shape, np.float32) if dst[2] is not None else None)
                        for _ in range(1 if pool is None else 2)]
        self.copying: list = [None] * len(self.buffers)  # each buffer's copy out, while it runs
        self.current, self.buf = 0, self.buffers[0]
        self.first = todo.start  # first slice held in the current staging buffer

    def _part(self, i: int, n: int) -> Decoded:
        at, buf = slice(i - self.first, i - self.first + n), self.buf
        return Decoded(buf.labels[at], buf.masks[at], None if buf.probs is None else buf.probs[at])

    def put(self, i: int, logits: np.ndarray) -> None:
        """Slices i, i + 1, ...: their (N, C, rows, cols) logits."""
        self.segmenter.decode(logits[:, :, self.lr, self.lc], 1, self.buf.probs is not None,
                              out=self._part(i, len(logits)))
        self._copy_out(i + len(logits))

    def put_decoded(self, i: int, decoded: tuple[np.ndarray, np.ndarray]) -> None:
        """Slices i, i + 1, ... as the backend decoded them: labels (N, rows, cols), masks (N, C, rows, cols)."""
        part = self._part(i, len(decoded[0]))
        part.labels[...], part.masks[...] = decoded[0][:, self.lr, self.lc], decoded[1][:, :, self.lr, self.lc]
        self._copy_out(i + len(decoded[0]))

    def _copy_out(self, j: int) -> None:
        """Slices up to ``j`` are decoded: a full staging buffer (or the last slices) goes out."""
        first = self.first
        if j - first == len(self.buf.labels) or j == self.todo.stop:
            if self.pool is None:
                self._write(self.buf, first, j)
            else:  # copied by the other thread; decoding goes on in the other buffer
                self.copying[self.current] = self.pool.submit(self._write, self.buf, first, j)
                self.current = (self.current + 1) % len(self.buffers)
                self._wait(self.current)  # its last copy must be done before it is filled again
                self.buf = self.buffers[self.current]
            self.first = j

    def _write(self, buf: Decoded, first: int, j: int) -> None:
        dst, n = self.dst, j - first
        copy_changed(dst[0][first:j], buf.labels[:n], self.fill[0])
        for c in range(buf.masks.shape[1]):
            copy_changed(dst[1][first:j, ..., c], buf.masks[:n, c], self.fill[1][c])
            if buf.probs is not None:
                copy_blocked(dst[2][first:j, ..., c], buf.probs[:n, c])

    def _wait(self, k: int) -> None:
        running, self.copying[k] = self.copying[k], None
        if running is not None:
            running.result()  # re-raises the copy's error here

    def finish(self) -> None:
        for k in range(len(self.buffers)):
            self._wait(k)


def copy_changed(dst: np.ndarray, src: np.ndarray, fill) -> None:
    """``dst[...] = src`` where ``dst`` holds ``fill`` throughout: only the in-plane box of the
    values that differ from it is copied. Most of a decoded slice is outside the head, and most
    structures fill a small part of it; finding the box reads ``src`` once, in memory order."""
    differs = src.max(axis=0) if fill == 0 else (src != fill).any(axis=0)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if len(rows):
        box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        copy_blocked(dst[box], src[box])


def copy_blocked(dst: np.ndarray, src: np.ndarray, block: int = 16) -> None:
    """``dst[...] = src`` for (slices, rows, cols) views. numpy walks ``dst`` in its memory order;
    along the sagittal axis of a NIfTI-ordered output that order jumps through ``src`` a whole
    slice at a time, so the in-plane axis ``dst`` walks first is cut into blocks whose ``src``
    lines stay in cache."""
    axis = 1 if abs(dst.strides[1]) <= abs(dst.strides[2]) else 2
    for start in range(0, dst.shape[axis], block):
        part = (slice(None),) * axis + (slice(start, start + block),)
        dst[part] = src[part]


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An empty array of ``shape`` whose slices (first axis) start one cache line past a 4 KiB
    boundary from each other: a copy along the first axis (the transposing copies to and from the
    NIfTI-ordered volumes) then spreads over the CPU cache's sets instead of evicting itself, which
    a power-of-two slice size (256^2 bytes) would do."""
    dtype = np.dtype(dtype)
    size = math.prod(shape[1:]) * dtype.itemsize
    pad = (CACHE_LINE - size) % PAGE
    flat = np.empty((shape[0], size + pad), np.uint8)
    return flat[:, :size].view(dtype).reshape(shape)  # a view: only the contiguous axis is split
