"""``neoseg-eval --atlas ... --atlas-weight choose``: the atlas fusion weight of each child, chosen on
the sessions evaluated (validation sessions: never the test ones).

Each session is segmented once per candidate weight (one for every child at a time); the atlases are
registered to it once (:class:`neoseg.runtime.atlas.AtlasFusion` blends the last scan's atlases
again). Where no parent is nested in another's children (the built-in hierarchy), a child's mask
depends on its own weight only, so each child takes the candidate with the best mean mask Dice
over the sessions (ties: the smaller weight; a child no session scores: 0); 0 leaves it to the
network.
"""

from __future__ import annotations

import statistics

from neoseg.data.dhcp import Session
from neoseg.runtime.pipeline import Segmenter

from .evaluate import evaluate_sessions

CANDIDATES = (0.0, 0.25, 0.5, 0.75)


def choose_weights(segmenter: Segmenter, sessions: list[Session], candidates=CANDIDATES,
                   progress: bool = False) -> tuple[dict[str, float], dict[float, list[dict]]]:
    """Per child name, the chosen weight; and per candidate, the evaluation rows (as
    :func:`~.evaluate.evaluate_sessions`)."""
    from tqdm import tqdm

    fusion = segmenter.atlas
    fusion.keep_last = True  # each session registered once, blended at every candidate
    rows: dict[float, list[dict]] = {w: [] for w in candidates}
    try:
        for session in tqdm(sessions, desc="choose weights", disable=None if progress else True, leave=False):
            for w in candidates:
                fusion.weights = {k: w for k in fusion.kids}
                rows[w] += evaluate_sessions(segmenter, [session])
    finally:
        fusion.keep_last = False  # the segmenter goes on registering every scan it is given
    scores = {w: mean_mask_dice(rows[w]) for w in candidates}
    names = list(fusion.named_weights())
    chosen = {name: max(candidates, key=lambda w: (round(scores[w].get(name, 0.0), 6), -w)) for name in names}
    fusion.weights = {k: chosen[fusion.hierarchy.names[k]] for k in fusion.kids}
    return chosen, rows


def mean_mask_dice(rows: list[dict]) -> dict[str, float]:
    """Per structure, the mean Dice of its masks over the rows' sessions."""
    by_structure: dict[str, list[float]] = {}
    for r in rows:
        if r["output"] == "mask":
            by_structure.setdefault(r["structure"], []).append(float(r["dice"]))
    return {s: statistics.mean(v) for s, v in by_structure.items()}


def weights_text(chosen: dict[str, float]) -> str:
    """The ``--atlas-weight`` that gives ``chosen``: the most common weight bare, the others by name
    (every weight 0: no --atlas at all)."""
    if not any(chosen.values()):
        return "none (every child is best without the atlases: leave --atlas out)"
    common = statistics.mode(chosen.values())
    return ",".join([f"{common:g}"] + [f"{name}={w:g}" for name, w in chosen.items() if w != common])


def report(chosen: dict[str, float], rows: dict[float, list[dict]]) -> str:
    """Markdown: each child's mean mask Dice per candidate weight, and the choice."""
    scores = {w: mean_mask_dice(r) for w, r in rows.items()}
    sessions = {(r["subject"], r["session"]) for r in next(iter(rows.values()))}
    lines = ["| child | " + " | ".join(f"weight {w:g}" for w in rows) + " | chosen |", "|---" * (len(rows) + 2) + "|"]
    for name, w in chosen.items():
        lines.append(f"| {name} | " + " | ".join(_number(scores[c].get(name)) for c in rows) + f" | {w:g} |")
    choice = f"--atlas-weight {weights_text(chosen)}" if any(chosen.values()) else weights_text(chosen)
    return f"Mean mask Dice per atlas weight ({len(sessions)} sessions):\n\n" + "\n".join(lines) + f"\n\nChosen: {choice}"


def _number(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"
