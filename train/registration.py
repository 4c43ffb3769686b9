"""One atlas-to-scan registration with Greedy (PICSL's fast deformable registration, ``picsl-greedy``;
the choice is measured in docs/atlas.md): an affine, then a deformable stage, both driven by two
channels, the T2 (normalised cross-correlation) and the known parent's outline (the same metric on
the 0/1 masks), so that the atlas's parent is pulled onto the scan's. The atlas's maps (label
indicators, its image) are then resampled into the scan's grid by that one transform, linearly.

Arrays are (X, Y, Z), each image in its own voxel grid of its voxel size (mm), both in canonical
RAS+ axes (as :func:`neoseg.train.volumes.load_canonical` gives them). Greedy's own output (it
prints per iteration) is silenced.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

LIBRARY = "picsl-greedy"


@dataclass(frozen=True)
class RegistrationParams:
    """What a registration does; part of every cached result's key."""

    affine_iterations: str = "100x50x20"  # per level, coarsest first (levels: 4x, 2x, 1x shrink)
    deformable_iterations: str = "100x50x20"
    radius: int = 2  # NCC window half-size, voxels
    smoothing: str = "1.5vox 0.5vox"  # Greedy's -s: regularisation of the gradient and of the warp
    parent_weight: float = 1.0  # weight of the parent-outline channel beside the T2's 1

    def key(self) -> dict:
        return {"library": LIBRARY, "version": library_version(), **asdict(self)}


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LIBRARY)
    except PackageNotFoundError:
        return "missing"


def require_library() -> None:
    """Refuse early, with the fix, where Greedy is not installed."""
    try:
        import picsl_greedy  # noqa: F401
    except ImportError as e:
        raise ValueError("--atlas registers with Greedy, which is not installed; install the train extra "
                         "(pip install 'neoseg[train]') or picsl-greedy") from e


def warp_atlas(target: np.ndarray, target_parent: np.ndarray, atlas: np.ndarray, atlas_parent: np.ndarray,
               maps: list[np.ndarray], target_spacing, atlas_spacing, params: RegistrationParams = RegistrationParams(),
               threads: int = 1) -> list[np.ndarray]:
    """Register ``atlas`` (image, parent mask) to ``target`` (image, parent mask) and return each of
    ``maps`` (atlas-grid float arrays) resampled into the target's grid, linearly (float32). The
    affine stage starts from the two grids' centres aligned."""
    import SimpleITK as sitk
    from picsl_greedy import Greedy3D

    def image(a, spacing):
        out = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(a, np.float32).transpose(2, 1, 0)))
        out.SetSpacing(tuple(float(s) for s in spacing))
        return out

    common = f"-d 3 -threads {threads} -V 0"
    inputs = f"-w 1 -i fix mov -w {params.parent_weight:g} -i fixp movp"
    metric = f"-m NCC {params.radius}x{params.radius}x{params.radius}"
    io = {"fix": image(_scaled(target), target_spacing), "mov": image(_scaled(atlas), atlas_spacing),
          "fixp": image(target_parent > 0, target_spacing), "movp": image(atlas_parent > 0, atlas_spacing)}
    g = Greedy3D()
    with _quiet():
        g.execute(f"{common} -a -dof 12 -ia-image-centers {inputs} {metric} -n {params.affine_iterations} -o aff",
                  aff=None, **io)
        g.execute(f"{common} {inputs} -it aff {metric} -n {params.deformable_iterations} -s {params.smoothing} "
                  f"-o warp", warp=None, **io)
        out = []
        for m in maps:
            g.execute(f"{common} -rf fix -rm map res -r warp aff", fix=io["fix"], map=image(m, atlas_spacing), res=None)
            out.append(sitk.GetArrayFromImage(g["res"]).transpose(2, 1, 0).astype(np.float32))
    return out


def _scaled(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-6)


@contextmanager
def _quiet():
    """Greedy writes to the process's stdout from C++: point file descriptor 1 at /dev/null meanwhile."""
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
