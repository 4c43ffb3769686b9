"""One atlas-to-scan registration with Greedy (PICSL's fast deformable registration, ``picsl-greedy``;
the choice is measured in docs/atlas.md): an affine, then a deformable stage, both driven by two
channels, the T2 (normalised cross-correlation) and the known parent's outline (the same metric on
the 0/1 masks), so that the atlas's parent is pulled onto the scan's. The atlas's maps (label
indicators, its image) are then resampled into the scan's grid by that one transform, linearly.

Scans finer than the registration's resolution (``--atlas-resolution``, 1 mm by default) are
registered on a coarser level of the same pyramid: its finest levels are skipped (0 iterations),
one per halving of the voxel size, and the transform is applied at the scan's own voxel size.

Arrays are (X, Y, Z), each image in its own voxel grid of its voxel size (mm), both in canonical
RAS+ axes (as :func:`neoseg.train.volumes.load_canonical` gives them). Greedy's own output (it
prints per iteration) is silenced.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

LIBRARY = "picsl-greedy"
COARSEST_VOXELS = 6  # Greedy's smoothing fails on pyramid levels of 3 voxels a side
# why a registration process (several run at once, each spawned) ends abruptly
PROCESS_ENDED = ("a registration process ended abruptly: out of memory, or, called from a Python script, its code "
                 "is not under `if __name__ == '__main__':`, which every registration process runs again as it starts")


@dataclass(frozen=True)
class RegistrationParams:
    """What a registration does; part of every cached result's key."""

    affine_iterations: str = "100x50x20"  # per level, coarsest first (levels: 4x, 2x, 1x shrink)
    deformable_iterations: str = "100x50x20"
    radius: int = 2  # NCC window half-size, voxels
    smoothing: str = "1.5vox 0.5vox"  # Greedy's -s: regularisation of the gradient and of the warp
    parent_weight: float = 1.0  # weight of the parent-outline channel beside the T2's 1
    seed: int = 1  # Greedy's random generator (the affine stage's jittered samples); 0 would be unseeded

    def key(self) -> dict:
        return {"library": LIBRARY, "version": library_version(), **asdict(self)}


# The registrations each atlas can get (``--atlas-warps``); several are fused per voxel like several
# atlases. regular: the default warp; flexible: less smoothing of the gradient
# and of the warp, which follows folded cortex and white matter more closely but the deep nuclei
# less well (docs/atlas.md measures both and their fusion).
WARPS = {"regular": RegistrationParams(), "flexible": RegistrationParams(smoothing="1.0vox 0.25vox")}


def parse_warps(warps) -> list[str]:
    """``--atlas-warps``: names of :data:`WARPS` (a list, or one comma-separated text), each once, in
    :data:`WARPS`'s order (fusion ignores the order, so one set is one setting)."""
    if isinstance(warps, str):
        warps = warps.split(",")
    warps = [w.strip() if isinstance(w, str) else w for w in (warps or [])]
    if not warps or not all(isinstance(w, str) and w in WARPS for w in warps) or len(set(warps)) != len(warps):
        raise ValueError(f"--atlas-warps is one or more of {', '.join(WARPS)}, comma-separated, each once; got "
                         f"{','.join(map(str, warps)) or 'none'}")
    return sorted(warps, key=list(WARPS).index)


def skipped_levels(spacing, resolution: float) -> int:
    """How many of the pyramid's finest levels a scan of voxel size ``spacing`` (mm) skips so that
    the finest level registered has voxels of about ``resolution`` mm or more: one per halving of
    its smallest voxel size below ``resolution`` (0 at or above it)."""
    return max(0, math.floor(math.log2(resolution / min(float(s) for s in spacing)) + 1e-6))


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LIBRARY)
    except PackageNotFoundError:
        return "missing"


