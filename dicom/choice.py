"""Choosing a study's T2w series by rules the user can set: regular expressions on the series
description and protocol name, slice planes, voxel size, series numbers, and what repeats of one
acquisition give. Every series gets a verdict (``neoseg-infer --dry-run`` lists them); a refusal
names the fixes that would separate the series, where the user sets them: neoseg-infer's options
(:data:`CLI`) or the ``[series]`` table of neoseg-serve's node.toml (:data:`NODE`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .headers import MR_CLASSES
from .series import OBLIQUE_DEGREES, PLANES, Series

DEFAULT_INCLUDE = (r"t2",)  # series description or protocol name, case-insensitive
DEFAULT_EXCLUDE = (r"scout|locali[sz]er|survey|\bloc\b|calibration|flair|t2\*|t2star|swi|dwi|diffusion",)
REPEATS = ("refuse", "first", "last")  # several passing repeats of one acquisition: refused, or one taken


class NoChoice(ValueError):
    """None or several series pass; ``fix`` says how to choose one."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class RuleNames:
    """How the user sets each rule, as refusals name it."""

    description: str
    plane: str
    voxel: str
    number: str  # with {} for a series number
    last: str  # the tie rule that takes the last repeat
    where: str  # appended to the fixes


CLI = RuleNames("--series-description", "--plane", "--max-voxel-size", "--series-number {}", "--repeats last",
                " (see --dry-run)")
NODE = RuleNames("description", "planes", "max_voxel_size", "numbers = [{}]", 'repeats = "last"',
                 " in the [series] table of node.toml")


@dataclass
class SeriesRules:
    """Which series of a study is the T2w scan: regular expressions (case-insensitive, searched in the
    series description and the protocol name), slice planes, the largest voxel size, series numbers,
    and what several passing repeats of one acquisition give."""

    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    planes: tuple[str, ...] = ()  # empty: any plane
    max_voxel: float | None = None  # mm, the largest of the three spacings
    explicit: bool = False  # the user set a rule: apply it to a single-series folder too
    numbers: tuple[int, ...] = ()  # empty: any series number
    repeats: str = "refuse"  # one of REPEATS

    def __post_init__(self):
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"series pattern {pattern!r} is not a valid regular expression ({e}); "
                                 f"fix it") from None
        bad = [p for p in self.planes if p not in (*PLANES, "oblique")]
        if bad:
            raise ValueError(f"--plane {bad[0]}: choose from {', '.join((*PLANES, 'oblique'))}")
        if self.repeats not in REPEATS:
            raise ValueError(f"repeats {self.repeats!r}: choose from {', '.join(REPEATS)}")

    @classmethod
    def given(cls, include=None, exclude=None, planes=(), max_voxel=None, numbers=(), repeats="refuse",
              explicit=False) -> "SeriesRules":
        """The rules a user set (None: not set). Series numbers without description patterns (or
        exclusions) drop the default patterns (or exclusions): the number names the series."""
        numbers = tuple(numbers or ())

        def default(given, patterns):
            return tuple(given) if given is not None else (() if numbers else patterns)

        return cls(default(include, DEFAULT_INCLUDE), default(exclude, DEFAULT_EXCLUDE),
                   tuple(p.lower() for p in planes or ()), max_voxel, explicit, numbers, repeats)

    def describe(self) -> str:
        """The rules in one line, as the dry run shows them."""
        parts = [f"description or protocol matches {' or '.join(self.include) or 'anything'}"]
        if self.exclude:
            parts.append(f"not {' or '.join(self.exclude)}")
        parts.append(f"plane {'/'.join(self.planes) or 'any'}")
        parts.append("voxels any size" if self.max_voxel is None else f"voxels at most {self.max_voxel:g} mm")
        if self.numbers:
            parts.append(f"series number {' or '.join(map(str, self.numbers))}")
        parts.append("repeats of one acquisition refused" if self.repeats == "refuse"
                     else f"of repeats of one acquisition the {self.repeats} (by series number)")
        return "T2w rules: MR volume; " + "; ".join(parts)

    def verdict(self, s: Series) -> str:
        """'' when ``s`` passes, else why not."""
        if s.sop_class not in MR_CLASSES:
            return f"not an MR image ({s.modality or 'no modality'})"
        if s.plane in ("mixed", "unknown"):
            return f"not a volume ({'slices in several planes' if s.plane == 'mixed' else 'no orientation'})"
        if s.frames < 2:
            return "a single slice"
        if self.numbers and s.number not in self.numbers:
            return f"series number {s.number}, not {' or '.join(map(str, self.numbers))}"
        text = f"{s.description} {s.protocol}"
        if self.include and not any(re.search(p, text, re.IGNORECASE) for p in self.include):
            return f"description/protocol matches none of {', '.join(self.include)}"
        hit = next((p for p in self.exclude if re.search(p, text, re.IGNORECASE)), None)
        if hit:
            return f"description/protocol matches the exclusion {hit}"
        oblique = s.tilt is not None and s.tilt > OBLIQUE_DEGREES
        if self.planes and s.plane not in self.planes and not ("oblique" in self.planes and oblique):
            return f"{s.plane} slices, not {'/'.join(self.planes)}"
        if self.max_voxel is not None and s.voxel is not None and max(s.voxel) > self.max_voxel:
            return f"voxels up to {max(s.voxel):.3g} mm, more than {self.max_voxel:g} mm"
        return ""


