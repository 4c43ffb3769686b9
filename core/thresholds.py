"""Decision thresholds on the sigmoid probability, one per channel.

Training evaluates float32 probabilities (``p >= t``); the runtime compares logits with logit(t)
(``x >= log(t / (1 - t))``, no sigmoid). The two agree except for probabilities within float32
rounding (about 6e-8) of t, and at t = 0 or 1 they part ways entirely (logit(1) = inf: the
runtime's masks are empty where the probabilities say 1). So thresholds are kept inside
[THRESHOLD_MIN, THRESHOLD_MAX], where both agree and every mask can be non-empty.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import numpy as np

THRESHOLD_MIN = 1e-6
THRESHOLD_MAX = 1 - 1e-6
RANGE_TEXT = f"[{THRESHOLD_MIN:g}, {THRESHOLD_MAX:g}]"


def check_thresholds(thresholds: float | Sequence[float], names: Sequence[str] | None = None,
                     what: str = "thresholds") -> tuple[float, ...]:
    """One threshold (for every channel) or one per channel -> a tuple per channel of ``names``
    (without ``names``: the values as given). Raises ValueError for a wrong count, or a value that
    is not a number in [1e-6, 1 - 1e-6]."""
    values = [thresholds] if np.ndim(thresholds) == 0 else list(np.asarray(thresholds, object).ravel())
    if names is not None:
        if len(values) == 1:
            values = values * len(names)
        if len(values) != len(names):
            raise ValueError(f"{what}: {len(values)} values for {len(names)} channels ({', '.join(names)}); "
                             f"give one value or one per channel")
    for i, t in enumerate(values):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, Real) or not math.isfinite(t) \
                or not THRESHOLD_MIN <= t <= THRESHOLD_MAX:
            channel = f" for '{names[i]}'" if names is not None else ""
            raise ValueError(f"{what}: threshold {t!r}{channel} is outside {RANGE_TEXT}; thresholds at or "
                             f"beyond 0 or 1 mark every voxel or none, and the runtime (on logits) and "
                             f"evaluation (on probabilities) stop agreeing; choose a value in {RANGE_TEXT}")
    return tuple(float(t) for t in values)
