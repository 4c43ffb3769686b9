"""Label maps as integers that keep every value a hierarchy may name (0..65535).

A label map read from a file may be stored as any NIfTI type (uint8, int16, int32, float with a
scale factor, ...). :func:`as_label_map` turns it into the smallest unsigned integer type that holds
its largest value, and refuses what no hierarchy can name (negative, fractional or > 65535 values),
so that no later stage can wrap a value around. Numpy only: the runtime shares it.
"""

from __future__ import annotations

import numpy as np

MAX_LABEL_VALUE = 65535  # the largest label value a hierarchy may name (uint16)


def label_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..``max_value`` (uint8 or uint16)."""
    if not 0 <= max_value <= MAX_LABEL_VALUE:
        raise ValueError(f"label value {max_value} is outside 0..{MAX_LABEL_VALUE}")
    return np.dtype(np.uint8 if max_value <= np.iinfo(np.uint8).max else np.uint16)


def as_label_map(data: np.ndarray, source: object = "label map") -> np.ndarray:
    """``data`` as uint8 or uint16 (the smallest that holds its largest value), unchanged in value.
    Raises ValueError naming ``source`` for values that are not integers in 0..65535."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind not in "uif":
        raise ValueError(f"{source}: label maps must hold integers, found data type {data.dtype}")
    if data.size == 0:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise ValueError(f"{source}: the label map holds NaN or infinite values; label maps must hold integers")
        fractional = data != np.round(data)
        if fractional.any():
            raise ValueError(f"{source}: the label map holds non-integer values such as "
                             f"{float(data[fractional][0]):g}; is it an image rather than a label map?")
    low, high = data.min(), data.max()
    if low < 0 or high > MAX_LABEL_VALUE:
        bad = low if low < 0 else high
        raise ValueError(f"{source}: label value {bad:g} is outside 0..{MAX_LABEL_VALUE}, the values a "
                         f"hierarchy can name")
    return data.astype(label_dtype(int(high)), copy=False)


def present_values(labels: np.ndarray) -> list[int]:
    """The distinct values of a uint8/uint16 label map, ascending."""
    labels = np.asarray(labels)
    if labels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"present_values expects a uint8 or uint16 label map, got {labels.dtype}")
    return np.flatnonzero(np.bincount(labels.ravel())).tolist() if labels.size else []
