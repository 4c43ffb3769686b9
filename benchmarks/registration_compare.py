"""Which registration library the atlas recipes use (docs/atlas.md): ANTsPy, Greedy and ITK-Elastix
on a few pairs of the built-in v2 cohort, each registering a fully labelled session (the atlas) to a
partially labelled one (affine, then deformable), with the known parent (TCV) outline as a second
channel. Reports seconds per pair (one thread each) and the Dice of the warped children against the
hidden truth inside the target's TCV.

    pip install antspyx picsl-greedy itk-elastix
    python -m neoseg.benchmarks.registration_compare [--pairs 4 --draw 0]

Only ANTsPy is a dependency of neoseg (the ``train`` extra); the other two are needed here only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import numpy as np  # noqa: E402

SPACING = 2.0


def _pairs(n: int, draw: int, grid: int):
    """(atlas, target) arrays of the v2 cohort: the draw's fully labelled session nearest in age to
    each of the first ``n`` partially labelled training sessions."""
    from neoseg.core.hierarchy import builtin
    from neoseg.train.config import TrainConfig
    from neoseg.train.recipes import dataset_split
    from neoseg.train.volumes import load_session

    hierarchy = builtin()
    split = dataset_split(TrainConfig(full_fraction=0.02, draw=draw, cohort_grid=grid))
    atlases = [s for s in split.train if split.is_full(s)]
    targets = [s for s in split.train if not split.is_full(s)][:n]
    for target in targets:
        atlas = min(atlases, key=lambda a: abs(a.scan_age - target.scan_age))
        a_img, a_lab, _ = load_session(atlas)
        t_img, t_lab, _ = load_session(target)
        yield atlas.key, target.key, a_img, a_lab, t_img, t_lab, hierarchy.coarsen(t_lab)


def _scaled(x):
    x = x.astype(np.float32)
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-6)


def ants_register(fixed, moving, fixed_parent, moving_parent, soft, kind="antsRegistrationSyNQuick[s]",
                  parent_channel=True):
    import ants

    img = lambda a: ants.from_numpy(np.ascontiguousarray(a, np.float32), spacing=(SPACING,) * 3)  # noqa: E731
    f, m = img(fixed), img(moving)
    extras = [("MeanSquares", img(fixed_parent), img(moving_parent), 1.0, 0)] if parent_channel else None
    reg = ants.registration(f, m, type_of_transform=kind, multivariate_extras=extras, random_seed=1)
    return [ants.apply_transforms(f, img(s), reg["fwdtransforms"], interpolator="linear").numpy() for s in soft]


def greedy_register(fixed, moving, fixed_parent, moving_parent, soft):
    import SimpleITK as sitk
    from picsl_greedy import Greedy3D

    img = lambda a: _sitk(sitk, a)  # noqa: E731
    g = Greedy3D()
    io = {"f": img(fixed), "m": img(moving), "fp": img(fixed_parent), "mp": img(moving_parent)}
    inputs = "-w 1 -i f m -w 1 -i fp mp"
    g.execute(f"-d 3 -threads 1 -a -dof 12 -ia-image-centers {inputs} -m NCC 2x2x2 -n 100x50x20 -o aff", **io,
              aff=None)
    g.execute(f"-d 3 -threads 1 {inputs} -it aff -m NCC 2x2x2 -n 100x50x20 -s 1.5vox 0.5vox -o warp", **io,
              warp=None)
    out = []
    for s in soft:
        g.execute("-d 3 -threads 1 -rf f -rm s res -r warp aff", f=io["f"], s=img(s), res=None)
        out.append(sitk.GetArrayFromImage(g["res"]).transpose(2, 1, 0))
    return out


def _sitk(sitk, a):
    image = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0), np.float32))
    image.SetSpacing((SPACING,) * 3)
    return image


def elastix_register(fixed, moving, fixed_parent, moving_parent, soft):
    import itk

    img = lambda a: itk.image_from_array(np.ascontiguousarray(a.transpose(2, 1, 0), np.float32))  # noqa: E731
    params = itk.ParameterObject.New()
    for kind in ("affine", "bspline"):
        p = params.GetDefaultParameterMap(kind, 3)
        p["Registration"] = ["MultiMetricMultiResolutionRegistration"]
        p["Metric"] = ["AdvancedMattesMutualInformation", "AdvancedMeanSquares"]
        p["FixedImagePyramid"] = ["FixedSmoothingImagePyramid"] * 2
        p["MovingImagePyramid"] = ["MovingSmoothingImagePyramid"] * 2
        p["Interpolator"] = ["BSplineInterpolator"] * 2
        p["ImageSampler"] = ["RandomCoordinate"] * 2
        p["MaximumNumberOfIterations"] = ["250"]
        params.AddParameterMap(p)
    method = itk.ElastixRegistrationMethod.New(img(fixed), img(moving))
    method.AddFixedImage(img(fixed_parent))
    method.AddMovingImage(img(moving_parent))
    method.SetParameterObject(params)
    method.SetNumberOfThreads(1)
    method.SetLogToConsole(bool(os.environ.get("ELX_LOG")))
    with tempfile.TemporaryDirectory() as tmp:
        method.SetOutputDirectory(tmp)
        method.UpdateLargestPossibleRegion()
    transform = method.GetTransformParameterObject()
    transform.SetParameter("FinalBSplineInterpolationOrder", "1")
    return [itk.array_from_image(itk.transformix_filter(img(s), transform)).transpose(2, 1, 0) for s in soft]


def children_dice(soft: list[np.ndarray], parent: np.ndarray, truth: np.ndarray, values) -> list[float]:
    """Dice of each child against the truth, the warped soft maps' most probable child inside ``parent``."""
    pick = np.asarray(values)[np.argmax(np.stack(soft), axis=0)]
    pick = np.where(parent, pick, 0)
    return [2 * np.sum((pick == v) & (truth == v)) / max(1, np.sum(pick == v) + np.sum(truth == v)) for v in values]


