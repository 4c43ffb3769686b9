"""Preprocessing shared by training and the runtime (numpy only): intensity scaling and the
in-plane window that puts each slice at the model's slice size around the head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def minmax_scale(volume: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Per-volume min-max scaling to [0, 1] (docs/method.md section 5). A constant volume maps to 0."""
    lo, hi = float(volume.min()), float(volume.max())
    out = volume.astype(dtype, copy=True)
    out -= lo
    if hi > lo:
        out /= hi - lo
    return out


ROBUST_SAMPLE_STEP = 7  # the robust maximum is read off every 7th voxel: same rule, 7x cheaper


def robust_sample(volume: np.ndarray, step: int = ROBUST_SAMPLE_STEP) -> np.ndarray:
    """The voxels at every ``step``-th position of the C-order flattened volume (in some order).
    For a Fortran-ordered 3D volume, as NIfTI data is, they are picked in memory order, which
    avoids the transposing copy that flattening it makes (about 1 s for 256^3 on 2 loaded cores)."""
    if volume.ndim != 3 or volume.flags.c_contiguous or not volume.flags.f_contiguous:
        return volume.reshape(-1)[::step]
    nx, ny, nz = volume.shape
    rows = volume.T.reshape(nz * ny, nx)  # row q = (l, j) holds volume[:, j, l], contiguous
    l, j = np.divmod(np.arange(nz * ny), ny)
    # C-order position (i*ny + j)*nz + l is a multiple of step <=> i*a + b = 0 (mod step)
    a, b = (ny * nz) % step, (j * nz + l) % step
    if a == 0:
        return rows[b == 0].reshape(-1)
    first = (-b * pow(a, -1, step)) % step  # needs step prime to a; step 7 is prime
    return np.concatenate([rows[first == c, c::step].reshape(-1) for c in range(min(step, nx))])


@dataclass(frozen=True)
class Intensities:
    """A volume's intensity range: minimum and maximum, the robust maximum (99.5th percentile) and
    the share of voxels at the minimum (both read off :func:`robust_sample`)."""

    lo: float
    hi: float
    robust_hi: float
    share_at_lo: float


def intensities(volume: np.ndarray) -> Intensities:
    """The volume's :class:`Intensities`: one pass for the minimum, one for the maximum, the rest on
    the sample."""
    sample = robust_sample(volume)
    lo = float(volume.min())
    return Intensities(lo, float(volume.max()), float(np.percentile(sample, 99.5)),
                       float(np.count_nonzero(sample == lo)) / max(1, sample.size))


OUTLIER_RATIO = 2.5  # a maximum this many times the robust range above the minimum: stray bright voxels
# (the built-in cohorts' T2s stay below 1.7: their brightest tissue, CSF, is in the robust range)
FILL_SHARE = 0.2  # this share of voxels at a negative minimum: a background fill


def intensity_notes(found: Intensities) -> list[str]:
    """What min-max scaling (the model's intensity rule) makes of a volume that a user should fix:
    stray bright voxels that squeeze the head's contrast, or a background filled below zero that
    lifts the head off the 0 the model saw."""
    notes = []
    spread, robust = found.hi - found.lo, found.robust_hi - found.lo
    if robust > 0 and spread > OUTLIER_RATIO * robust:
        notes.append(f"a few voxels are far brighter than the rest (maximum {found.hi:g}, 99.5th percentile "
                     f"{found.robust_hi:g}): min-max scaling squeezes the head into the lowest {robust / spread:.0%} "
                     f"of the range; clip them (e.g. at the 99.5th percentile) and segment again")
    if found.lo < 0 and found.share_at_lo >= FILL_SHARE:
        notes.append(f"{found.share_at_lo:.0%} of the voxels hold the minimum, {found.lo:g}, below zero (a background "
                     f"fill?): min-max scaling lifts the head off the 0 the model was trained with; set the background "
                     f"to 0 and segment again")
    return notes


def foreground_profiles(volume: np.ndarray, fraction: float = 0.1,
                        found: Intensities | None = None) -> list[np.ndarray]:
    """Per axis, the number of voxels in each plane brighter than ``fraction`` of the robust
    intensity range (minimum to the 99.5th percentile): the head, not stray bright voxels.
    ``found``: the volume's :func:`intensities`, where already known."""
    found = found or intensities(volume)
    return plane_counts(volume > found.lo + fraction * (found.robust_hi - found.lo))


