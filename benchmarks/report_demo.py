"""The dataset mode end to end, checked in a real headless browser (about 3 minutes on 2 quiet cores):

    python -m neoseg.benchmarks.report_demo --out runs/report-demo [--img docs/img]

1. generates a small synthetic cohort in the dHCP layout (--subjects at --grid);
2. adds one copy of a scan whose header claims half its true voxel size (a classic conversion
   error), so the report has an outlier to flag;
3. trains a U-Net with neoseg-train's cpu profile for at most --minutes on another synthetic
   cohort (--train-subjects, fully labelled) and exports it to ONNX;
4. runs ``neoseg-infer DATA -m model.onnx -o OUT/derivatives/neoseg --qc --json OUT/summary.json``
   as a user would (a subprocess);
5. opens ``index.html`` from disk in headless Chromium, saves a screenshot and checks that the QC
   pictures were shown (their black background in the screenshot) and the outlier is highlighted;
6. with --img, copies the screenshot and one QC picture there (the figures of docs/datasets.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from .browser import colour_pixels, find_browser, screenshot

HIGHLIGHT = "#ffe08a"  # the report's outlier cell colour


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--train-subjects", type=int, default=10)
    p.add_argument("--minutes", type=float, default=5.0, help="training time limit")
    p.add_argument("--img", type=Path, help="copy qc-report.png and qc.png here")
    args = p.parse_args(argv)
    from neoseg.data.dhcp import find_sessions
    from neoseg.data.synth import CohortSpec, generate_cohort
    from neoseg.export.onnx_export import export_onnx
    from neoseg.runtime.model import info_from_checkpoint
    from neoseg.train import checkpoint
    from neoseg.train.config import TrainConfig
    from neoseg.train.loop import train

    out = args.out
    data = generate_cohort(out / "data", CohortSpec(n_subjects=args.subjects, grid=args.grid, seed=3), progress=False)
    sessions = find_sessions(data)
    bad_header(sessions[-1].t2, data / "sub-BADHEADER" / "ses-1" / "anat" / "sub-BADHEADER_ses-1_desc-restore_T2w.nii.gz")
    model = out / "model.onnx"
    if not model.is_file():
        config = TrainConfig.profile("cpu", cohort_subjects=args.train_subjects, cohort_grid=args.grid,
                                     slice_size=args.grid, full_fraction=1.0, loss="bce", max_minutes=args.minutes)
        print(f"training a U-Net (cpu profile, BCE, {args.train_subjects} fully labelled synthetic subjects) for at "
              f"most {args.minutes} min", flush=True)
        result = train(config, out / "train", resume=(out / "train" / "config.json").is_file(), progress=False)
        print(f"best epoch {result.best_epoch}; test Dice:\n{result.table}", flush=True)
        loaded = checkpoint.load(out / "train" / "best.pt")
        export_onnx(loaded.model, info_from_checkpoint(loaded), model)
    deriv = out / "derivatives" / "neoseg"
    infer = Path(sys.executable).with_name("neoseg-infer")
    cmd = [str(infer), str(data), "-m", str(model), "-o", str(deriv), "--qc", "--json", str(out / "summary.json")]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)

    if find_browser() is None:
        sys.exit("no Chromium or Chrome found; install one (Debian/Ubuntu: apt-get install chromium) and rerun")
    shot = screenshot(deriv / "index.html", out / "qc-report.png", width=1500, height=1000)
    # the pictures' black background is the only pure black on the page (its text is #222)
    black = colour_pixels(shot, "#000000", 10)
    highlighted = colour_pixels(shot, HIGHLIGHT, 6)
    check = {"screenshot": str(shot), "black_picture_pixels": black, "highlight_pixels": highlighted,
             "pictures_shown": black > 20000, "outlier_highlighted": highlighted > 200}
    print(json.dumps(check, indent=2))
    if not (check["pictures_shown"] and check["outlier_highlighted"]):
        sys.exit("the report did not show its pictures or its outlier in the browser")
    if args.img:
        args.img.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, args.img / "qc-report.png")
        s = sessions[len(sessions) // 2]
        qc = deriv / f"sub-{s.subject}" / f"ses-{s.session}" / "anat" / f"{s.key}_desc-neoseg_qc.png"
        shutil.copy(qc, args.img / "qc.png")
        print(f"copied to {args.img}: qc-report.png, qc.png ({s.key})")


def bad_header(source: Path, target: Path) -> None:
    """A copy of ``source`` whose header says the voxels are half as large as they are."""
    if target.is_file():
        return
    img = nib.load(source)
    affine = img.affine.copy()
    affine[:3, :3] *= 0.5
    header = img.header.copy()
    header.set_zooms(tuple(np.asarray(img.header.get_zooms()[:3]) * 0.5))
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, header), target)


if __name__ == "__main__":
    main()
