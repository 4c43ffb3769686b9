"""Numeric precision of a backend, and the parity gate that decides when reduced precision is used.

A reduced precision (``int8``, ``bf16``, ``fp16``) runs only where the hardware has units for it
and, when chosen automatically, only for a model whose recorded agreement with FP32 reaches
:data:`PARITY_DICE` on every structure. ``neoseg-export`` measures that agreement and stores it in
the model's metadata (``neoseg.reduced_precision``): FP16 emulated on verification slices, BF16
and INT8 (a quantised OpenVINO model beside the ``.onnx``) through the runtime on whole scans, held
out by the run's split where it is known (the record names them). A model without the record runs
in FP32 under ``--precision auto``. An explicitly requested precision runs or fails with the
reason; nothing falls back silently.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")
REDUCED = ("int8", "bf16", "fp16")  # fastest first where a CPU has several (INT8 dot products pack
# twice the operands of BF16's in AMX tiles and AVX-512 alike)
# /proc/cpuinfo flags of the units that run INT8 convolutions, fastest first, with their names
INT8_UNITS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"))
PARITY_DICE = 0.99  # reduced precision must agree with FP32 at least this well on every structure
# ... or differ from it in at most this many voxels over all the gate's scans: a structure of under 50
# voxels there (one the model barely segments) loses more than 0.01 of Dice to one voxel, which the
# gate cannot resolve (docs/reduced-precision.md)
PARITY_VOXELS = 1


@dataclass(frozen=True)
class ParityRecord:
    """Agreement of one reduced precision with FP32, as measured when the model was exported."""

    min_dice: float  # worst per-structure Dice against FP32
    worst: str  # the structure with that Dice
    slices: int
    measured_with: str  # what ran the reduced precision (e.g. "openvino 2026.4 bf16", "torch bf16 autocast")
    scans: int = 0  # whole scans the Dice is pooled over (0: measured on slices)
    voxels: int = 0  # the worst structure's voxels in FP32's masks over those scans: one voxel is 1/voxels of Dice
    kept_fp32: tuple[str, ...] = ()  # layers kept in FP32 in the model measured (by name), none for plain
    differing: int = -1  # voxels where the worst structure's masks differ over those scans (-1: not counted)
    scan_keys: tuple[str, ...] = ()  # those scans' sessions (sub-X_ses-Y)
    scans_from: str = ""  # where they come from: held out by the run's split, or no split known
    calibration_keys: tuple[str, ...] = ()  # INT8: the sessions it was calibrated on

    def __post_init__(self):
        for name in ("kept_fp32", "scan_keys", "calibration_keys"):  # lists when read from JSON
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def passed(self) -> bool:
        return self.min_dice >= PARITY_DICE or 0 <= self.differing <= PARITY_VOXELS

    def describe(self) -> str:
        kept = f", {len(self.kept_fp32)} layers kept in FP32" if self.kept_fp32 else ""
        kept += f", {self.worst} {self.voxels} voxels, {self.differing} differ" if self.scans else ""
        return (f"worst structure {self.worst} Dice {self.min_dice:.4f} vs FP32 ({self.measured_with}{kept}, "
                f"{self.slices} slices)")


def int8_unit(flags: list[str]) -> str | None:
    """The fastest INT8 unit among the CPU's ``flags`` (see :data:`INT8_UNITS`), or None."""
    return next((name for flag, name in INT8_UNITS if flag in flags), None)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    return precision


def choose(supported: list[str], records: dict[str, ParityRecord], requested: str, unit: str,
           skip: dict[str, str] | None = None) -> tuple[str, str]:
    """(precision to run, why) among ``supported`` (what this hardware runs, "fp32" always
    included) for ``requested``; ``unit`` names the hardware in messages. ``skip`` maps a supported
    precision that ``auto`` passes over here (no faster than FP32, its file missing) to the reason.
    Raises :class:`ValueError` for an explicit precision the hardware lacks (callers turn it into
    ``BackendUnavailable``)."""
    if requested != "auto":
        if requested not in supported:
            raise ValueError(f"{unit} cannot run {requested} (it runs {', '.join(supported)})"
                             + (f"; {HARDWARE[requested]}" if requested in HARDWARE else ""))
        return requested, "requested"
    notes, skip = [], skip or {}
    for p in REDUCED:
        if p not in supported:
            continue
        if p in skip:
            notes.append(f"{p} not used: {skip[p]}")
            continue
        record = records.get(p)
        if record is None:
            notes.append(f"{p} not used: the model carries no {p} parity record (re-export it with neoseg-export)")
        elif not record.passed:
            notes.append(f"{p} not used: {record.describe()} < {PARITY_DICE}")
        elif slower_than_bf16(p, record, supported, records, skip):
            notes.append(f"{p} not used: it keeps {kept_layers(record)} convolutions in FP32, more than bf16 "
                         f"({kept_layers(records['bf16'])}), which passed and runs about as fast or faster")
        else:  # what was passed over, then why this one
            return p, "; ".join(notes + [f"{p} parity {record.describe()} >= {PARITY_DICE}"])
    if not any(p in supported for p in REDUCED):
        notes.append(f"{unit} has no INT8/BF16/FP16 units")
    return "fp32", "; ".join(notes)


def slower_than_bf16(precision: str, record: ParityRecord, supported: list[str], records: dict[str, ParityRecord],
                     skip: dict[str, str]) -> bool:
    """Whether an INT8 model that passed its gate runs slower than BF16 would: where BF16 runs and
    passed too, with fewer layers kept in FP32 than INT8 keeps. The layers kept in FP32 cost more
    than INT8 saves over BF16 on the rest (measured: docs/benchmarks.md)."""
    bf16 = records.get("bf16")
    return (precision == "int8" and "bf16" in supported and "bf16" not in skip and bf16 is not None
            and bf16.passed and kept_layers(record) > kept_layers(bf16))


OLD_INT8_REMEDY = "first convolution and head in FP32"  # exports before 2026-12-04 kept these two, unlisted


def kept_layers(record: ParityRecord) -> int:
    """How many layers the model a record was measured on keeps in FP32 (older INT8 exports named
    their remedy only in ``measured_with``)."""
    return len(record.kept_fp32) or (2 if OLD_INT8_REMEDY in record.measured_with else 0)


HARDWARE = {"int8": "INT8 needs an x86-64 CPU with AMX-INT8, AVX-512 VNNI, AVX-VNNI or at least AVX2",
            "bf16": "BF16 needs AVX-512 BF16 or AMX (Intel Xeon 4th generation or later, AMD Zen 4 or later)",
            "fp16": "FP16 on a CPU needs AVX-512 FP16 / AMX-FP16 (Intel Xeon 6) or an ARM CPU with FP16 arithmetic"}