METHODS = {
    "ANTsPy SyNQuick, T2 only": lambda *a: ants_register(*a, parent_channel=False),
    "ANTsPy SyNQuick, T2 + TCV": ants_register,
    "ANTsPy SyNQuickRepro (CC), T2 + TCV": lambda *a: ants_register(*a, kind="antsRegistrationSyNQuickRepro[s]"),
    "ANTsPy SyN (CC), T2 + TCV": lambda *a: ants_register(*a, kind="antsRegistrationSyN[s]"),
    "Greedy (NCC), T2 + TCV": greedy_register,
    "ITK-Elastix (MI + B-spline), T2 + TCV": elastix_register,
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--start", type=int, default=0, help="skip this many pairs")
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--only", nargs="*", help="method names (substrings)")
    args = ap.parse_args(argv)
    values, parent_value = (2, 3, 7), 10
    results = {name: ([], []) for name in METHODS if not args.only or any(o in name for o in args.only)}
    pairs = _pairs(args.pairs, args.draw, args.grid)
    for k, (atlas, target, a_img, a_lab, t_img, t_lab, t_partial) in enumerate(pairs):
        if k < args.start:
            continue
        t_parent = (t_partial == parent_value).astype(np.float32)
        a_parent = np.isin(a_lab, values).astype(np.float32)
        soft = [(a_lab == v).astype(np.float32) for v in values]
        for name, (seconds, dice) in results.items():
            t0 = time.perf_counter()
            warped = METHODS[name](_scaled(t_img), _scaled(a_img), t_parent, a_parent, soft)
            seconds.append(time.perf_counter() - t0)
            dice.append(children_dice(warped, t_parent > 0, t_lab, values))
            print(f"{atlas} -> {target}: {name}: {seconds[-1]:.1f} s, Dice "
                  f"{' '.join(f'{d:.3f}' for d in dice[-1])}", flush=True)
    print("\n| library, channels | s / pair (median) | CGM | WM | DGM |\n|---|---|---|---|---|")
    for name, (seconds, dice) in results.items():
        mean = np.mean(dice, axis=0)
        print(f"| {name} | {statistics.median(seconds):.1f} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |")


if __name__ == "__main__":
    main()
