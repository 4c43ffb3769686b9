"""Out-of-distribution robustness of a trained model, on a fixed and seeded suite:
``python -m neoseg.benchmarks.robustness --checkpoint best.pt|RUN_FOLDER [--out DIR]``.

The suite is built from the test sessions of the checkpoint's own data and split (the built-in
cohort, or its ``--data``), each corrupted in 3D, on its own grid, under every condition:

- ``clean``: as the scan is;
- ``brain-extracted``: T2 × brain mask (the session's ``*_desc-brain_mask.nii.gz`` where it has
  one, else every voxel labelled other than 0), as many neonatal pipelines pass scans on;
- ``bias``: a smooth multiplicative field of about ×0.6 to ×1.6 over the head;
- ``noise``: Rician noise of 8 % of the brain's bright (99th percentile) intensity;
- ``low-resolution``: acquired at 1.5× the voxel size in every direction, interpolated back;
- ``anisotropic``: acquired with 3× thicker axial slices (along inferior-superior), interpolated back;
- ``contrast``: a random monotone intensity curve, its segments' slopes between 1/3 and 3;
- ``cropped-fov``: the field of view cut to the brain's bounding box in the sagittal plane, and
  15 % of the brain's height cut off at the top;

the contrast suite (issue 21: other sequences and scanners; each maps intensities inside the head,
where the scan smoothed by a voxel is above 10 % of its 99.5th percentile, and leaves the air as it is):

- ``t1-like``: the grey/white contrast inverted as in a neonatal T1: ``top - x`` (``top`` the
  99.5th percentile), so CSF turns dark and white matter darker than the cortex;
- ``te-tr``: another echo and repetition time by a mono-exponential signal model: with the T2
  decay ``S = A exp(-TE/T2)``, half the echo time gives ``(S/top)^0.5``; a repetition time of 4 s
  (dHCP: 12 s) multiplies by ``1 - exp(-TR/T1)``, T1 growing with the T2-weighted intensity from
  1 s to 3 s (CSF longest), which flattens the CSF/tissue contrast;
- ``scanner-histogram``: the head's intensity deciles mapped piecewise-linearly onto those of
  another scanner: the gaps between deciles each scaled by a random log-normal factor (spread 0.5);

and the resolution suite, acquired at a voxel size in mm (Gaussian blur of the coarse voxel, a
sample every coarse voxel, linear interpolation back onto the scan's grid); an axis whose voxel is
already that large or larger is left as it is (on the 2 mm demo cohort ``res-1.5mm`` is the clean
scan and the 0.8 mm in-plane axes of ``res-0.8x0.8x4mm`` are unchanged):

- ``res-1.5mm``, ``res-3mm``: isotropic;
- ``res-0.8x0.8x4mm``: 4 mm slices along inferior-superior;

plus ``other-cohort``: a second synthetic cohort generated with other parameters (another seed and,
where the generator has them, other realism settings: see :data:`OTHER_COHORT`), clean.

Each corruption draws from its own generator, seeded by the suite seed, the condition and the
session's name, so the suite is the same on every run and machine, whatever the order. Predictions
go through :func:`neoseg.train.evaluate.model_segmenter` (the runtime's segmentation over the torch
model, as ``neoseg-eval`` and ``neoseg-infer``), so any ``neoseg-train`` checkpoint can be measured. Dice is the mean over volumes per structure; empty
truths (a structure cut away) are left out.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

SUITE_SEED = 2025
CONTRAST_SUITE = ("t1-like", "te-tr", "scanner-histogram")
RESOLUTIONS_MM = {"res-1.5mm": (1.5, 1.5, 1.5), "res-3mm": (3.0, 3.0, 3.0), "res-0.8x0.8x4mm": (0.8, 0.8, 4.0)}
CONDITIONS = ("clean", "brain-extracted", "bias", "noise", "low-resolution", "anisotropic", "contrast",
              "cropped-fov", *CONTRAST_SUITE, *RESOLUTIONS_MM)
SUITE_LIMIT = 0.75  # the contrast and resolution suites' check: no structure above 0.85 clean below this
OTHER = "other-cohort"
# The second cohort: a CohortSpec's fields; those the installed generator lacks are left out.
OTHER_COHORT = {"seed": 20_261_128, "folding": 1.6, "intensity_jitter": 0.08}
OTHER_SUBJECTS = 6
FIELDS = ["condition", "subject", "session", "scan_age", "output", "structure", "dice", "hd95", "truth_empty"]


@dataclass(frozen=True)
class Case:
    """One volume of the suite: canonical image and labels, as the model is given them."""

    condition: str
    subject: str
    session: str
    scan_age: float | None
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


# ---- corruptions of a canonical (X, Y, Z) volume; axis 2 runs inferior -> superior ---------------
def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, points: int = 4) -> np.ndarray:
    """A smooth random field of unit standard deviation: cubic interpolation of a coarse normal grid."""
    coarse = rng.standard_normal((points,) * len(shape))
    field = ndimage.zoom(coarse, [n / points for n in shape], order=3, mode="nearest", grid_mode=True)
    field = field[tuple(slice(0, n) for n in shape)]
    return ((field - field.mean()) / max(field.std(), 1e-6)).astype(np.float32)


def resample_axis(volume: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Acquire ``volume`` with ``factor`` times coarser voxels along ``axis`` (Gaussian blur of
    FWHM ``factor`` voxels, a sample every ``factor`` voxels) and interpolate back linearly."""
    blurred = ndimage.gaussian_filter1d(volume, factor / 2.3548, axis=axis, mode="nearest")
    n = volume.shape[axis]
    n_low = math.ceil(n / factor)
    low = _linear_take(blurred, np.clip((np.arange(n_low) + 0.5) * factor - 0.5, 0, n - 1), axis)
    return _linear_take(low, np.clip((np.arange(n) + 0.5) / factor - 0.5, 0, n_low - 1), axis)