def plane_counts(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, the number of True voxels in each plane across it. A 3D mask is read twice, not
    three times: folded along its slowest axis in memory (uint16 sums of contiguous planes), which
    gives the other two axes' counts, and counted plane by plane along that axis."""
    slow = int(np.argmax(np.abs(mask.strides))) if mask.ndim == 3 else None
    if slow is None or mask.shape[slow] >= 1 << 16:  # uint16 sums would overflow
        return [np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
                for axis in range(mask.ndim)]
    a, b = (axis for axis in range(3) if axis != slow)
    folded = np.add.reduce(mask.view(np.uint8), axis=slow, dtype=np.uint16)  # (a, b): counts along slow
    counts = [None] * 3
    counts[a], counts[b] = folded.sum(axis=1, dtype=np.intp), folded.sum(axis=0, dtype=np.intp)
    counts[slow] = np.count_nonzero(mask, axis=(a, b))
    return counts


def head_box(profiles: list[np.ndarray], share: float = 0.0) -> tuple[tuple[int, int], ...] | None:
    """Per axis (first, last) plane holding more than ``share`` of the fullest plane's foreground;
    ``share`` 0 gives the plain bounding box. None when there is no foreground."""
    box = []
    for counts in profiles:
        present = np.flatnonzero(counts > share * counts.max()) if counts.max() else []
        if not len(present):
            return None
        box.append((int(present[0]), int(present[-1])))
    return tuple(box)


def box_center(box, shape) -> tuple[float, ...]:
    """Centre of ``box``, or of the array when there is none."""
    if box is None:
        return tuple((n - 1) / 2 for n in shape)
    return tuple((a + b) / 2 for a, b in box)


def head_center(volume: np.ndarray, fraction: float = 0.1) -> tuple[float, ...]:
    """Centre of the head's bounding box, so a head off the array centre is still centred in the
    slice window (training and the runtime both place their windows with this)."""
    return box_center(head_box(foreground_profiles(volume, fraction)), volume.shape)


@dataclass(frozen=True)
class Window:
    """Maps a source range of one array axis onto a window of ``size``: ``dst = src + shift``.
    Crops when the axis is longer than ``size``, pads when shorter."""

    length: int  # source axis length
    size: int  # window size
    shift: int

    @classmethod
    def around(cls, length: int, size: int, center: float) -> "Window":
        shift = int(round(size / 2 - 0.5 - center))
        lo, hi = sorted((0, size - length))  # keep the window inside a long axis, the axis inside a short window
        return cls(length, size, min(max(shift, lo), hi))

    @property
    def src(self) -> slice:
        return slice(max(0, -self.shift), min(self.length, self.size - self.shift))

    @property
    def dst(self) -> slice:
        s = self.src
        return slice(s.start + self.shift, s.stop + self.shift)


def plane_windows(shape: tuple[int, ...], axis: int, size: int, center: tuple[float, ...]) -> dict[int, Window]:
    """The two in-plane windows (keyed by array axis) for slices cut along ``axis``."""
    return {a: Window.around(shape[a], size, center[a]) for a in range(3) if a != axis}


def to_slices(volume: np.ndarray, axis: int, windows: dict[int, Window], fill: float = 0) -> np.ndarray:
    """(X, Y, Z) -> (S, size, size): slices along ``axis``, each cropped/padded by ``windows``."""
    (a1, w1), (a2, w2) = sorted(windows.items())
    moved = np.moveaxis(volume, axis, 0)
    out = np.full((moved.shape[0], w1.size, w2.size), fill, dtype=volume.dtype)
    out[:, w1.dst, w2.dst] = moved[:, w1.src, w2.src]
    return out


def from_slices(slices: np.ndarray, shape: tuple[int, ...], axis: int, windows: dict[int, Window],
                fill: float = 0) -> np.ndarray:
    """Inverse of :func:`to_slices` for (S, [C,] size, size) stacks: back onto the (X, Y, Z) grid,
    with any extra channel axis placed first: (C, X, Y, Z)."""
    (a1, w1), (a2, w2) = sorted(windows.items())
    extra = slices.shape[1:-2]
    moved_shape = (shape[axis],) + extra + tuple(shape[a] for a in (a1, a2))
    out = np.full(moved_shape, fill, dtype=slices.dtype)
    out[..., w1.src, w2.src] = slices[..., w1.dst, w2.dst]
    # (S, *extra, A1, A2) -> (*extra, X, Y, Z)
    out = np.moveaxis(out, 0, len(extra))  # (*extra, S, A1, A2)
    return np.moveaxis(out, len(extra), len(extra) + axis)
