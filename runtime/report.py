"""The dataset's QC report: one static ``index.html`` (inline CSS, relative links), readable from
disk in any browser. One row per scan with its QC picture, volumes and run time; volumes far from
the dataset's median are highlighted."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from .dataset import FinishedScan

Z_LIMIT = 3.5  # modified z-score (Iglewicz & Hoaglin) above which a volume is an outlier
MIN_SCANS = 5  # fewer scans give no reliable median spread: nothing is flagged
FLOOR_ML = 0.1  # added before taking logarithms, so that empty structures stay finite


@dataclass
class FailedScan:
    name: str
    error: str


def modified_z(values: list[float]) -> list[float]:
    """0.6745 (x - median) / MAD per value; the mean absolute deviation (x 1.2533) stands in where
    more than half the values are equal (MAD 0). NaN when there are fewer than MIN_SCANS values."""
    x = np.asarray(values, np.float64)
    if len(x) < MIN_SCANS:
        return [math.nan] * len(x)
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad > 0:
        return (0.6745 * (x - med) / mad).tolist()
    mean_ad = np.mean(np.abs(x - med))
    if mean_ad == 0:
        return [0.0] * len(x)
    return ((x - med) / (1.2533 * mean_ad)).tolist()


def outliers(finished: list[FinishedScan], structures: list[str]) -> dict[tuple[int, str], float]:
    """(row, structure) -> modified z of every volume beyond Z_LIMIT. Volumes are compared on a
    log scale: they vary by factors (preterm and term brains differ by 2-3x), so a volume a tenth
    of the median is as far off as one ten times it."""
    flagged = {}
    for name in structures:
        rows = [i for i, f in enumerate(finished) if name in f.volumes]
        logs = [math.log(finished[i].volumes[name] + FLOOR_ML) for i in rows]
        for i, z in zip(rows, modified_z(logs)):
            if abs(z) > Z_LIMIT:
                flagged[(i, name)] = z
    return flagged


def render_report(finished: list[FinishedScan], failed: list[FailedScan], structures: list[str],
                  colours: dict[str, str], description: dict) -> str:
    """The report's HTML. ``structures`` are the volume columns, in order."""
    flagged = outliers(finished, structures)
    medians = {s: float(np.median([f.volumes[s] for f in finished if s in f.volumes]))
               for s in structures if any(s in f.volumes for f in finished)}
    generated = description["GeneratedBy"][0]
    model = generated.get("Model", {})
    rows = [_failed_row(f, len(structures)) for f in failed]  # what needs attention first
    rows += [_row(i, f, structures, flagged, medians) for i, f in enumerate(finished)]
    n_flagged = len({i for i, _ in flagged})
    legend = "".join(f'<span class="sw" style="background:{c}"></span>{html.escape(n)} '
                     for n, c in colours.items())
    head = "".join(f"<th>{html.escape(s)}</th>" for s in structures)
    median_row = "".join(f"<td>{medians[s]:.1f}</td>" if s in medians else "<td></td>" for s in structures)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = (f"Volumes more than {Z_LIMIT} robust standard deviations from the dataset's median are highlighted "
            f"(modified z-score of the log volume: median and median absolute deviation of the dataset); nothing "
            f"is flagged below {MIN_SCANS} scans. "
            f"A flag asks for a look at the picture: age and pathology also move volumes.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>neoseg QC report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }}
h1 {{ font-size: 1.4em; margin: 0 0 .3em; }}
.meta {{ color: #555; font-size: .9em; margin-bottom: .6em; }}
.summary span {{ margin-right: 1.2em; }}
.bad {{ color: #b00020; font-weight: 600; }}
table {{ border-collapse: collapse; font-size: .88em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 7px; text-align: right; vertical-align: middle; }}
th {{ background: #f3f3f3; position: sticky; top: 0; }}
td.name, th.name {{ text-align: left; white-space: nowrap; }}
td.err {{ text-align: left; }}
td.qc img {{ width: 360px; display: block; }}
tr.flag td.name {{ border-left: 5px solid #e0a000; }}
tr.failed td {{ background: #fde7ea; }}
td.out {{ background: #ffe08a; font-weight: 600; }}
tfoot td {{ font-style: italic; color: #555; }}
.sw {{ display: inline-block; width: .9em; height: .9em; margin: 0 .25em 0 .8em; vertical-align: -.1em; }}
label {{ margin-left: 1em; }}
</style></head><body>
<h1>neoseg QC report</h1>
<div class="meta">neoseg {html.escape(str(generated.get("Version", "")))} &middot;
model {html.escape(str(model.get("File", "")))} ({html.escape(str(model.get("Digest", ""))[:19])}&hellip;) &middot;
source {html.escape(description.get("SourceDatasets", [{}])[0].get("URL", ""))} &middot; {now}</div>
<div class="summary"><span>{len(finished)} scans segmented</span>
<span class="{'bad' if failed else ''}">{len(failed)} failed</span>
<span class="{'bad' if n_flagged else ''}">{n_flagged} with outlying volumes</span>
<label><input type="checkbox" id="only"> show only flagged and failed scans</label></div>
<p class="meta">{html.escape(note)} Volumes in ml. Outlines: {legend}</p>
<table id="scans">
<thead><tr><th class="name">scan</th><th>QC</th><th>run time (s)</th>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
<tfoot><tr><td class="name">median</td><td></td><td></td>{median_row}</tr></tfoot>
</table>
<script>
document.getElementById("only").addEventListener("change", function (e) {{
  document.querySelectorAll("#scans tbody tr").forEach(function (tr) {{
    tr.style.display = e.target.checked && !tr.matches(".flag, .failed") ? "none" : "";
  }});
}});
</script>
</body></html>
"""


def _row(i: int, f: FinishedScan, structures: list[str], flagged: dict, medians: dict) -> str:
    cells = []
    for s in structures:
        if s not in f.volumes:
            cells.append("<td>n/a</td>")
        elif (i, s) in flagged:
            tip = f"modified z {flagged[(i, s)]:+.1f} (log scale); dataset median {medians[s]:.1f} ml"
            cells.append(f'<td class="out" title="{html.escape(tip)}">{f.volumes[s]:.1f}</td>')
        else:
            cells.append(f"<td>{f.volumes[s]:.1f}</td>")
    cls = ' class="flag"' if any((i, s) in flagged for s in structures) else ""
    if f.qc is not None:
        src = html.escape(f.qc.as_posix())
        qc = f'<a href="{src}"><img src="{src}" alt="QC of {html.escape(f.scan.stem)}" loading="lazy"></a>'
    else:
        qc = "no picture (run with --qc)"
    seconds = f"{f.seconds:.1f}" if f.seconds is not None else ""
    return (f'<tr{cls}><td class="name">{html.escape(f.scan.stem)}</td><td class="qc">{qc}</td>'
            f"<td>{seconds}</td>{''.join(cells)}</tr>")


def _failed_row(f: FailedScan, n_structures: int) -> str:
    return (f'<tr class="failed"><td class="name">{html.escape(f.name)}</td>'
            f'<td class="err" colspan="{n_structures + 2}">failed: {html.escape(f.error)}</td></tr>')


def volume_columns(hierarchy) -> list[str]:
    """Group-table columns: the parents (TCV) first, then every leaf but the outside channel."""
    outside = hierarchy.outside_channel
    parents = [c.name for c in hierarchy.channels if c.children]
    return parents + [hierarchy.channels[i].name for i in hierarchy.leaves if i != outside]


def write_group_files(out, hierarchy, description: dict, failed: list[FailedScan], report: bool,
                      model: str = "") -> tuple[list, int]:
    """The group ``volumes.tsv`` (+ column sidecar) over every scan with results in ``out`` made by
    ``model`` (a digest; '' any), and with ``report`` the ``index.html``. Returns the paths written
    and the number of scans left out as another model's."""
    import json
    from pathlib import Path

    from neoseg.core.io import write_text

    from .dataset import dataset_scans_in, finished_scans, group_volumes_json, group_volumes_tsv
    from .qc import structure_colours

    out = Path(out)
    finished, others = finished_scans(out, dataset_scans_in(out), model)
    columns = volume_columns(hierarchy)
    written = [write_text(out / "volumes.tsv", group_volumes_tsv(finished, columns), overwrite=True),
               write_text(out / "volumes.json", json.dumps(group_volumes_json(columns), indent=2) + "\n",
                          overwrite=True)]
    if report:
        page = render_report(finished, failed, columns, structure_colours(hierarchy), description)
        written.append(write_text(out / "index.html", page, overwrite=True))
    return written, others