def _linear_take(volume: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    lo = np.floor(positions).astype(int)
    hi = np.minimum(lo + 1, volume.shape[axis] - 1)
    shape = [1] * volume.ndim
    shape[axis] = len(positions)
    w = (positions - lo).reshape(shape).astype(volume.dtype)
    return np.take(volume, lo, axis=axis) * (1 - w) + np.take(volume, hi, axis=axis) * w


def intensity_curve(image: np.ndarray, rng: np.random.Generator, segments: int = 4, slope: float = 3.0) -> np.ndarray:
    """A random monotone piecewise-linear map of [0, top] onto itself (``top`` the 99.5th
    percentile; above it the last segment continues), segment slopes in [1/slope, slope]."""
    top = float(np.percentile(image, 99.5)) or 1.0
    slopes = np.exp(rng.uniform(-math.log(slope), math.log(slope), segments))
    knots = np.concatenate([[0.0], np.cumsum(slopes)])
    knots /= knots[-1]
    x = np.clip(image / top, 0, None) * segments
    i = np.minimum(np.floor(x).astype(int), segments - 1)
    return ((knots[i] + (x - i) * (knots[i + 1] - knots[i])) * top).astype(np.float32)


def head_mask(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The head: where the scan, smoothed by one voxel, is above 10 % of its 99.5th percentile
    (``top``, returned too), holes filled; the air's noise stays out."""
    top = float(np.percentile(image, 99.5)) or 1.0
    return ndimage.binary_fill_holes(ndimage.gaussian_filter(image, 1.0) > 0.1 * top), top


def contrast_condition(condition: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The contrast suite's ``condition`` (see the module doc) inside the head; the air unchanged."""
    head, top = head_mask(image)
    x = np.clip(image / top, 0, 1.5)
    if condition == "t1-like":
        mapped = np.clip(1.0 - x, 0, None) + 0.05
    elif condition == "te-tr":
        t1_s = 1.0 + 2.0 * np.clip(x, 0, 1)  # seconds
        mapped = np.sqrt(x) * (1 - np.exp(-4.0 / t1_s))
    elif condition == "scanner-histogram":
        deciles = np.percentile(x[head], np.arange(0, 101, 10))
        gaps = np.diff(deciles) * np.exp(rng.normal(0, 0.5, len(deciles) - 1))
        target = deciles[0] + np.concatenate([[0.0], np.cumsum(gaps)])
        mapped = np.interp(x, deciles, target / target[-1] * deciles[-1])
    else:
        raise ValueError(f"unknown contrast condition '{condition}'; available: {', '.join(CONTRAST_SUITE)}")
    return np.where(head, mapped * top, image).astype(np.float32)


def acquire_at(image: np.ndarray, voxel_mm: tuple[float, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """``image`` acquired at ``voxel_mm`` and interpolated back onto its ``spacing`` grid; axes whose
    voxel is already that coarse are left as they are."""
    for axis, (want, have) in enumerate(zip(voxel_mm, spacing)):
        if want > have * 1.01:
            image = resample_axis(image, want / have, axis)
    return image


def corrupt(condition: str, image: np.ndarray, labels: np.ndarray, brain: np.ndarray,
            rng: np.random.Generator, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` of ``condition``; ``brain`` is the brain mask, ``spacing`` the voxel size
    in mm (the resolution suite's)."""
    if condition in CONTRAST_SUITE:
        return contrast_condition(condition, image, rng), labels
    if condition in RESOLUTIONS_MM:
        return acquire_at(image, RESOLUTIONS_MM[condition], spacing), labels
    if condition == "clean":
        return image, labels
    if condition == "brain-extracted":
        return image * brain, labels
    if condition == "bias":
        return image * np.exp(0.25 * smooth_field(image.shape, rng)), labels
    if condition == "noise":
        sigma = 0.08 * float(np.percentile(image[brain > 0], 99))
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        return np.sqrt(real ** 2 + (sigma * rng.standard_normal(image.shape, dtype=np.float32)) ** 2), labels
    if condition == "low-resolution":
        for axis in range(3):
            image = resample_axis(image, 1.5, axis)
        return image, labels
    if condition == "anisotropic":
        return resample_axis(image, 3.0, 2), labels
    if condition == "contrast":
        return intensity_curve(image, rng), labels
    if condition == "cropped-fov":
        box = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        lo, hi = [b[0] for b in box], [b[-1] + 1 for b in box]
        hi[2] -= int(round(0.15 * (hi[2] - lo[2])))
        cut = (slice(None), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        return np.ascontiguousarray(image[cut]), np.ascontiguousarray(labels[cut])
    raise ValueError(f"unknown condition '{condition}'; available: {', '.join(CONDITIONS)}")


# ---- the suite --------------------------------------------------------------------------------
def brain_mask(session, labels: np.ndarray) -> np.ndarray:
    """The session's own brain mask file where it has one (on the T2's grid), else labels != 0."""
    from neoseg.train.volumes import load_canonical

    path = Path(str(session.t2).replace("_desc-restore_T2w", "_desc-brain_mask"))
    if path != Path(session.t2) and path.is_file():
        mask, _ = load_canonical(path, labels=True)
        if mask.shape == labels.shape:
            return (mask > 0).astype(np.float32)
    return (labels != 0).astype(np.float32)


def session_rng(condition: str, key: str, seed: int = SUITE_SEED) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(condition.encode()), zlib.crc32(key.encode())])


def build_cases(test_sessions, other_sessions=(), seed: int = SUITE_SEED) -> Iterator[Case]:
    """Every volume of the suite, one at a time (each test session under every condition, then the
    other cohort's sessions as they are)."""
    from neoseg.core.scans import voxel_size
    from neoseg.train.volumes import load_session

    for session in test_sessions:
        image, labels, img = load_session(session)
        spacing = voxel_size(img)
        brain = brain_mask(session, labels)
        for condition in CONDITIONS:
            out, truth = corrupt(condition, image, labels, brain, session_rng(condition, session.key, seed), spacing)
            yield Case(condition, session.subject, session.session, session.scan_age,
                       out.astype(np.float32, copy=False), truth, spacing)
    for session in other_sessions:
        image, labels, img = load_session(session)
        yield Case(OTHER, session.subject, session.session, session.scan_age, image, labels,
                   voxel_size(img))


def other_cohort_spec(grid: int, n_subjects: int = OTHER_SUBJECTS):
    """The second cohort's spec: :data:`OTHER_COHORT`, as far as this generator has those fields."""
    from neoseg.data.synth import CohortSpec

    names = {f.name for f in dataclasses.fields(CohortSpec)}
    return CohortSpec(n_subjects=n_subjects, grid=grid, **{k: v for k, v in OTHER_COHORT.items() if k in names})


def checkpoint_test_sessions(checkpoint: Path, config) -> list:
    """The checkpoint's test sessions: its run's split.json where it lies beside it, else the
    split that training makes from the config."""
    from neoseg.data.splits import make_split
    from neoseg.train.config import dataset_sessions

    sessions = dataset_sessions(config, progress=False)
    split_file = checkpoint.parent / "split.json"
    if split_file.is_file():
        names = set(json.loads(split_file.read_text())["test"])
        chosen = [s for s in sessions if s.subject in names]
        if {s.subject for s in chosen} != names:
            raise ValueError(f"{split_file} names test subjects that the checkpoint's data lacks; "
                             f"is it the split of this checkpoint's run?")
        return chosen
    return list(make_split(sessions, config.full_fraction, seed=config.seed, draw=config.draw).test)


def run_suite(models: list[Path], device: str = "cpu", other_subjects: int = OTHER_SUBJECTS,
              progress: bool = False) -> tuple[list[dict], dict]:
    """Rows (one per volume, condition and structure) and a description of the suite, for the
    model that ``models`` name: a ``best.pt``, several (their mean, as neoseg-export makes one
    model of them) or a run folder (all its ``--members``)."""
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.synth import default_cohort_dir, generate_cohort
    from neoseg.train.evaluate import Truth, checkpoint_segmenter, score, segment_canonical
    from neoseg.train.members import run_checkpoints

    checkpoints = run_checkpoints(models)
    segmenter, config = checkpoint_segmenter(checkpoints, device, own_split=True)
    hierarchy, spacing = segmenter.info.hierarchy, segmenter.info.spacing
    tests = checkpoint_test_sessions(Path(checkpoints[0]), config)
    grid = config.cohort_grid if config.data is None else int(min(512, max(16, round(128.0 / min(spacing)))))
    spec = other_cohort_spec(grid, other_subjects)
    others = find_sessions(generate_cohort(default_cohort_dir(spec), spec, progress=progress)) if other_subjects else []
    rows = []
    cases = build_cases(tests, others)
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, total=len(tests) * len(CONDITIONS) + len(others), desc="robustness", unit="volume",
                     disable=None)
    for case in cases:
        seg = segment_canonical(segmenter, case.image, case.spacing)
        for row in score(seg, hierarchy, Truth.of_labels(hierarchy, case.labels), case.spacing):
            rows.append({"condition": case.condition, "subject": case.subject, "session": case.session,
                         "scan_age": case.scan_age, **{k: row[k] for k in FIELDS[4:]}})
    about = {"checkpoint": ", ".join(map(str, checkpoints)), "test_sessions": len(tests), "other_sessions": len(others),
             "other_cohort": {k: v for k, v in dataclasses.asdict(spec).items()}, "seed": SUITE_SEED,
             "outside": hierarchy.names[hierarchy.outside_channel] if hierarchy.outside_channel is not None else None}
    return rows, about


# ---- reporting ----------------------------------------------------------------------------
def mean_dice(rows: list[dict], output: str = "dseg") -> dict[str, dict[str, float]]:
    """condition -> structure -> mean Dice of ``output`` (the label map, or the masks) over volumes
    whose truth holds the structure."""
    sums: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if not r["truth_empty"] and r.get("output", "mask") == output:
            sums.setdefault(r["condition"], {}).setdefault(r["structure"], []).append(float(r["dice"]))
    return {c: {s: float(np.mean(v)) for s, v in by.items()} for c, by in sums.items()}


def table(rows: list[dict], skip: tuple[str, ...] = (), output: str = "dseg") -> str:
    """Markdown: one row per condition, mean Dice of ``output`` per structure, and its difference
    to clean."""
    means = mean_dice(rows, output)
    clean = means.get("clean", {})
    structures = [s for s in dict.fromkeys(r["structure"] for r in rows) if s not in skip]
    lines = ["| condition | " + " | ".join(structures) + " |", "|---|" + "---|" * len(structures)]
    for condition in [c for c in (*CONDITIONS, OTHER) if c in means]:
        cells = []
        for s in structures:
            value = means[condition].get(s)
            if value is None:
                cells.append("–")
            elif condition == "clean" or s not in clean:
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.3f} ({value - clean[s]:+.2f})")
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def criteria(rows: list[dict], skip: tuple[str, ...] = ()) -> list[str]:
    """The two checks of the suite, in words: brain extraction within 0.05 of clean for every
    structure, and no structure above 0.85 clean falling below 0.6 under any condition (below
    :data:`SUITE_LIMIT` under the contrast and resolution suites)."""
    means = mean_dice(rows)
    clean = {s: v for s, v in means.get("clean", {}).items() if s not in skip}
    lines = []
    if "brain-extracted" in means and clean:
        drops = {s: clean[s] - means["brain-extracted"][s] for s in clean if s in means["brain-extracted"]}
        worst = max(drops, key=drops.get)
        ok = all(d <= 0.05 for d in drops.values())
        lines.append(f"brain-extracted within 0.05 Dice of clean for every structure: {'yes' if ok else 'no'} "
                     f"(largest drop {drops[worst]:+.3f}, {worst})")
    failing = [(c, s, clean[s], means[c][s]) for c in means if c != "clean" for s in clean
               if s in means[c] and clean[s] > 0.85 and means[c][s] < 0.6]
    if failing:
        lines.append("structures above 0.85 clean that fall below 0.6: " + "; ".join(
            f"{s} under {c} ({v:.3f}, clean {ref:.3f})" for c, s, ref, v in failing))
    else:
        lines.append("structures above 0.85 clean that fall below 0.6 under any condition: none")
    suites = [c for c in (*CONTRAST_SUITE, *RESOLUTIONS_MM) if c in means]
    below = [(c, s, means[c][s]) for c in suites for s in clean if s in means[c] and clean[s] > 0.85
             and means[c][s] < SUITE_LIMIT]
    if suites:
        lines.append(f"contrast and resolution suites, structures above 0.85 clean that fall below {SUITE_LIMIT}: "
                     + ("; ".join(f"{s} under {c} ({v:.3f}, clean {clean[s]:.3f})" for c, s, v in below)
                        if below else "none"))
    return lines


def report(rows: list[dict], about: dict) -> str:
    skip = (about["outside"],) if about.get("outside") else ()
    other = ", ".join(f"{k} {v}" for k, v in about["other_cohort"].items())
    return (f"Mean Dice per structure ({about['test_sessions']} test volumes per condition; other cohort: "
            f"{about['other_sessions']} volumes, {other}); in brackets the difference to clean.\n\n"
            "Of the label map (`_dseg`, what neoseg-infer writes; the checks below are of it):\n\n"
            + table(rows, skip) + "\n" + "\n".join(f"- {line}" for line in criteria(rows, skip)) + "\n\n"
            "Of the per-structure masks at the thresholds (`_mask`, the paper's metric):\n\n" + table(rows, skip, "mask"))


def write(out: Path, rows: list[dict], text: str, overwrite: bool) -> None:
    from neoseg.core.io import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in FIELDS} for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "robustness.csv", buffer.getvalue(), overwrite=overwrite)
    write_text(out / "robustness.md", text, overwrite=overwrite)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m neoseg.benchmarks.robustness", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="best.pt of a neoseg-train run, several (measured as one model, their mean), or a run "
                        "folder (all its --members)")
    p.add_argument("--out", type=Path, help="write robustness.csv (per volume) and robustness.md here")
    p.add_argument("--overwrite", action="store_true", help="replace robustness.csv/.md in --out")
    p.add_argument("--other-subjects", type=int, default=OTHER_SUBJECTS,
                   help=f"subjects of the second cohort (default {OTHER_SUBJECTS}; 0 leaves it out)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = p.parse_args(argv)
    try:
        if args.other_subjects < 0:
            raise ValueError(f"--other-subjects must be 0 or more, got {args.other_subjects}")
        if args.out is not None and not args.overwrite:
            for name in ("robustness.csv", "robustness.md"):
                if (args.out / name).exists():
                    raise FileExistsError(f"{args.out / name} exists; pass --overwrite or another --out")
        began = time.monotonic()
        rows, about = run_suite(args.checkpoint, args.device, args.other_subjects, progress=True)
        text = f"# Robustness of {about['checkpoint']}\n\n" + report(rows, about)
        if args.out is not None:
            write(args.out, rows, text, args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"robustness: error: {e}")
    print(text)
    print(f"({time.monotonic() - began:.0f} s{f'; written to {args.out}' if args.out else ''})")


if __name__ == "__main__":
    main()
