"""Pictures for ``vlmr1 report``: metric curves (matplotlib) and gallery images with boxes (PIL).

Figures are built with ``matplotlib.figure.Figure`` directly, never pyplot: saving a PNG then
uses the Agg canvas and nothing touches the process-wide backend or keeps figures alive.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

Series = list[tuple[int, float]]  # (step, value), in step order
BoxSpec = tuple[Sequence[float], tuple[int, int, int], str | None]  # box [x1, y1, x2, y2], colour, label

PRED = (220, 30, 30)  # predicted boxes: red
TRUE = (20, 150, 50)  # true boxes: green
SECONDARY_METRICS = {"parsed", "format_rate"}  # drawn thin and dashed: sanity rates, not the task score
GALLERY_SIDE = 336  # target long side of a gallery image in pixels (3x the 112 px synthetic images)


# ---------------------------------------------------------------- curves


def smoothing_window(n: int) -> int:
    """A light moving-average window: a tenth of the points, 1 (no smoothing) under 20 points."""
    return max(1, min(25, n // 10))


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start), so it never looks ahead."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _grid(n: int, ncols: int, panel_w: float = 4.2, panel_h: float = 2.8) -> tuple[Figure, list]:
    """A figure of ``n`` panels, ``ncols`` wide; steps are whole numbers on every x axis."""
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(panel_w * cols, panel_h * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    for ax in axes[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes[:n]


def plot_panels(panels: list[tuple[str, Series]], path: Path, ncols: int = 3) -> Path:
    """One small panel per (title, series): the raw line, and its moving average on top."""
    fig, axes = _grid(len(panels), ncols)
    for ax, (title, points) in zip(axes, panels):
        steps, values = [s for s, _ in points], [v for _, v in points]
        window = smoothing_window(len(values))
        raw_alpha = 0.35 if window > 1 else 1.0
        ax.plot(steps, values, color="tab:blue", alpha=raw_alpha, lw=1, marker="o" if len(values) < 20 else None, ms=3)
        if window > 1:
            ax.plot(steps, moving_average(values, window), color="tab:blue", lw=2, label=f"mean of {window}")
            ax.legend(fontsize=8, loc="best")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def plot_eval(splits: dict[str, dict[str, Series]], path: Path, ncols: int = 2) -> Path:
    """One panel per held-out split, one line per metric against the training step.

    Rates that sit near 1 (parsed, format_rate) go on a right-hand 0..1 axis, so the left axis
    scales to the task metrics and a change of a few points in accuracy stays visible.
    """
    fig, axes = _grid(len(splits), ncols, panel_w=5.2, panel_h=3.2)
    for ax, (split, metrics) in zip(axes, splits.items()):
        minor_ax = None
        for name, points in metrics.items():
            minor = name.rsplit("/", 1)[-1] in SECONDARY_METRICS
            if minor and minor_ax is None:
                minor_ax = ax.twinx()
                minor_ax.set_ylim(0, 1.05)
                minor_ax.set_ylabel("rate (dashed)", fontsize=8)
                minor_ax.tick_params(labelsize=8)
            (minor_ax if minor else ax).plot(
                [s for s, _ in points],
                [v for _, v in points],
                marker="o",
                ms=3 if minor else 4,
                lw=1 if minor else 2,
                ls="--" if minor else "-",
                alpha=0.6 if minor else 1.0,
                color=None if not minor else ("tab:gray" if "parsed" in name else "tab:red"),
                label=name,
            )
        ax.set_title(f"split: {split}", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if minor_ax is not None:
            more = minor_ax.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, frameon=False)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- gallery images


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def draw_box(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    color,
    width: int = 1,
    scale: float = 1.0,
    label: str | None = None,
    halo: bool = False,
    label_below: bool = False,
) -> None:
    """Outline ``box`` (original-image pixels) on an image shown ``scale`` times larger.

    The outline grows inwards from the box edge (PIL's convention). ``halo`` adds a dark line just
    outside it, so a red box still shows on a red shape. The label sits in a filled tag of the
    box's colour just above the box (inside it when the box touches the top edge), or just below it
    with ``label_below``, so a prediction's tag does not cover the tag of the truth it overlaps.
    """
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if halo:
        draw.rectangle([x1 - 1, y1 - 1, x2 + 1, y2 + 1], outline=(30, 30, 30), width=1)
    draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
    if label:
        font = _font()
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        w, h = right - left + 4, bottom - top + 2
        limit = draw.im.size[1]
        if label_below:
            ty = y2 + 1 if y2 + 1 + h <= limit else y2 - width - h
        else:
            ty = y1 - h if y1 - h >= 0 else y1 + width
        draw.rectangle([x1, ty, x1 + w, ty + h], fill=color)
        draw.text((x1 + 2 - left, ty + 1 - top), label, fill=(255, 255, 255), font=font)


def row_boxes(row: dict) -> list[BoxSpec]:
    """The boxes an evaluation row carries: truth first, prediction drawn over it.

    REC: ``true_box``/``pred_box``; detection: every labelled box of ``truth``/``pred``; GUI: the
    true and predicted defect regions, tagged with their defect types; answer rows: none.
    """
    kind = row.get("kind")
    specs: list[BoxSpec] = []
    if kind == "rec":
        if row.get("true_box"):
            specs.append((row["true_box"], TRUE, None))
        if row.get("pred_box"):
            specs.append((row["pred_box"], PRED, None))
    elif kind == "detection":
        specs += [(box, TRUE, label) for box, label in row.get("truth") or []]
        specs += [(box, PRED, label) for box, label in row.get("pred") or []]
    elif kind == "gui":
        if row.get("true_box"):
            specs.append((row["true_box"], TRUE, row.get("true_defect")))
        if row.get("pred_box"):
            specs.append((row["pred_box"], PRED, row.get("pred_defect")))
    return [s for s in specs if isinstance(s[0], (list, tuple)) and len(s[0]) == 4]


def display_scale(size: tuple[int, int]) -> float:
    """Small images grow by a whole factor (crisp pixels, visible boxes); large ones shrink to fit."""
    long = max(size)
    factor = GALLERY_SIDE / long
    return float(max(1, int(factor))) if factor >= 1 else factor


def _placeholder(text: str) -> Image.Image:
    im = Image.new("RGB", (GALLERY_SIDE, GALLERY_SIDE // 3), (235, 235, 235))
    ImageDraw.Draw(im).text((8, 8), text, fill=(90, 90, 90), font=_font())
    return im


def render_sample(paths: list[Path | None], boxes: list[BoxSpec]) -> Image.Image | None:
    """The sample's images side by side, each enlarged or shrunk and carrying every box.

    Every image gets the same boxes: for a GUI pair the region is shown on the before and the
    after screenshot. A missing file becomes a grey tile that says so. None when there are no images.
    """
    tiles = []
    for path in paths:
        if path is None:
            tiles.append(_placeholder("image not found"))
            continue
        with Image.open(path) as src:
            im = src.convert("RGB")
        scale = display_scale(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
        draw = ImageDraw.Draw(im)
        for box, color, label in boxes:
            # True boxes are twice as thick as predicted ones, which are drawn over them: a perfect
            # prediction leaves a green band inside the red line instead of hiding the truth.
            truth = color == TRUE
            draw_box(draw, box, color, width=4 if truth else 2, scale=scale, label=label, halo=True, label_below=not truth)
        tiles.append(im)
    if not tiles:
        return None
    gap = 8
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)), (255, 255, 255))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width + gap
    return canvas
