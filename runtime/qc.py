"""The QC picture of one scan: three orthogonal planes through the brain with the structures'
outlines drawn on the T2, a colour legend and the scan's name (Pillow and numpy only).

Planes are shown in the scan's closest RAS orientation at true aspect ratio: sagittal (anterior
left), coronal and axial (both neurological: the subject's left on the picture's left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neoseg.core.hierarchy import Hierarchy

from . import geometry

PANEL = 300  # pixels along the largest extent (mm) of the field of view
MARGIN, TITLE, SWATCH = 8, 26, 12
# Colours of the built-in drawem9 structures; other hierarchies cycle through PALETTE.
NAMED = {"csf": "#4fa3ff", "cgm": "#ff4040", "wm": "#ffe600", "background": "#a0a0a0", "ventricles": "#00e5ff",
         "cerebellum": "#b36bff", "dgm": "#3ddc84", "brainstem": "#ff80ab", "hippocampi_amygdala": "#e040fb"}
# No orange: outlines are drawn on both sides of a boundary, and red beside yellow reads as orange.
PALETTE = ("#ff4040", "#ffe600", "#3ddc84", "#4fa3ff", "#b36bff", "#00e5ff", "#ff80ab", "#e040fb", "#a0a0a0",
           "#8bc34a", "#e91e63", "#795548")


def structure_colours(hierarchy: Hierarchy) -> dict[str, str]:
    """Hex colour of every leaf that is drawn (all but the outside channel), by name."""
    outside = hierarchy.outside_channel
    leaves = [i for i in hierarchy.leaves if i != outside]
    free = iter(c for c in PALETTE * 4 if c not in {NAMED.get(hierarchy.channels[i].name) for i in leaves})
    return {hierarchy.channels[i].name: NAMED.get(hierarchy.channels[i].name) or next(free) for i in leaves}


def render_qc(t2: np.ndarray, labels: np.ndarray, affine: np.ndarray, zooms, hierarchy: Hierarchy,
              title: str, subtitle: str = ""):
    """A PIL RGB image; ``t2`` and ``labels`` on the same (stored) grid."""
    from PIL import Image, ImageDraw

    ornt = geometry.canonical_ornt(affine)
    t2 = geometry.to_canonical(np.asarray(t2), ornt)  # views: only the three planes are copied
    labels = geometry.to_canonical(np.asarray(labels), ornt)
    lut, names = _leaf_lut(labels, hierarchy)
    spacing = geometry.canonical_spacing(zooms, ornt)
    colours = structure_colours(hierarchy)
    rgb = np.zeros((len(names) + 1, 3), np.uint8)  # index 0: not drawn
    for k, name in enumerate(names, 1):
        rgb[k] = _hex(colours[name])
    window = _window(t2)
    centre = _centre(lut, labels)
    scale = PANEL / max(n * s for n, s in zip(t2.shape, spacing))  # pixels per mm, the same in all panels
    panels, drawn = [], set()
    for plane in ("sagittal", "coronal", "axial"):
        panel, shown = _panel(t2, window, labels, lut, rgb, plane, centre, spacing, scale)
        panels.append(panel)
        drawn |= shown

    font, small = _font(15), _font(12)
    present = [n for k, n in enumerate(names, 1) if k in drawn]  # the legend names what the planes show
    legend_rows = _legend_layout(present, small, sum(p.width for p in panels) + 2 * MARGIN)
    width = sum(p.width for p in panels) + 4 * MARGIN
    height = TITLE + max(p.height for p in panels) + 2 * MARGIN + 20 * len(legend_rows) + MARGIN
    image = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 5), title, fill="white", font=font)
    if subtitle:
        w = draw.textlength(subtitle, font=small)
        draw.text((width - MARGIN - w, 7), subtitle, fill="#cccccc", font=small)
    x = MARGIN
    for plane, panel in zip(("sagittal", "coronal", "axial"), panels):
        image.paste(panel, (x, TITLE + MARGIN))
        draw.text((x + 3, TITLE + MARGIN + 2), plane, fill="#dddddd", font=small)
        if plane != "sagittal":  # neurological: subject's left on the left
            draw.text((x + 3, TITLE + MARGIN + panel.height // 2), "L", fill="#dddddd", font=small)
            draw.text((x + panel.width - 10, TITLE + MARGIN + panel.height // 2), "R", fill="#dddddd", font=small)
        else:
            draw.text((x + 3, TITLE + MARGIN + panel.height // 2), "A", fill="#dddddd", font=small)
        x += panel.width + MARGIN
    y = TITLE + max(p.height for p in panels) + 2 * MARGIN
    for row in legend_rows:
        x = MARGIN
        for name, w in row:
            draw.rectangle((x, y + 2, x + SWATCH, y + 2 + SWATCH), fill=colours[name])
            draw.text((x + SWATCH + 5, y), name, fill="white", font=small)
            x += w
        y += 20
    return image


def save_qc(image, path: str | Path) -> None:
    image.save(str(path), format="PNG")


def _leaf_lut(labels: np.ndarray, hierarchy: Hierarchy) -> tuple[np.ndarray, list[str]]:
    """Label value -> uint8 index (0: outside or unknown; k: the k-th drawn leaf), and the leaves' names."""
    outside = hierarchy.outside_channel
    leaves = [i for i in hierarchy.leaves if i != outside]
    lut = np.zeros(max(max(hierarchy.label_values), int(labels.max(initial=0))) + 1, np.uint8)
    for k, i in enumerate(leaves, 1):
        lut[list(hierarchy.channels[i].values)] = k
    return lut, [hierarchy.channels[i].name for i in leaves]


