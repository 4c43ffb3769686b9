"""One scan through the network: NIfTI in, segmentation on the scan's own grid out.

canonical (RAS+) orientation -> model spacing -> slices along the model's axis, each window around
the head as in training -> min-max scaling -> only the slices (and, where the backend allows, the
in-plane box) that hold head are computed, in batches -> thresholds -> restack by slice index ->
back to the scan's spacing and axis order. Thresholds are applied to the logits
(sigmoid(x) >= t <=> x >= logit(t)), so no sigmoid is computed unless probabilities are asked for.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from neoseg.core.preprocess import (Intensities, box_center, foreground_profiles, head_box, intensities,
                                     intensity_notes, plane_windows)

from . import geometry
from .backend import Backend
from .clock import PhaseClock
from .cpu import usable_cpus
from .resample import PlaneResampler
from . import staging
from .staging import Decoded, Staged

MARGIN = 4  # voxels of context kept around the head's box (slices and in-plane)
HEAD_SHARE = 0.1  # planes with less than this share of the fullest plane's foreground are not head
OUTSIDE_LOGIT = 30.0  # sigmoid(30) == 1 in float32: "outside" where no slice was computed
THREADED_VOXELS = 1 << 21  # smaller volumes (below ~128^3) are quicker on one thread than handed round
AXIS_NAMES = ("left-right", "front-back", "up-down")  # the canonical (RAS+) axes


@dataclass
class Segmentation:
    """Results on the scan's own voxel grid, channels last: labels (X, Y, Z); masks and
    probs (X, Y, Z, C)."""

    labels: np.ndarray
    masks: np.ndarray
    probs: np.ndarray | None
    computed_slices: int
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    warnings: list[str] = field(default_factory=list)  # what the user should know
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per phase, all threads
    atlas: dict | None = None  # what atlas fusion did (runtime/atlas.py), or None without it


class Segmenter:
    """Runs a backend over volumes. ``batch`` defaults to the backend's. ``skip_empty`` computes
    only the slices that hold head: planes with at least ``HEAD_SHARE`` of the fullest plane's
    foreground, plus ``MARGIN``; the others are set to "outside" (slices are computed one by one,
    so the computed ones do not change, but a structure reaching into a skipped plane is cut
    there; the parity benchmark measures it). ``crop_plane`` also cuts each slice to the head's box:
    faster for a small head in a large field of view, but the network then sees less context at
    the cut, which changes results there; off by default. With ``host_threads`` of 2 or more
    (default: the CPUs this process may use), a second thread copies each block of decoded slices
    out to the outputs while the next block is computed and decoded (numpy releases the GIL in the
    copies); the results do not depend on it."""

    def __init__(self, backend: Backend, batch: int | None = None, skip_empty: bool = True,
                 crop_plane: bool = False, host_threads: int | None = None, atlas=None, model_digest: str = ""):
        if batch is not None and batch < 1:
            raise ValueError(f"--batch must be at least 1, got {batch}")
        if host_threads is not None and host_threads < 1:
            raise ValueError(f"host threads must be at least 1, got {host_threads}")
        self.host_threads = host_threads or len(usable_cpus())
        self.backend, self.info = backend, backend.info
        if batch is not None:
            backend.batch = batch  # backends that size buffers or CUDA graphs by it use the same
        self.batch = backend.batch
        self.skip_empty, self.crop_plane = skip_empty, crop_plane
        self.atlas = atlas  # an AtlasFusion (runtime/atlas.py) that blends each scan's children, or None
        self.model_digest = model_digest  # the model file's SHA-256, recorded with each scan's results
        if backend.fixed_size not in (None, self.info.slice_size):
            raise ValueError(f"{backend.name} runs {backend.fixed_size}^2 slices but the model's slice size is "
                             f"{self.info.slice_size}")

    # ---- whole scans -----------------------------------------------------------------------
    def segment(self, data: np.ndarray, affine: np.ndarray, zooms, probabilities: bool = False) -> Segmentation:
        """A volume as stored (any axis order) -> results on the same grid."""
        clock = PhaseClock()
        clock("resample")
        ornt = geometry.canonical_ornt(affine)
        image = np.asarray(geometry.to_canonical(data, ornt), np.float32)
        native, native_shape = image, image.shape
        spacing = geometry.canonical_spacing(zooms, ornt)
        resample = geometry.needs_resampling(spacing, self.info.spacing)
        if resample:
            image = geometry.resize_linear(image, geometry.resampled_shape(image.shape, spacing, self.info.spacing))
        # results are decoded straight into arrays on the stored grid, in the file's (Fortran) order
        out = self._outputs(np.shape(data)[:3], probabilities or self.atlas is not None)
        targets = [None if a is None else geometry.to_canonical(a, ornt) for a in out]
        found = intensities(native)  # the scan's own values, as the user can check them
        n, cut = self._predict_into(image, clock, targets, native_shape if resample else None,
                                    None if resample else found)
        cut = intensity_notes(found) + cut
        atlas = None
        if self.atlas is not None:  # the atlases' children blended in, on the scan's grid
            clock("atlas")
            atlas = self.atlas.refine(native, spacing, *targets, self.info.thresholds, workers=self.host_threads)
            clock(None)
        probs = out[2] if probabilities else None
        return Segmentation(out[0], out[1], probs, n, clock.wall, cut, cpu_timings=clock.cpu, atlas=atlas)

    # ---- canonical volumes at the model's spacing ----------------------------------------------
    def predict(self, image: np.ndarray, timings: dict | None = None, probabilities: bool = False):
        """Canonical (X, Y, Z) volume at the model's spacing -> (:class:`Decoded`, number of slices
        computed)."""
        labels, masks, probs = self._outputs(image.shape, probabilities)
        n, _ = self._predict_into(image, PhaseClock(timings), [labels, masks, probs])
        return Decoded(labels, np.moveaxis(masks, -1, 0), None if probs is None else np.moveaxis(probs, -1, 0)), n

    def _outputs(self, shape, probabilities: bool) -> list:
        """Labels (X, Y, Z), masks and probabilities (X, Y, Z, C) on ``shape``, all "outside", laid
        out as a NIfTI file stores them (Fortran order: one contiguous volume per channel), so
        writing them needs no transposing copy. Zeroed memory is not touched until written."""
        h, out_ch = self.info.hierarchy, self.info.hierarchy.outside_channel
        value = 0 if out_ch is None else h.channels[out_ch].value
        labels = np.full(tuple(shape)[::-1], value, _label_dtype(self.info)).T
        masks = np.zeros((len(h),) + tuple(shape)[::-1], np.uint8).T
        probs = np.zeros((len(h),) + tuple(shape)[::-1], np.float32).T if probabilities else None
        if out_ch is not None:
            masks[..., out_ch] = 1
            if probs is not None:
                probs[..., out_ch] = 1.0
        return [labels, masks, probs]

    def _plan(self, image: np.ndarray, found: Intensities | None = None):
        """The slice windows around the head, the slices and in-plane box to compute, and the
        intensity range of the min-max scaling (``found``: ``image``'s :func:`intensities`, where
        already known)."""
        info = self.info
        found = found or intensities(image)
        profiles = foreground_profiles(image, info.head_fraction, found)
        center = box_center(head_box(profiles), image.shape)  # = head_center(image), as in training
        windows = plane_windows(image.shape, info.axis, info.slice_size, center)
        box = head_box(profiles, HEAD_SHARE)  # robust to stray bright voxels: what is computed
        todo, plane = self._regions(box, windows, image.shape[info.axis])
        return windows, todo, plane, (found.lo, found.hi), self._cut(profiles, box, windows)

    def _cut(self, profiles: list[np.ndarray], box, windows) -> list[str]:
        """What the user should know where the head reaches beyond the slice window: it is labelled
        outside there (training refuses such a scan; inference says so, once per axis)."""
        notes = []
        for a, w in sorted(windows.items()) if box is not None else ():
            beyond = max(0, w.src.start - box[a][0]) + max(0, box[a][1] + 1 - w.src.stop)
            if beyond:
                voxels = int(profiles[a][:w.src.start].sum() + profiles[a][w.src.stop:].sum())
                mm, ml = self.info.spacing[a], voxels * float(np.prod(self.info.spacing)) / 1000
                notes.append(f"the head reaches {beyond * mm:.0f} mm beyond the model's slice window along the "
                             f"{AXIS_NAMES[a]} axis ({w.size} voxels of {mm:g} mm); the {ml:.1f} ml of it there are "
                             f"labelled outside; crop the scan to the head, or use a model trained with a larger "
                             f"--slice-size")
        return notes

    def _batches(self, image: np.ndarray, windows, todo: slice, plane, scale,
                 pool: ThreadPoolExecutor | None = None):
        """(first, last, network input) per batch: the slices cut and min-max scaled as
        ``to_slices(minmax_scale(image))`` does, bit for bit, but only those computed. The slices
        are first gathered ``staging.STAGED`` at a time from the (NIfTI-ordered) volume in cache-sized
        blocks: cutting batches straight from it would read each cache line once per batch. With
        ``pool`` the next block is gathered there, into a second buffer, while this one's batches
        are computed. A volume that holds its slices whole (a resampled one) is cut straight away."""
        (_, w1), (_, w2) = sorted(windows.items())
        moved = np.moveaxis(image, self.info.axis, 0)[:, w1.src, w2.src]
        size = self.info.slice_size
        n = min(self.batch, max(1, todo.stop - todo.start))
        buf = np.zeros((n, 1, size, size), np.float32)
        step = min(max(n, -(-staging.STAGED // n) * n), max(1, todo.stop - todo.start))
        blocks = [(first, min(first + step, todo.stop)) for first in range(todo.start, todo.stop, step)]
        gather = abs(moved.strides[0]) < max(abs(moved.strides[1]), abs(moved.strides[2]))
        ahead = gather and pool is not None and len(blocks) > 1
        staged = ([staging.aligned_empty((step,) + moved.shape[1:], np.float32) for _ in range(1 + ahead)]
                  if gather else [])

        def gathered(k: int) -> np.ndarray:
            first, last = blocks[k]
            staging.copy_blocked(staged[k % len(staged)][:last - first], moved[first:last])
            return staged[k % len(staged)]

        next_block = pool.submit(gathered, 0) if ahead else None
        lo, hi = scale
        for k, (first, last) in enumerate(blocks):
            if ahead:
                src = next_block.result()
                if k + 1 < len(blocks):
                    next_block = pool.submit(gathered, k + 1)
            else:
                src = gathered(k) if gather else moved[first:last]
            for i in range(first, last, self.batch):
                j = min(i + self.batch, last)
                region = buf[:j - i, 0, w1.dst, w2.dst]  # the padding stays 0, the scaled minimum
                np.subtract(src[i - first:j - first], lo, out=region)
                if hi > lo:
                    np.divide(region, hi - lo, out=region)
                yield i, j, buf[:j - i, :, plane[0], plane[1]]

    def _predict_into(self, image: np.ndarray, clock: PhaseClock, targets: list,
                      native_shape=None, found: Intensities | None = None) -> tuple[int, list[str]]:
        """Compute ``image``'s head slices and decode each batch straight into ``targets``
        (labels, masks, probs or None: canonical (X, Y, Z[, C]) views of the outputs, already
        "outside"): no slice stacks, no restacking pass. With ``native_shape`` the targets lie on
        the scan's own grid, which ``image`` was resampled from: the logits go back onto it plane
        by plane (:class:`.resample.PlaneResampler`) and are decoded there."""
        clock("preprocess")
        for times in (clock.wall, clock.cpu):  # in this order, also where no slice is computed
            for phase in ("preprocess", "network", "postprocess"):
                times.setdefault(phase, 0.0)
        threaded = self.host_threads > 1 and image.size >= THREADED_VOXELS
        threads = ThreadPoolExecutor(1, "neoseg-copy-out") if threaded else nullcontext()
        with threads as pool:  # None: one thread
            windows, todo, plane, scale, cut = self._plan(image, found)
            probabilities = targets[2] is not None
            if native_shape is None:
                (_, w1), (_, w2) = sorted(windows.items())
                (lr, dr), (lc, dc) = _overlap(plane[0], w1), _overlap(plane[1], w2)  # computed, in the volume
                moved = [None if a is None else np.moveaxis(a, self.info.axis, 0)[:, dr, dc] for a in targets]
                sink = staged = Staged(self, todo, moved, (lr, lc), pool)
            else:
                sink, staged = self._resampler(image.shape, native_shape, windows, todo, plane, targets, pool)
            on_device = native_shape is None and hasattr(self.backend, "run_decoded") and not probabilities
            for i, j, x in self._batches(image, windows, todo, plane, scale, pool):
                clock("network")
                out = self.backend.run_decoded(x) if on_device else self.backend.run(x)  # decoded where the logits are
                clock("postprocess")
                if on_device:
                    sink.put_decoded(i, out)
                else:
                    sink.put(i, out)
                clock("preprocess")
            clock("postprocess")
            sink.finish()
            staged.finish()  # the last copies out are done
            clock(None)
        return todo.stop - todo.start, cut

    def _resampler(self, shape, native_shape, windows, todo: slice, plane, targets: list,
                   pool: ThreadPoolExecutor | None = None) -> tuple[PlaneResampler, "Staged"]:
        """Logits of the model-grid slices -> decoded planes of ``targets`` on the scan's grid
        (through the staging buffers it returns too)."""
        info, size = self.info, self.info.slice_size
        axis, out_ch = info.axis, info.hierarchy.outside_channel
        (a1, w1), (a2, w2) = sorted(windows.items())
        n_ch = len(info.hierarchy)
        outside = np.full((n_ch, shape[a1], shape[a2]), -OUTSIDE_LOGIT, np.float32)
        blank = np.full((n_ch, size, size), -OUTSIDE_LOGIT, np.float32)  # a slice's window before its logits
        if out_ch is not None:
            outside[out_ch] = blank[out_ch] = OUTSIDE_LOGIT
        rows, cols = plane
        dst = [None if a is None else np.moveaxis(a, axis, 0) for a in targets]
        staged = Staged(self, slice(0, len(dst[0])), dst, (slice(None), slice(None)), pool)

        def window(k: int, logits: np.ndarray) -> np.ndarray:
            if logits.shape[1:] == blank.shape[1:]:  # the whole slice was computed
                computed = logits
            else:
                computed = blank.copy()
                computed[:, rows, cols] = logits
            out = outside.copy()
            out[:, w1.src, w2.src] = computed[:, w1.dst, w2.dst]
            return out

        def emit(p: int, logits: np.ndarray) -> None:
            staged.put(p, logits[None])

        return PlaneResampler(shape, native_shape, axis, todo, outside, window, emit), staged

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

    def decode(self, logits: np.ndarray, axis: int, probabilities: bool = False, out: Decoded | None = None) -> Decoded:
        """Logits (channels on ``axis``) -> labels, masks and optionally sigmoid probabilities,
        written into ``out`` where given (the same rules as ``Hierarchy.to_labels`` and
        ``Hierarchy.masks``, in passes over one channel plane at a time)."""
        logits = np.moveaxis(logits, axis, 0)
        if out is None:
            shape = logits.shape
            out = Decoded(np.empty(shape[1:], _label_dtype(self.info)), np.empty(shape, np.uint8),
                          np.empty(shape, np.float32) if probabilities else None)
        else:
            out = Decoded(out.labels, np.moveaxis(out.masks, axis, 0),
                          None if out.probs is None else np.moveaxis(out.probs, axis, 0))
        thresholds = self.info.logit_thresholds
        masks = out.masks.view(bool)
        for c in range(len(logits)):
            np.greater_equal(logits[c], thresholds[c], out=masks[c])
        out.labels[...] = self._labels(logits)
        if probabilities:
            probs = out.probs
            np.negative(logits, out=probs)
            with np.errstate(over="ignore"):  # exp(-logit) of a very negative logit is inf: probability 0
                np.exp(probs, out=probs)
            probs += 1
            np.reciprocal(probs, out=probs)
        return Decoded(out.labels, np.moveaxis(out.masks, 0, axis),
                       None if out.probs is None else np.moveaxis(out.probs, 0, axis))

    def _labels(self, logits: np.ndarray) -> np.ndarray:
        """``Hierarchy.to_labels`` on (C, ...) logits: the most probable root, then down the most
        probable child to a leaf; argmax as running maxima over channel planes (first wins ties)."""
        h = self.info.hierarchy
        node = self._argmax(logits, h.roots)
        for parent, kids in h.sibling_groups:
            where = node == parent
            if where.any():
                node = np.where(where, self._argmax(logits, kids), node)
        values = np.array([c.value if c.value is not None else 0 for c in h.channels], _label_dtype(self.info))
        return np.take(values, node)  # a small table: take is twice as fast as indexing

    @staticmethod
    def _argmax(logits: np.ndarray, channels: list[int]) -> np.ndarray:
        """The channel of ``channels`` with the largest logit (the first of equals; a NaN never
        wins, except a NaN in the first channel, which keeps it). Vectorised: the running winner
        is held as its position in ``channels``, which only grows, so it is updated by a maximum
        instead of a masked copy."""
        best = logits[channels[0]].copy()
        first_nan = np.isnan(best)
        position = np.zeros(best.shape, np.uint8 if len(channels) <= 256 else np.intp)
        higher = np.empty(best.shape, bool)
        for k, c in enumerate(channels[1:], 1):
            np.greater(logits[c], best, out=higher)
            np.fmax(best, logits[c], out=best)  # = where(higher, logits[c], best) but for NaN
            np.maximum(position, higher.view(np.uint8) * position.dtype.type(k), out=position)
        if first_nan.any():
            position[first_nan] = 0
        return np.take(np.asarray(channels, position.dtype if max(channels) < 256 else np.intp), position)


def _overlap(plane: slice, window) -> tuple[slice, slice]:
    """The part of the computed in-plane range ``plane`` (window coordinates) that lies inside the
    volume: (as an index into the computed range, as an index into the volume's axis)."""
    lo, hi = max(plane.start, window.dst.start), min(plane.stop, window.dst.stop)
    hi = max(lo, hi)
    return slice(lo - plane.start, hi - plane.start), slice(lo - window.shift, hi - window.shift)


def _fit(first: int, last: int, size: int, divisor: int) -> slice:
    """[first, last] grown to a multiple of ``divisor`` and kept inside [0, size)."""
    first, last = max(0, first), min(size - 1, last)
    length = min(size, -(-(last - first + 1) // divisor) * divisor)
    start = min(max(0, (first + last + 1 - length) // 2), size - length)
    return slice(start, start + length)


def _label_dtype(info) -> np.dtype:
    return info.hierarchy.label_dtype
