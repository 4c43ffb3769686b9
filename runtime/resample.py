"""Logits from the model's grid to the scan's, a few planes at a time.

A scan whose voxel size differs from the model's is segmented on a resampled copy; its logits go
back onto the scan's grid by the separable linear interpolation of :func:`.geometry.resize_linear`
(axes in the order X, Y, Z) and are thresholded there. Instead of a whole (C, X, Y, Z) float32
logit volume, :class:`PlaneResampler` takes the network's slices batch by batch, keeps only the
model-grid planes that the next scan-grid planes interpolate between (at most a batch and one
plane), and hands each scan-grid plane to ``emit`` as soon as both its neighbours are known. Each
value is computed by the same float32 operations in the same order as ``resize_linear`` on the
whole volume, so the results are the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .geometry import linear_weights, resize_axis


class PlaneResampler:
    """Model-grid slices along ``axis`` (of a volume of ``shape``) -> scan-grid planes of
    ``native_shape``. ``computed``: the slices that will be put; the others are "outside":
    ``outside`` is the (C, A1, A2) logit plane of the model grid where nothing was computed, and
    ``window(k, logits)`` places slice ``k``'s computed logits into a copy of it. ``emit(p, plane)``
    receives scan-grid plane ``p`` along ``axis`` as (C, B1, B2) logits, in order."""

    def __init__(self, shape, native_shape, axis: int, computed: slice, outside: np.ndarray,
                 window: Callable[[int, np.ndarray], np.ndarray], emit: Callable[[int, np.ndarray], None]):
        self.window, self.emit = window, emit
        in_plane = [a for a in range(3) if a != axis]
        # in-plane axes resized before the slice axis (those before it in X, Y, Z) and after it,
        # numbered as axes of a (C, A1, A2) plane
        self.before = [(1 + k, native_shape[a]) for k, a in enumerate(in_plane) if a < axis]
        self.after = [(1 + k, native_shape[a]) for k, a in enumerate(in_plane) if a > axis]
        self.same = shape[axis] == native_shape[axis]  # resize_linear leaves this axis as it is
        self.n_out = native_shape[axis]
        self.i0, self.i1, self.w = linear_weights(shape[axis], self.n_out)
        if self.same:
            self.i0 = self.i1 = np.arange(self.n_out)
        self.outside = self._resize(outside, self.before)
        self.planes: dict[int, np.ndarray] = {}  # computed model planes, resized in-plane (``before``)
        self.known, self.stop = computed.start, computed.stop  # planes below ``known`` are final
        self.next = 0  # next scan-grid plane to emit

    @staticmethod
    def _resize(plane: np.ndarray, axes) -> np.ndarray:
        for a, n in axes:
            plane = resize_axis(plane, a, n)
        return plane

    def put(self, first: int, logits: np.ndarray) -> None:
        """The next computed slices, ``first``, ``first + 1``, ...: their (N, C, rows, cols) logits."""
        needed = set(self.i0[self.next:].tolist()) | set(self.i1[self.next:].tolist())
        for k in range(first, first + len(logits)):
            if k in needed:
                self.planes[k] = self._resize(self.window(k, logits[k - first]), self.before)
        self.known = first + len(logits)
        self._flush()

    def finish(self) -> None:
        """Emit the planes still held back (after the last computed slice: all of them)."""
        self.known = self.stop
        self._flush()

    def _flush(self) -> None:
        while self.next < self.n_out:
            p = self.next
            if self.known <= self.i1[p] < self.stop:  # its upper neighbour is yet to come
                break
            lo, hi = self.planes.get(int(self.i0[p]), self.outside), self.planes.get(int(self.i1[p]), self.outside)
            self.emit(p, self._resize(lo if self.same else lo + (hi - lo) * self.w[p], self.after))
            self.next += 1
            if self.next < self.n_out:
                for k in [k for k in self.planes if k < self.i0[self.next]]:
                    del self.planes[k]