def require_library() -> None:
    """Refuse early, with the fix, where Greedy is not installed."""
    try:
        _greedy()
    except ImportError as e:
        raise ValueError("--atlas registers with Greedy, which is not installed; install the atlas extra "
                         "(pip install -e '.[atlas]' in the neoseg checkout; the train extra includes it)") from e


def warp_atlas(target: np.ndarray, target_parent: np.ndarray, atlas: np.ndarray, atlas_parent: np.ndarray,
               maps: list[np.ndarray], target_spacing, atlas_spacing, params: RegistrationParams = RegistrationParams(),
               threads: int = 1, skipped: int = 0) -> list[np.ndarray]:
    """Register ``atlas`` (image, parent mask) to ``target`` (image, parent mask) and return each of
    ``maps`` (atlas-grid float arrays) resampled into the target's grid, linearly (float32). The
    affine stage starts from the two grids' centres aligned. ``skipped``: finer pyramid levels below
    the parameters' finest, left out (:func:`skipped_levels`)."""
    import SimpleITK as sitk

    Greedy3D = _greedy()

    def image(a, spacing):
        out = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(a, np.float32).transpose(2, 1, 0)))
        out.SetSpacing(tuple(float(s) for s in spacing))
        return out

    common = f"-d 3 -threads {threads} -seed {params.seed} -V 0"
    inputs = f"-w 1 -i fix mov -w {params.parent_weight:g} -i fixp movp"
    metric = f"-m NCC {params.radius}x{params.radius}x{params.radius}"
    io = {"fix": image(_scaled(target), target_spacing), "mov": image(_scaled(atlas), atlas_spacing),
          "fixp": image(target_parent > 0, target_spacing), "movp": image(atlas_parent > 0, atlas_spacing)}
    smallest = min(*np.shape(target), *np.shape(atlas))
    affine_levels, deformable_levels = (pyramid(n, skipped, smallest) for n in (params.affine_iterations,
                                                                                 params.deformable_iterations))
    g = Greedy3D()
    with _quiet():
        g.execute(f"{common} -a -dof 12 -ia-image-centers {inputs} {metric} -n {affine_levels} -o aff",
                  aff=None, **io)
        g.execute(f"{common} {inputs} -it aff {metric} -n {deformable_levels} -s {params.smoothing} -o warp",
                  warp=None, **io)
        out = []
        for m in maps:
            g.execute(f"{common} -rf fix -rm map res -r warp aff", fix=io["fix"], map=image(m, atlas_spacing), res=None)
            out.append(sitk.GetArrayFromImage(g["res"]).transpose(2, 1, 0).astype(np.float32))
    return out


def pyramid(iterations: str, skipped: int, smallest: int) -> str:
    """Greedy's ``-n`` (iterations per level, coarsest first, each level twice the voxels of the one
    before) with ``skipped`` finer levels of 0 iterations appended. The coarsest level shrinks with
    them; where it would fall below :data:`COARSEST_VOXELS` along the ``smallest`` image side, the
    coarsest levels are dropped instead (at most as many as were appended)."""
    levels = iterations.split("x") + ["0"] * skipped
    for _ in range(skipped):
        if smallest >> (len(levels) - 1) >= COARSEST_VOXELS:
            break
        levels.pop(0)
    return "x".join(levels)


def _scaled(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-6)


def _greedy():
    """Greedy's ``Greedy3D``. Its module keeps the ``sys.stdout`` of its first import and writes to
    it ever after, so it is imported with the process's own stdout, never a caller's stand-in (a
    test runner's capture, closed once the command returns)."""
    saved, sys.stdout = sys.stdout, sys.__stdout__ or sys.stdout
    try:
        from picsl_greedy import Greedy3D
    finally:
        sys.stdout = saved
    return Greedy3D


@contextmanager
def _quiet():
    """Greedy writes to the process's stdout from C++: point file descriptor 1 at /dev/null meanwhile."""
    import ctypes

    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        if sys.__stdout__ is not None:  # what Python's and C's stdio still buffer goes to /dev/null too
            sys.__stdout__.flush()
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
