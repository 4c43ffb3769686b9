"""One scan through the network: NIfTI in, segmentation on the scan's own grid out.

canonical (RAS+) orientation -> model spacing -> slices along the model's axis, each window around
the head as in training -> min-max scaling -> only the slices (and, where the backend allows, the
in-plane box) that hold head are computed, in batches -> thresholds -> restack by slice index ->
back to the scan's spacing and axis order. Thresholds are applied to the logits
(sigmoid(x) >= t <=> x >= logit(t)), so no sigmoid is computed unless probabilities are asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from neoseg.core.preprocess import (box_center, foreground_profiles, from_slices, head_box, minmax_scale,
                                    plane_windows, to_slices)

from . import geometry
from .backends import Backend

MARGIN = 4  # voxels of context kept around the head's box (slices and in-plane)
HEAD_SHARE = 0.1  # planes with less than this share of the fullest plane's foreground are not head
OUTSIDE_LOGIT = 30.0  # sigmoid(30) == 1 in float32: "outside" where no slice was computed


@dataclass
class Decoded:
    """Channel-first results on one grid: labels (*grid) in label values, masks (C, *grid) uint8,
    probs (C, *grid) float32 or None."""

    labels: np.ndarray
    masks: np.ndarray
    probs: np.ndarray | None = None


@dataclass
class Segmentation:
    """Results on the scan's own voxel grid, channels last: labels (X, Y, Z); masks and
    probs (X, Y, Z, C)."""

    labels: np.ndarray
    masks: np.ndarray
    probs: np.ndarray | None
    computed_slices: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the user should know (set by segment_file)


class Segmenter:
    """Runs a backend over volumes. ``batch`` defaults to the backend's. ``skip_empty`` computes
    only the slices that hold head: planes with at least ``HEAD_SHARE`` of the fullest plane's
    foreground, plus ``MARGIN``; the others are set to "outside" (slices are computed one by one,
    so the computed ones do not change, but a structure reaching into a skipped plane is cut
    there; the parity benchmark measures it). ``crop_plane`` also cuts each slice to the head's box:
    faster for a small head in a large field of view, but the network then sees less context at
    the cut, which changes results there; off by default."""

    def __init__(self, backend: Backend, batch: int | None = None, skip_empty: bool = True,
                 crop_plane: bool = False):
        if batch is not None and batch < 1:
            raise ValueError(f"--batch must be at least 1, got {batch}")
        self.backend, self.info = backend, backend.info
        if batch is not None:
            backend.batch = batch  # backends that size buffers or CUDA graphs by it use the same
        self.batch = backend.batch
        self.skip_empty, self.crop_plane = skip_empty, crop_plane
        if backend.fixed_size not in (None, self.info.slice_size):
            raise ValueError(f"{backend.name} runs {backend.fixed_size}^2 slices but the model's slice size is "
                             f"{self.info.slice_size}")

    # ---- whole scans -----------------------------------------------------------------------
    def segment(self, data: np.ndarray, affine: np.ndarray, zooms, probabilities: bool = False) -> Segmentation:
        """A volume as stored (any axis order) -> results on the same grid."""
        t = {}
        start = time.perf_counter()
        ornt = geometry.canonical_ornt(affine)
        image = np.asarray(geometry.to_canonical(data, ornt), np.float32)
        native_shape = image.shape
        spacing = geometry.canonical_spacing(zooms, ornt)
        resample = geometry.needs_resampling(spacing, self.info.spacing)
        if resample:
            image = geometry.resize_linear(image, geometry.resampled_shape(image.shape, spacing, self.info.spacing))
        t["resample"] = time.perf_counter() - start
        if resample:  # decode on the scan's grid: interpolate logits, then threshold
            logits, n = self.predict(image, t, logits=True)
            start = time.perf_counter()
            decoded = self.decode(geometry.resize_linear(logits, native_shape, first_axis=1), 0, probabilities)
        else:
            decoded, n = self.predict(image, t, probabilities=probabilities)
            start = time.perf_counter()
        labels = geometry.from_canonical(decoded.labels, ornt)
        masks = geometry.from_canonical(np.moveaxis(decoded.masks, 0, -1), ornt)
        probs = None if decoded.probs is None else geometry.from_canonical(np.moveaxis(decoded.probs, 0, -1), ornt)
        t["postprocess"] = t.get("postprocess", 0.0) + time.perf_counter() - start
        return Segmentation(labels, masks, probs, n, t)

    # ---- canonical volumes at the model's spacing ----------------------------------------------
    def predict(self, image: np.ndarray, timings: dict | None = None, probabilities: bool = False,
                logits: bool = False):
        """Canonical (X, Y, Z) volume at the model's spacing -> (:class:`Decoded`, or (C, X, Y, Z)
        float32 logits when ``logits``; number of slices computed)."""
        t = timings if timings is not None else {}
        info, size, axis = self.info, self.info.slice_size, self.info.axis
        start = time.perf_counter()
        profiles = foreground_profiles(image, info.head_fraction)
        center = box_center(head_box(profiles), image.shape)  # = head_center(image), as in training
        windows = plane_windows(image.shape, axis, size, center)
        box = head_box(profiles, HEAD_SHARE)  # robust to stray bright voxels: what is computed
        slices = to_slices(minmax_scale(image), axis, windows)
        todo, (rows, cols) = self._regions(box, windows, len(slices))
        n_ch, out_ch = len(info.hierarchy), info.hierarchy.outside_channel
        if logits:
            out = np.full((len(slices), n_ch, size, size), -OUTSIDE_LOGIT, np.float32)
            if out_ch is not None:
                out[:, out_ch] = OUTSIDE_LOGIT
        else:
            out = self._outside(len(slices), size, probabilities)
        t["preprocess"] = time.perf_counter() - start
        t.setdefault("network", 0.0)
        t.setdefault("postprocess", 0.0)
        for i in range(todo.start, todo.stop, self.batch):
            j = min(i + self.batch, todo.stop)
            start = time.perf_counter()
            x = slices[i:j, None, rows, cols]
            if hasattr(self.backend, "run_decoded") and not (logits or probabilities):
                result = Decoded(*self.backend.run_decoded(x))  # decoded where the logits are
            else:
                result = self.backend.run(x)
            t["network"] += time.perf_counter() - start
            start = time.perf_counter()
            if logits:
                out[i:j, :, rows, cols] = result
            else:
                part = result if isinstance(result, Decoded) else self.decode(result, 1, probabilities)
                out.labels[i:j, rows, cols] = part.labels
                out.masks[i:j, :, rows, cols] = part.masks
                if probabilities:
                    out.probs[i:j, :, rows, cols] = part.probs
            t["postprocess"] += time.perf_counter() - start
        start = time.perf_counter()
        result = self._restack(out, image.shape, windows, logits)
        t["postprocess"] += time.perf_counter() - start
        return result, todo.stop - todo.start

    def _regions(self, box, windows, n_slices) -> tuple[slice, tuple[slice, slice]]:
        """The slice range and in-plane (rows, cols) of the window that hold head."""
        size, axis = self.info.slice_size, self.info.axis
        full = slice(0, size)
        if not self.skip_empty:
            todo = slice(0, n_slices)
        elif box is None:
            return slice(0, 0), (full, full)
        else:
            lo, hi = box[axis]
            todo = slice(max(0, lo - MARGIN), min(n_slices, hi + 1 + MARGIN))
        if not self.crop_plane or box is None or self.backend.fixed_size is not None:
            return todo, (full, full)
        plane = []
        for a, w in sorted(windows.items()):
            first, last = box[a][0] + w.shift - MARGIN, box[a][1] + w.shift + MARGIN
            plane.append(_fit(first, last, size, self.info.divisor))
        return todo, tuple(plane)

    def _outside(self, n: int, size: int, probabilities: bool) -> Decoded:
        info, out_ch = self.info, self.info.hierarchy.outside_channel
        grid = (n, len(info.hierarchy), size, size)
        masks = np.zeros(grid, np.uint8)
        probs = np.zeros(grid, np.float32) if probabilities else None
        value = 0
        if out_ch is not None:
            masks[:, out_ch] = 1
            if probs is not None:
                probs[:, out_ch] = 1.0
            value = info.hierarchy.channels[out_ch].value
        return Decoded(np.full((n, size, size), value, _label_dtype(info)), masks, probs)

    def _restack(self, out, shape, windows, logits: bool):
        """Slice stacks -> (C,) X, Y, Z; voxels outside the in-plane windows become "outside"."""
        axis, out_ch = self.info.axis, self.info.hierarchy.outside_channel
        size = self.info.slice_size
        inside = from_slices(np.ones((shape[axis], size, size), bool), shape, axis, windows).astype(bool)
        if logits:
            vol = from_slices(out, shape, axis, windows, fill=-OUTSIDE_LOGIT)
            if out_ch is not None:
                vol[out_ch][~inside] = OUTSIDE_LOGIT
            return vol
        value = 0 if out_ch is None else self.info.hierarchy.channels[out_ch].value
        decoded = Decoded(from_slices(out.labels, shape, axis, windows, fill=value),
                          from_slices(out.masks, shape, axis, windows),
                          None if out.probs is None else from_slices(out.probs, shape, axis, windows))
        if out_ch is not None:
            decoded.masks[out_ch][~inside] = 1
            if decoded.probs is not None:
                decoded.probs[out_ch][~inside] = 1.0
        return decoded

    def decode(self, logits: np.ndarray, axis: int, probabilities: bool = False) -> Decoded:
        """Logits (channels on ``axis``) -> labels, masks and optionally sigmoid probabilities."""
        h = self.info.hierarchy
        labels = h.to_labels(logits, axis).astype(_label_dtype(self.info), copy=False)
        masks = h.masks(logits, self.info.logit_thresholds, axis)
        probs = None
        if probabilities:
            probs = np.negative(logits, dtype=np.float32)
            np.exp(probs, out=probs)
            probs += 1
            np.reciprocal(probs, out=probs)
        return Decoded(labels, masks, probs)


def _fit(first: int, last: int, size: int, divisor: int) -> slice:
    """[first, last] grown to a multiple of ``divisor`` and kept inside [0, size)."""
    first, last = max(0, first), min(size - 1, last)
    length = min(size, -(-(last - first + 1) // divisor) * divisor)
    start = min(max(0, (first + last + 1 - length) // 2), size - length)
    return slice(start, start + length)


def _label_dtype(info) -> np.dtype:
    return info.hierarchy.label_dtype
