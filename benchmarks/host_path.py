"""The host path of ``neoseg-infer`` alone: seconds per scan in each phase around the network (read,
resample, preprocess, postprocess, write), with a stand-in network that costs almost nothing, so
the figures do not depend on a model, a backend or the CPU's vector units.

The stand-in has the default model's geometry (dhcp-drawem9, 256^2 sagittal slices at 0.5 mm) and
gives each channel an intensity band of the scan (logit 4 - 300 (x - m_c)^2), so its labels and
masks are spread over the head as tissue classes are. Wall and CPU seconds (all threads) are
reported as medians over the repeats, after one warm-up scan. The network's own time is in the
throughput benchmark (``neoseg.benchmarks.throughput``, which also prints each precision's host
path and its ratio to the network).

    python -m neoseg.benchmarks.host_path [--scan T2.nii.gz ...] [--repeats 5] [--out DIR]

Without --scan a 256^3 synthetic scan at 0.5 mm is generated.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import builtin
from neoseg.runtime.backend import Backend
from neoseg.runtime.model import ModelInfo

from .common import cohort, host_seconds, machine, table, write_results

PHASES = ("read", "resample", "preprocess", "postprocess", "write")


class BandNetwork(Backend):
    """Channel c's logit is 4 - 300 (x - m_c)^2, m_c evenly spaced over the scaled intensities."""

    name, batch = "stand-in (intensity bands)", 8

    def __init__(self, info: ModelInfo):
        self.info = info
        self.centres = np.linspace(0.0, 1.0, len(info.hierarchy), dtype=np.float32)[None, :, None, None]

    def run(self, x: np.ndarray) -> np.ndarray:
        d = x - self.centres
        return 4 - 300 * d * d


def stand_in_info() -> ModelInfo:
    h = builtin()
    return ModelInfo(h, (0.5,) * len(h), axis=0, slice_size=256, divisor=16, spacing=(0.5, 0.5, 0.5),
                     architecture="stand-in", version="", config_digest="", flexible=True)


def measure(scan: Path, repeats: int) -> dict:
    """Per phase (and ``host``, ``network``): median wall and CPU seconds of ``repeats`` scans."""
    from neoseg.runtime.files import segment_file
    from neoseg.runtime.pipeline import Segmenter

    segmenter = Segmenter(BandNetwork(stand_in_info()))
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for k in range(repeats + 1):
            cpu = time.process_time()
            _, seg = segment_file(scan, segmenter, out, overwrite=True)
            cpu = time.process_time() - cpu
            if k:  # the first: warm-up
                t = dict(seg.timings)
                t["host"] = host_seconds(t)
                runs.append((t, cpu))
    wall = {p: statistics.median(t.get(p, 0.0) for t, _ in runs) for p in (*PHASES, "host", "network")}
    return {"scan": str(scan), "shape": list(_shape(scan)), "wall_s": wall,
            "cpu_s_total": statistics.median(c for _, c in runs)}


def _shape(scan: Path) -> tuple:
    import nibabel as nib

    return nib.load(scan).shape


def markdown(result: dict) -> str:
    m = result["machine"]
    text = (f"Machine: {m['cpu']} ({m['cores']} CPU cores; features {', '.join(m['cpu_features']) or 'unknown'}); "
            f"load at start {m['load']}\n\nHost path of neoseg-infer with a stand-in network, median of "
            f"{result['repeats']} scans, wall seconds (CPU seconds of the whole scan, all threads, in the last column):\n\n")
    rows = [[Path(r["scan"]).name, "x".join(map(str, r["shape"])), *(r["wall_s"][p] for p in PHASES),
             r["wall_s"]["host"], r["cpu_s_total"]] for r in result["scans"]]
    return text + table(["scan", "shape", *PHASES, "host path", "CPU s"], rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", type=Path, nargs="*", help="T2 NIfTI files; default: a generated 256^3 synthetic scan")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    scans = args.scan or [cohort(None, 1, 256)[0].t2]
    result = {"machine": machine(), "repeats": args.repeats, "scans": [measure(s, args.repeats) for s in scans]}
    write_results(args.out, "host-path", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
