"""The quality of ``neoseg-train --atlas propagate`` before any training (docs/atlas.md): on the
built-in cohort at a fully labelled fraction, the first ``--targets`` partially labelled training
sessions of each draw get the registrations and the propagation a run would make, and each
(draw, confidence) writes its ``atlas.json`` (warped and propagated children's Dice against the
hidden truth, share left unknown, registration seconds) under ``--out``; ``nearest`` registers only
the atlas session nearest in age instead of fusing all. Registrations are cached in ``--out``.

    python -m neoseg.benchmarks.atlas_quality --out /tmp/atlas-quality [--draws 0,1,2 --targets 12]
        [--warps regular,flexible]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path


def main(argv=None) -> None:
    from neoseg.core.hierarchy import resolve
    from neoseg.train.atlas import with_atlas
    from neoseg.train.config import TrainConfig
    from neoseg.train.recipes import dataset_split, training_sessions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--targets", type=int, default=12)
    ap.add_argument("--full-fraction", type=float, default=0.02)
    ap.add_argument("--confidences", default="0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--warps", default="regular", help="the registrations each atlas gets, comma-separated "
                    "(neoseg-train --atlas-warps)")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for draw in (int(d) for d in args.draws.split(",")):
        base = TrainConfig(full_fraction=args.full_fraction, draw=draw, atlas="propagate",
                           atlas_warps=args.warps.split(","))
        split = dataset_split(base)
        atlases = [s for s in split.train if split.is_full(s)]
        targets = [s for s in split.train if not split.is_full(s)][:args.targets]
        nearest = lambda t: min(atlases, key=lambda a: abs(a.scan_age - t.scan_age))  # noqa: E731
        runs = [("fused", float(c), [dataclasses.replace(split, train=tuple(atlases + targets))])
                for c in args.confidences.split(",")]
        runs.append(("nearest", base.atlas_confidence,
                     [dataclasses.replace(split, train=(nearest(t), t)) for t in targets]))
        for name, confidence, parts in runs:
            config = dataclasses.replace(base, atlas_confidence=confidence)
            for k, part in enumerate(parts):
                sessions, partial = training_sessions(config, part)
                warps = "" if args.warps == "regular" else "-" + args.warps.replace(",", "+")
                out = args.out / f"d{draw}-{name}-c{confidence}{warps}" / str(k)
                out.mkdir(parents=True, exist_ok=True)
                with_atlas(config, part, sessions, partial, args.out / "cache", out, resolve(config.hierarchy),
                           workers=args.workers)
                report = json.loads((out / "atlas.json").read_text())
                print(json.dumps({"draw": draw, "atlases": name, "confidence": confidence, "warps": args.warps,
                                  "part": k, "dice": report.get("dice"), "unknown_share": report.get("unknown_share"),
                                  "seconds": report["seconds"], "pairs": report["pairs"]}), flush=True)


if __name__ == "__main__":
    main()
