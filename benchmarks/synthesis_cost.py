"""Cost of synthesising training images from label maps: neoseg's batched 2D synthesis
(:mod:`neoseg.train.synthesis`) against TorchIO's 3D ``RandomLabelsToImage`` chain, on the same
voxels: ``python -m neoseg.benchmarks.synthesis_cost [--repeats N]`` (needs ``pip install torchio``).

One 64^3 volume of the built-in cohort: TorchIO synthesises it as one 3D subject (labels to image,
blur, anisotropy, bias field, motion, noise), neoseg as its 64 sagittal slices in batches of 16 (the
cpu profile's batch). Timed interleaved in one process; the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m neoseg.benchmarks.synthesis_cost", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    try:
        import torchio as tio
    except ImportError as e:
        raise SystemExit("synthesis_cost: error: TorchIO is not installed; pip install torchio") from e
    from neoseg.core.hierarchy import builtin
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.synth import CohortSpec, default_cohort_dir, generate_cohort
    from neoseg.train.synthesis import Synthesis
    from neoseg.train.volumes import load_session

    spec = CohortSpec(n_subjects=2, grid=64)
    session = find_sessions(generate_cohort(default_cohort_dir(spec), spec))[0]
    image, labels, _ = load_session(session)
    hierarchy = builtin()
    label_tensor = torch.from_numpy(labels.astype(np.int64))[None]
    subject = tio.Subject(label=tio.LabelMap(tensor=label_tensor))
    chain = tio.Compose([tio.RandomLabelsToImage(label_key="label"), tio.RandomBlur(), tio.RandomAnisotropy(),
                         tio.RandomBiasField(), tio.RandomMotion(), tio.RandomNoise()])
    slices = torch.from_numpy((image / image.max()).astype(np.float32))[:, None]
    targets = torch.from_numpy(np.ascontiguousarray(hierarchy.encode(labels).swapaxes(0, 1)))
    ours = Synthesis(1.0, hierarchy, seed=0, then=None)

    def run_tio() -> None:
        chain(subject)

    def run_ours() -> None:
        for start in range(0, len(slices), 16):
            ours(slices[start:start + 16], targets[start:start + 16])

    times = {"torchio": [], "neoseg": []}
    run_tio(), run_ours()  # warm up
    for _ in range(args.repeats):
        for name, fn in (("torchio", run_tio), ("neoseg", run_ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s per 64^3 volume "
              f"(min {min(values):.3f}, max {max(values):.3f}; {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