def choose(series: list[Series], rules: SeriesRules, where: Path, names: RuleNames = CLI) -> Series:
    """The one series that passes the rules (a folder of one image series: that series, unless the
    user set rules that refuse it; several repeats of one acquisition: one of them, if the rules say
    which); every series gets its ``verdict``. Refuses none or several, naming fixes as ``names``."""
    for s in series:
        s.verdict = rules.verdict(s)
    images = [s for s in series if s.is_image]  # a SEG, report or key object beside them does not count
    if len(images) == 1 and not rules.explicit:
        images[0].verdict = ""  # the user pointed at this series: reading it says what is wrong with it
    passed = [s for s in series if not s.verdict]
    if len(passed) > 1 and rules.repeats != "refuse" and repeats(passed):
        return _take_repeat(passed, rules.repeats)
    if len(passed) == 1:
        passed[0].verdict = "chosen"
        return passed[0]
    listing = "; ".join(f"{s.name}: {s.verdict or 'passes'}" for s in series[:8]) + (" ..." if len(series) > 8 else "")
    if not passed:
        fix = (f"set {names.description}, {names.plane} or {names.voxel}, or choose a series with "
               f"{names.number.format('N')}{names.where}")
        raise NoChoice(f"{where}: no series passes the T2w rules ({listing}); {fix}", fix)
    fix = f"{', or '.join(_fixes(passed, names))}{names.where}"
    raise NoChoice(f"{where}: {len(passed)} series pass the T2w rules ({listing}); {fix}", fix)


def repeats(passed: list[Series]) -> bool:
    """Several series of one acquisition (as after motion): the same description, protocol, plane and
    voxel size, each with its own series number."""
    numbers = [s.number for s in passed]
    return None not in numbers and len(set(numbers)) == len(numbers) and len({_acquisition(s) for s in passed}) == 1


def _acquisition(s: Series) -> tuple:
    voxel = None if s.voxel is None else tuple(round(v, 2) for v in s.voxel)
    return s.description.lower(), s.protocol.lower(), s.plane, voxel


def _take_repeat(passed: list[Series], which: str) -> Series:
    """The first or last (by series number) of several repeats, said in its verdict and notes."""
    ordered = sorted(passed, key=lambda s: s.number)
    chosen = ordered[-1] if which == "last" else ordered[0]
    numbers = ", ".join(str(s.number) for s in ordered)
    for s in ordered:
        s.verdict = f"{'an earlier' if which == 'last' else 'a later'} repeat of series {chosen.number} (repeats: {which})"
    chosen.verdict = f"chosen: the {which} of the repeats {numbers}"
    chosen.notes.append(f"series {numbers} are repeats of one acquisition; the {which}, {chosen.name}, is "
                        f"segmented (repeats: {which})")
    return chosen


def _fixes(passed: list[Series], names: RuleNames) -> list[str]:
    """The settings that would leave one of ``passed``: only those that tell them apart."""
    differ = [name for name, key in ((names.description, lambda s: (s.description.lower(), s.protocol.lower())),
                                     (names.plane, lambda s: s.plane), (names.voxel, lambda s: s.voxel))
              if len({key(s) for s in passed}) > 1]
    fixes = [f"narrow them with {' or '.join(differ)}"] if differ else []
    numbers = [s.number for s in passed]
    if None not in numbers and len(set(numbers)) == len(numbers):
        fixes.append("choose one with " + " or ".join(names.number.format(n) for n in numbers))
    if repeats(passed):
        fixes.append(f"take the last of these repeats with {names.last}")
    return fixes or ["export the T2w series alone"]


def table(series: list[Series]) -> str:
    """The dry run's listing: one line per series, with what the rules said, and its notes."""
    lines = []
    for s in series:
        voxel = "x".join(f"{v:.3g}" for v in s.voxel) + " mm" if s.voxel else "-"
        tilt = f", {s.tilt:.1f} deg oblique" if s.tilt is not None and s.tilt > OBLIQUE_DEGREES else ""
        lines.append(f"  {s.name}: {MR_CLASSES.get(s.sop_class, s.modality or '?')}, {s.frames} frames, "
                     f"{s.plane}{tilt}, {voxel}, protocol '{s.protocol}' -> {s.verdict or 'passes'}")
        lines.extend(f"    note: {note}" for note in s.notes)
    return "\n".join(lines)