def _index(lut: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return lut[np.clip(labels, 0, len(lut) - 1).astype(np.intp, copy=False)]


def _window(t2: np.ndarray) -> tuple[float, float]:
    """The grey window: 0.5-99.5 percentiles of the non-zero voxels."""
    sample = np.asarray(t2[::2, ::2, ::2], np.float32)  # an eighth of the voxels gives the same percentiles
    sample = sample[np.isfinite(sample)]
    values = sample[sample > 0] if (sample > 0).any() else sample
    lo, hi = np.percentile(values, (0.5, 99.5)) if values.size else (0.0, 1.0)
    return float(lo), max(float(hi - lo), 1e-6)


def _grey(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    scaled = (np.nan_to_num(np.asarray(plane, np.float32)) - window[0]) / window[1]
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _centre(lut: np.ndarray, labels: np.ndarray) -> tuple[int, ...]:
    """Centre of mass of the drawn structures, on every second voxel (the middle of the volume when
    there are none)."""
    inside = _index(lut, labels[::2, ::2, ::2]) > 0
    if not inside.any():
        return tuple(n // 2 for n in labels.shape)
    centre = []
    for axis in range(3):
        profile = inside.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        mean = 2 * float(np.dot(profile, np.arange(len(profile))) / profile.sum())
        centre.append(min(labels.shape[axis] - 1, int(round(mean))))
    return tuple(centre)


def _panel(t2, window, labels, lut, rgb, plane: str, centre, spacing, scale):
    """One plane as a PIL image (rows top to bottom) and the leaf indices it shows. Labels are
    upsampled before outlining, so the outlines are one display pixel wide."""
    from PIL import Image

    x, y, z = centre
    sx, sy, sz = spacing
    if plane == "sagittal":  # anterior left, superior up
        g, k, (col_mm, row_mm) = t2[x, ::-1, ::-1].T, labels[x, ::-1, ::-1].T, (sy, sz)
    elif plane == "coronal":  # subject's left on the left, superior up
        g, k, (col_mm, row_mm) = t2[:, y, ::-1].T, labels[:, y, ::-1].T, (sx, sz)
    else:  # axial: anterior up
        g, k, (col_mm, row_mm) = t2[:, ::-1, z].T, labels[:, ::-1, z].T, (sx, sy)
    g, k = _grey(g, window), _index(lut, k)
    size = (max(1, round(g.shape[1] * col_mm * scale)), max(1, round(g.shape[0] * row_mm * scale)))
    g = np.asarray(Image.fromarray(np.ascontiguousarray(g)).resize(size, Image.BILINEAR))
    k = _upsample_labels(k, size)
    edge = np.zeros(k.shape, bool)
    edge[:, :-1] |= k[:, :-1] != k[:, 1:]
    edge[:, 1:] |= k[:, 1:] != k[:, :-1]
    edge[:-1] |= k[:-1] != k[1:]
    edge[1:] |= k[1:] != k[:-1]
    edge &= k > 0
    out = np.repeat(g[..., None], 3, axis=2)
    out[edge] = rgb[k[edge]]
    return Image.fromarray(out, "RGB"), set(np.unique(k[edge]).tolist())


def _upsample_labels(k: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels to ``size`` (width, height): each label's indicator interpolated bilinearly, the
    largest wins, so outlines follow smooth contours rather than voxel steps."""
    from PIL import Image

    values = np.unique(k)
    if len(values) == 1:
        return np.full(size[::-1], values[0], k.dtype)
    up = [np.asarray(Image.fromarray((k == v).astype(np.float32), "F").resize(size, Image.BILINEAR))
          for v in values]
    return values[np.argmax(np.stack(up), axis=0)].astype(k.dtype)


def _legend_layout(names: list[str], font, width: int) -> list[list[tuple[str, int]]]:
    rows: list[list[tuple[str, int]]] = [[]]
    used = 0
    for name in names:
        w = SWATCH + 5 + int(font.getlength(name)) + 16
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0
        rows[-1].append((name, w))
        used += w
    return rows if rows[0] else []


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with Pillow >= 10.1 and FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
