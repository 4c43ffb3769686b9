"""One GPU check, offline, within a time budget: parity and throughput on a CUDA machine, written
to OUT/gpu-check.{json,md} after every step (a timeout still leaves what was measured).

    python -m neoseg.benchmarks.gpu_check --out OUT [--data ROOT] [--checkpoint best.pt]
           [--compile reduce-overhead,max-autotune-no-cudagraphs] [--budget 270]

Steps: synthetic 256^3 cohort (or --data) -> the default U-Net trained for --train-seconds on
the first scan (or --checkpoint) -> parity on the other scans (torch FP32, ONNX Runtime FP32,
torch FP16) -> network-only throughput (eager FP32 / FP16 / BN-folded / CUDA graph / optional
torch.compile modes, ONNX Runtime CPU) -> end-to-end seconds per scan -> training steps in FP32,
BF16 and FP16 (OUT/train_precision.md). Optional steps are skipped
when the budget would not allow them; each skip is recorded.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from . import parity, throughput, train_precision
from .common import cohort, machine, write_results

COMPILE_COST_S = 90  # rough warm-up of one torch.compile mode of the default U-Net


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, help="dHCP-layout folder; default: 2 generated 256^3 subjects")
    p.add_argument("--checkpoint", type=Path, help="default: the default U-Net trained here for --train-seconds")
    p.add_argument("--train-seconds", type=float, default=40)
    p.add_argument("--grid", type=int, default=256, help=argparse.SUPPRESS)  # smaller for a CPU smoke run
    p.add_argument("--compile", default="", help="torch.compile modes to time, comma-separated (each ~1-2 min)")
    p.add_argument("--budget", type=float, default=270, help="seconds; optional steps stop before it")
    args = p.parse_args(argv)
    start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - start  # noqa: E731
    result: dict = {"machine": machine(), "steps": {}, "skipped": []}

    def save():
        result["elapsed_s"] = round(elapsed(), 1)
        write_results(args.out, "gpu-check", result, _markdown(result))

    def step(name, fn):
        t = time.perf_counter()
        print(f"[{elapsed():6.1f} s] {name}", flush=True)
        try:
            value = fn()
            result["steps"][name] = round(time.perf_counter() - t, 1)
            return value
        except Exception as e:  # noqa: BLE001 - record and go on: later steps may still work
            result.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            print(f"  failed: {type(e).__name__}: {e}", flush=True)
            return None
        finally:
            save()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result["device"] = device
    sessions = step("cohort", lambda: cohort(args.data, 2, args.grid))
    if not sessions:
        return
    ckpt = args.checkpoint or step("train", lambda: _train(args, sessions[0], device))
    if ckpt is None:
        return
    eval_sessions = sessions[1:3] if len(sessions) > 1 else sessions
    result["parity"] = step("parity", lambda: parity.run(ckpt, eval_sessions, None, device, sessions[:1]))
    modes = []
    for mode in filter(None, args.compile.split(",")):
        if elapsed() + COMPILE_COST_S * (len(modes) + 1) + 60 < args.budget:
            modes.append(mode)
        else:
            result["skipped"].append(f"torch.compile {mode}: budget")
    targs = argparse.Namespace(scan=eval_sessions[0].t2, checkpoint=ckpt, engine=None, device=device,
                               compile=",".join(modes), repeats=5 if device == "cuda" else 1, skip_network=False,
                               out=args.out)
    result["throughput"] = step("throughput", lambda: throughput.run(targs))
    if elapsed() + 60 < args.budget:  # FP32 against BF16/FP16 training steps (train_precision.md beside)
        step("train precision", lambda: train_precision.main(["--device", device, "--out", str(args.out)]))
    else:
        result["skipped"].append("train precision: budget")
    save()
    print((args.out / "gpu-check.md").read_text())


def _train(args, session, device) -> Path:
    from .toy import train_toy

    return train_toy(args.out / "default-unet.pt", [session], 256 if args.grid == 256 else 32,
                     widths=(16, 32, 64, 128, 256), steps=100_000, seconds=args.train_seconds, device=device)


def _markdown(result: dict) -> str:
    m = result["machine"]
    text = f"# neoseg GPU check\n\n{m.get('gpu', 'no GPU')} / {m['cpu']} ({m['cores']} cores), torch " \
           f"{m.get('torch')}, onnxruntime {m['onnxruntime']}; steps (s): {result['steps']}; " \
           f"elapsed {result.get('elapsed_s')} s\n\n"
    if result.get("skipped"):
        text += f"Skipped: {result['skipped']}\n\n"
    if result.get("parity"):
        text += "## Parity\n\n" + parity.markdown(result["parity"]) + "\n"
    if result.get("throughput"):
        text += "## Throughput\n\n" + throughput.markdown(result["throughput"]) + "\n"
    for name, err in result.get("errors", {}).items():
        text += f"\n## Error in {name}\n\n```\n{err}\n```\n"
    return text


if __name__ == "__main__":
    main()
