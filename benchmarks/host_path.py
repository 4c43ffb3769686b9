"""The host path of ``neoseg-infer`` alone: seconds per scan in each phase around the network (read,
resample, preprocess, postprocess, write), wall clock and CPU (all threads), with a stand-in
network that costs almost nothing, so the figures do not depend on a model, a backend or the CPU's
vector units.

The stand-in has the default model's geometry (dhcp-drawem9, 256^2 sagittal slices at 0.5 mm) and
gives each channel an intensity band of the scan (logit 4 - 300 (x - m_c)^2), so its labels and
masks are spread over the head as tissue classes are. Figures are medians over the repeats, after
one warm-up scan per setting. In the same process, alternating scan by scan, the default path is
compared with references: ``one-thread`` (the work around the network on one host thread, as
before the host threads) and ``zlib`` (the standard library's gzip instead of ISA-L, the fallback
where python-isal is missing). The network's own time is in the throughput benchmark
(``neoseg.benchmarks.throughput``, which also prints each precision's host path and its ratio to
the network).

    python -m neoseg.benchmarks.host_path [--scan T2.nii.gz ...] [--repeats 5] [--compare one-thread zlib] [--out DIR]

Without --scan a 256^3 synthetic scan at 0.5 mm is generated and stored as one gzip stream, as
scanners' converters, FSL and nibabel write it (neoseg's own writer stores several members, which
a reader could inflate in parallel; real scans do not allow that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import builtin
from neoseg.runtime.backend import Backend
from neoseg.runtime.model import ModelInfo

from .common import cohort, host_seconds, machine, table, write_results

PHASES = ("read", "resample", "preprocess", "postprocess", "write")
REFERENCES = {"one-thread": "one host thread", "zlib": "stdlib zlib instead of ISA-L"}


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


def _setting(name: str):
    """(host threads, context) of a setting: ``default`` or one of REFERENCES."""
    from neoseg.core import gz

    if name == "one-thread":
        return 1, nullcontext()
    if name == "zlib":
        return None, gz.using("zlib")
    return None, nullcontext()


def measure(scan: Path, repeats: int, settings=("default",)) -> dict:
    """Per setting and phase (and ``host``, ``network``): median wall and CPU seconds of
    ``repeats`` scans, the settings alternating scan by scan."""
    from neoseg.runtime.files import segment_file
    from neoseg.runtime.pipeline import Segmenter

    network = BandNetwork(stand_in_info())
    runs: dict[str, list] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as out:
        for k in range(repeats + 1):
            for name in settings:
                threads, context = _setting(name)
                with context:
                    _, seg = segment_file(scan, Segmenter(network, host_threads=threads), out, overwrite=True)
                if k:  # the first of each: warm-up
                    wall, cpu = dict(seg.timings), dict(seg.cpu_timings)
                    wall["host"], cpu["host"] = host_seconds(wall), host_seconds(cpu)
                    runs[name].append((wall, cpu))
    keys = (*PHASES, "host", "network")
    result = {"scan": str(scan), "shape": list(_shape(scan)), "settings": {}}
    for name, got in runs.items():
        result["settings"][name] = {
            "wall_s": {p: statistics.median(w.get(p, 0.0) for w, _ in got) for p in keys},
            "cpu_s": {p: statistics.median(c.get(p, 0.0) for _, c in got) for p in keys}}
    return result


def _shape(scan: Path) -> tuple:
    import nibabel as nib

    return nib.load(scan).shape


def single_stream(scan: Path) -> Path:
    """``scan`` stored again as one gzip stream by nibabel, beside the generated cohort."""
    import nibabel as nib

    path = scan.with_name(scan.name.replace(".nii.gz", "_single-stream.nii.gz"))
    if not path.exists():
        img = nib.load(scan)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.nii.gz")
        nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header).to_filename(str(tmp))
        os.replace(tmp, path)
    return path


def markdown(result: dict) -> str:
    m = result["machine"]
    text = (f"Machine: {m['cpu']} ({m['cores']} CPU cores; features {', '.join(m['cpu_features']) or 'unknown'}); "
            f"load at start {m['load']}, at the end {result['load_end']}\n\nHost path of neoseg-infer with a "
            f"stand-in network, median of {result['repeats']} scans per setting (alternating), seconds; "
            f"CPU seconds count all threads:\n\n")
    for r in result["scans"]:
        text += f"{Path(r['scan']).name} ({'x'.join(map(str, r['shape']))}):\n\n"
        rows = []
        default = r["settings"]["default"]
        for name, s in r["settings"].items():
            label = "default" if name == "default" else REFERENCES[name]
            for kind in ("wall_s", "cpu_s"):
                rows.append([label, kind.split("_")[0], *(s[kind][p] for p in PHASES), s[kind]["host"]])
        for name, s in r["settings"].items():
            if name != "default":
                for kind in ("wall_s", "cpu_s"):
                    rows.append([f"default / {REFERENCES[name]}", kind.split("_")[0],
                                 *(_ratio(default[kind][p], s[kind][p]) for p in (*PHASES, "host"))])
        text += table(["setting", "clock", *PHASES, "host path"], rows) + "\n"
    return text


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 1e-3 else "-"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", type=Path, nargs="*", help="T2 NIfTI files; default: a generated 256^3 synthetic scan")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compare", nargs="*", choices=sorted(REFERENCES), default=sorted(REFERENCES),
                   help="reference settings timed beside the default (none: the default alone)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    scans = args.scan or [single_stream(cohort(None, 1, 256)[0].t2)]
    settings = ("default", *args.compare)
    result = {"machine": machine(), "repeats": args.repeats,
              "scans": [measure(s, args.repeats, settings) for s in scans]}
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results(args.out, "host-path", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
