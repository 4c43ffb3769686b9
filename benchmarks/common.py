"""What the benchmarks share: the machine's description, cohort volumes, a default-size model,
timing, and result files (JSON + markdown)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    from neoseg.runtime.cpu import cpu_features, cpu_name

    info = {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load": [round(x, 2) for x in os.getloadavg()]}
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    try:
        import openvino

        info["openvino"] = openvino.get_version().split("-")[0]
        info["cpu_capabilities"] = list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def cohort(root: str | Path | None, n_subjects: int, grid: int, seed: int = 7):
    """Sessions of ``root`` (dHCP layout), or of a synthetic cohort generated into a cache folder."""
    from neoseg.data.dhcp import find_sessions

    if root is None:
        from neoseg.data.synth import CohortSpec, generate_cohort

        spec = CohortSpec(n_subjects=n_subjects, grid=grid, seed=seed)
        root = Path(os.environ.get("TMPDIR", "/tmp")) / f"neoseg-bench-cohort-{n_subjects}-{grid}-{seed}"
        generate_cohort(root, spec, progress=False)
    return find_sessions(root)


def default_checkpoint(path: str | Path, slice_size: int = 256, spacing=(0.5, 0.5, 0.5)) -> Path:
    """The default U-Net (widths 16..256), untrained: for timing, where weights do not matter."""
    import torch

    from neoseg.core.hierarchy import builtin
    from neoseg.train import checkpoint
    from neoseg.train.config import TrainConfig
    from neoseg.train.models import create_model

    torch.manual_seed(0)
    config = TrainConfig(slice_size=slice_size)
    model = create_model("unet", 1, 11, **config.model_kwargs()).eval()
    checkpoint.save(path, model, config, builtin(), spacing)
    return Path(path)


def median_seconds(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host_seconds(timings: dict) -> float:
    """The host path of one scan: every phase but the network (read, resample, preprocess,
    postprocess, write)."""
    return sum(v for k, v in timings.items() if k != "network")


def write_results(folder: str | Path, name: str, results: dict, markdown: str) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2, default=_plain))
    (folder / f"{name}.md").write_text(markdown)


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
