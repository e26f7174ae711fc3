"""Synthetic GUI visual regression: a before/after pair of app screenshots -> the defect, if any.

A screenshot is a 112x112 window: a title bar and 3-6 widgets in rows of one or two, as forms
are: buttons (filled rounded rectangles, centred text), text fields (outlined, left-aligned text)
and labels (bare text). Text uses PIL's built-in font (``ImageFont.load_default()``, 10 px in
Pillow >= 10.1) without anti-aliasing, so glyphs stay crisp at this size.

The after screenshot is rendered from the same widgets, unchanged ("none", about a third of the
samples: identical bytes) or with exactly one defect, whose box is
- ``missing_widget``: a widget removed -> where it was;
- ``shifted_widget``: a widget moved along one axis onto free space -> its new place;
- ``color_change``: a button's fill replaced by another theme colour -> the button;
- ``text_overlap``: a field's text pushed across its border, or a label's onto the widget beside
  it -> the widget and the displaced text;
- ``truncated_text``: a button's or field's text replaced by a longer one its box cuts (buttons
  centre text, so both ends are cut; fields cut on the right) -> the widget.
The solution is compact JSON, ``{"defect":"shifted_widget","bbox_2d":[x1,y1,x2,y2]}`` or
``{"defect":"none"}``, boxes as in rec.py (integer pixels, exclusive right/bottom edge). Each
row's ``changed_box`` bounds every pixel that may differ between the screenshots (the defect box,
except for a shifted widget, where it also covers the old place).

Splits: ``in`` uses light themes, 3-6 widgets and in-domain defect sizes; ``ood`` a dark theme
with other button colours, 6-8 widgets, and larger shifts, overlaps and truncations (SPLITS).
A defect the layout cannot take (no free space to shift into, no eligible widget, a cut that
would not show) falls back to another type, in random order; rows always state what was drawn.

Determinism: sample ``i`` draws only from ``np.random.default_rng([seed, split_code, i])``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .rec import check_split, output_dir, sample_rng, too_close, write_jsonl

DEFECTS = ("none", "missing_widget", "shifted_widget", "color_change", "text_overlap", "truncated_text")
PROMPT = (
    "Before: <image> After: <image> Is there a visual defect in the after screenshot? Answer with a JSON object "
    f'{{"defect": TYPE, "bbox_2d": [x1, y1, x2, y2]}} where TYPE is one of {", ".join(DEFECTS)}, '
    "and omit bbox_2d when TYPE is none."
)
FONT = ImageFont.load_default()
TITLE_H, ROW_H, ROW_GAP, MAX_ROWS = 12, 15, 3, 5
Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

TITLES = ("Editor", "Mail", "Files", "Login", "Setup", "Notes")
HEADINGS = ("Settings", "Profile", "Options", "Account", "Network")
LABELS = ("Name:", "Email:", "City:", "User:", "Code:", "Port:")
BUTTONS = ("OK", "Save", "Open", "Send", "Next", "Back", "Undo", "Help", "Apply", "Close", "Cancel")
FIELDS = ("Alice", "bob", "Paris", "8080", "admin", "hello", "Search")
SUFFIXES = ("changes", "settings", "profile", "document", "everything", "options")
ROWS = (("button",), ("field",), ("label",), ("label", "field"), ("button", "button"), ("field", "button"))


class Theme(NamedTuple):  # title and button text are always white
    bg: RGB
    title: RGB  # title bar
    text: RGB  # label and field text
    button_fills: tuple[RGB, ...]
    field_bg: RGB
    field_border: RGB


_BLUE, _GREEN = (52, 120, 220), (46, 160, 90)
_DARK_FILLS = ((150, 80, 200), (240, 150, 40), (30, 170, 170))
THEMES = {  # ood: a dark theme whose button colours the in split never uses
    "in": (
        Theme((240,) * 3, (60, 90, 160), (30,) * 3, (_BLUE, _GREEN, (210, 70, 60)), (255,) * 3, (130,) * 3),
        Theme((246, 243, 236), (70, 70, 80), (30,) * 3, (_BLUE, (120,) * 3, _GREEN), (255,) * 3, (150, 140, 130)),
    ),
    "ood": (Theme((38, 40, 46), (20,) * 3, (225,) * 3, _DARK_FILLS, (58, 60, 68), (140,) * 3),),
}


class GuiSplit(NamedTuple):
    widgets: tuple[int, int]  # inclusive range of widget count
    shift: tuple[int, int]  # shifted_widget distance, px
    overlap: tuple[int, int]  # text_overlap: how far the text is pushed, px
    hidden: tuple[int, int]  # truncated_text: text width beyond the box interior, px


SPLITS = {"in": GuiSplit((3, 6), (6, 10), (6, 8), (6, 14)), "ood": GuiSplit((6, 8), (12, 18), (9, 12), (16, 30))}


class Widget(NamedTuple):
    kind: str  # "button" | "field" | "label"
    box: Box  # x1, y1, x2, y2, exclusive right/bottom; for labels the ink box of the text
    text: str
    fill: RGB | None = None  # button fill
    text_dx: int = 0  # text_overlap: text pushed away from its place
    text_dy: int = 0


@lru_cache(maxsize=None)
def _ink(text: str) -> tuple[int, int, int]:
    """(left, top, width) of `text`'s drawn pixels relative to its draw origin, measured: without
    anti-aliasing, glyphs come out wider than ``getlength`` says ("Close": 29 px drawn, 25 by metrics)."""
    box = _text_mask(256, (8, 8), text, None).getbbox()
    return box[0] - 8, box[1] - 8, box[2] - box[0]


def _text_origin(w: Widget) -> tuple[int, int]:
    """Where the text is drawn: buttons centre it, fields indent it 3 px, labels fill their (ink) box."""
    x1, y1, x2, _ = w.box
    if w.kind == "label":
        left, top, _ = _ink(w.text)
        return x1 - left + w.text_dx, y1 - top + w.text_dy
    left, _, width = _ink(w.text)
    x = (x1 + x2 - width) // 2 - left if w.kind == "button" else x1 + 3 - left
    return x + w.text_dx, y1 + 1 + w.text_dy  # the font's ink spans rows 2..12 below the origin


def _text_mask(size: int, xy: tuple[int, int], text: str, clip: Box | None) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    draw.fontmode = "1"  # no anti-aliasing: crisp glyphs at 10 px
    draw.text(xy, text, font=FONT, fill=255)
    if clip is not None:  # keep only the box interior: text that does not fit is cut
        inner, mask = mask.crop(clip), Image.new("L", (size, size), 0)
        mask.paste(inner, clip[:2])
    return mask


def _clip(w: Widget) -> Box | None:
    """The interior a widget's text is cut to; none for labels or for text pushed out (text_overlap)."""
    if w.kind == "label" or w.text_dx or w.text_dy:
        return None
    x1, y1, x2, y2 = w.box
    return x1 + 1, y1 + 1, x2 - 1, y2 - 1


def text_mask(w: Widget, size: int) -> Image.Image:
    """The pixels of `w`'s text as drawn (mode "L", 255 = ink); ``.getbbox()`` is the ink's box."""
    return _text_mask(size, _text_origin(w), w.text, _clip(w))


def render_gui(widgets: list[Widget], theme: Theme, title: str, size: int = 112) -> Image.Image:
    """One screenshot: window background, title bar with window buttons, widget bodies, then their text."""
    img = Image.new("RGB", (size, size), theme.bg)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"
    draw.rectangle([0, 0, size - 1, TITLE_H - 1], fill=theme.title)
    draw.text((4, -1), title, font=FONT, fill=(255, 255, 255))
    for x, dot in zip((size - 30, size - 21, size - 12), ((230, 80, 70), (235, 190, 60), (80, 190, 90))):
        draw.ellipse([x, 3, x + 5, 8], fill=dot)  # window buttons
    for w in widgets:
        x1, y1, x2, y2 = w.box
        if w.kind == "button":
            draw.rounded_rectangle([x1, y1, x2 - 1, y2 - 1], radius=3, fill=w.fill)
        elif w.kind == "field":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=theme.field_bg, outline=theme.field_border)
    for w in widgets:  # text after every body, so text pushed onto a neighbour shows on top of it
        colour = (255, 255, 255) if w.kind == "button" else theme.text
        img.paste(colour, (0, 0, size, size), text_mask(w, size))
    return img


def layout(rng: np.random.Generator, n_widgets: int, theme: Theme, size: int = 112) -> list[Widget]:
    """`n_widgets` widgets in rows of one or two, spread below the title bar; always >= 1 button."""
    n_rows = int(rng.integers(-(-n_widgets // 2), min(n_widgets, MAX_ROWS) + 1))
    doubles = set(rng.permutation(n_rows)[: n_widgets - n_rows].tolist())
    kinds = [ROWS[int(rng.integers(3, 6))] if r in doubles else ROWS[int(rng.integers(3))] for r in range(n_rows)]
    if not any("button" in k for k in kinds):  # every screen has a button for color_change to recolour
        kinds[-1] = ("field", "button") if len(kinds[-1]) == 2 else ("button",)
    step = ROW_H + ROW_GAP
    spare = size - TITLE_H - 8 - n_rows * step + ROW_GAP  # vertical space left, shared out at random
    cuts = np.sort(rng.integers(0, spare + 1, n_rows))
    widgets = []
    for r, row in enumerate(kinds):
        y = TITLE_H + 4 + int(cuts[r]) + r * step
        pools = [{"button": BUTTONS, "field": FIELDS, "label": LABELS if len(row) > 1 else HEADINGS}[k] for k in row]
        texts = [t[int(rng.integers(len(t)))] for t in pools]
        widths = [_ink(t)[2] + {"button": 10, "field": 8, "label": 0}[k] for k, t in zip(row, texts)]  # least that fits
        gap = int(rng.integers(4, 9))
        slack = max(0, size - 8 - sum(widths) - gap * (len(row) - 1))  # free width in the row
        x = 4 + int(rng.integers(0, min(8, slack) + 1))
        room = slack - (x - 4)  # a field takes a random width of 40-60 px where the row has room for it
        widths = [min(max(w, int(rng.integers(40, 61))), w + room) if k == "field" else w for k, w in zip(row, widths)]
        for kind, text, width in zip(row, texts, widths):
            if kind == "label":  # the label's box is the ink of its text, drawn level with field text
                w = Widget("label", _text_mask(size, (x, y + 1), text, None).getbbox(), text)
            else:
                fill = theme.button_fills[int(rng.integers(len(theme.button_fills)))] if kind == "button" else None
                w = Widget(kind, (x, y, x + width, y + ROW_H), text, fill)
            widgets.append(w)
            x = w.box[2] + gap
    return widgets


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _inside(b: Box, size: int) -> bool:  # within the window, below the title bar
    return b[0] >= 2 and b[1] >= TITLE_H + 2 and b[2] <= size - 2 and b[3] <= size - 2


def apply_defect(rng, widgets: list[Widget], defect: str, cfg: GuiSplit, theme: Theme, size: int):
    """(after widgets, defect box, changed box) or None when `defect` cannot be applied to this layout."""
    shift, push, hidden = (int(rng.integers(lo, hi + 1)) for lo, hi in cfg[1:])  # this defect's sizes, px
    for i in rng.permutation(len(widgets)).tolist():
        w, rest, after = widgets[i], widgets[:i] + widgets[i + 1 :], None
        if defect == "missing_widget":
            return rest, w.box, w.box
        for _ in range(20 if defect == "shifted_widget" else 0):  # onto free space only: no overlap
            m = shift * int(rng.choice([-1, 1]))
            dx, dy = (m, 0) if rng.integers(2) else (0, m)
            box = (w.box[0] + dx, w.box[1] + dy, w.box[2] + dx, w.box[3] + dy)
            if _inside(box, size) and not any(too_close(box, o.box, 2) for o in rest):
                return widgets[:i] + [w._replace(box=box)] + widgets[i + 1 :], box, _union(w.box, box)
        if defect == "color_change" and w.kind == "button":
            fills = [f for f in theme.button_fills if f != w.fill]
            after = w._replace(fill=fills[int(rng.integers(len(fills)))])
        elif defect == "text_overlap" and w.kind == "field":  # pushed up or down across the border
            after = w._replace(text_dy=push * int(rng.choice([-1, 1])))
        elif defect == "text_overlap" and w.kind == "label" and widgets[i + 1 :] and widgets[i + 1].box[1] < w.box[3]:
            after = w._replace(text_dx=widgets[i + 1].box[0] - w.box[2] + push)  # onto the widget beside it
        elif defect == "truncated_text" and w.kind in ("button", "field"):
            # Wider than the interior by `hidden` px (+2 for fields, whose text is indented 2 px more).
            text, want = w.text, w.box[2] - w.box[0] - 2 + hidden + (2 if w.kind == "field" else 0)
            while _ink(text)[2] < want:
                text += " " + SUFFIXES[int(rng.integers(len(SUFFIXES)))]
            after = w._replace(text=text)
            if (np.asarray(text_mask(w, size)) != np.asarray(text_mask(after, size))).sum() < 8:
                after = None  # the cut falls in the padding: nothing would show, so try another widget
        if after is None:
            continue
        box = _union(w.box, text_mask(after, size).getbbox()) if defect == "text_overlap" else w.box
        if _inside(box, size):  # pushed text must stay in the window
            return widgets[:i] + [after] + widgets[i + 1 :], box, box
    return None


def generate_gui(
    out_dir: Path,
    n: int,
    split: Literal["in", "ood"] = "in",
    seed: int = 0,
    image_size: int = 112,
    name: str | None = None,
    none_fraction: float = 1 / 3,
) -> Path:
    """Write `n` before/after pairs to `out_dir/images/` and `out_dir/{name or split}.jsonl`.

    Ids are ``gui-{name or split}-{i:06d}`` (1-based); images ``{id}_before.png`` and
    ``{id}_after.png``. Returns the JSONL path.
    """
    check_split(split)
    if n < 1 or not 0.0 <= none_fraction <= 1.0 or image_size < 100:  # 5 rows of widgets need >= 100 px
        raise ValueError(f"need n >= 1, 0 <= none_fraction <= 1, image_size >= 100 {n=} {none_fraction=} {image_size=}")
    cfg, tag, out_dir = SPLITS[split], name or split, output_dir(out_dir)
    rows = []
    for i in range(1, n + 1):
        rng = sample_rng(seed, split, i)
        theme = THEMES[split][int(rng.integers(len(THEMES[split])))]
        title = TITLES[int(rng.integers(len(TITLES)))]
        before = layout(rng, int(rng.integers(cfg.widgets[0], cfg.widgets[1] + 1)), theme, image_size)
        defect = "none" if rng.random() < none_fraction else DEFECTS[1 + int(rng.integers(len(DEFECTS) - 1))]
        after, box, changed = before, None, None
        if defect != "none":  # fall back to the other types in random order; color_change always applies
            others = [d for d in DEFECTS[1:] if d != defect]
            for d in [defect] + [others[int(j)] for j in rng.permutation(len(others))]:
                applied = apply_defect(rng, before, d, cfg, theme, image_size)
                if applied is not None:
                    defect, (after, box, changed) = d, applied
                    break
        sid = f"gui-{tag}-{i:06d}"
        paths = [f"images/{sid}_before.png", f"images/{sid}_after.png"]
        for widgets, p in zip((before, after), paths):
            render_gui(widgets, theme, title, image_size).save(out_dir / p, format="PNG")
        answer = {"defect": defect} if box is None else {"defect": defect, "bbox_2d": list(box)}
        rows.append({
            "id": sid,
            "image": paths,
            "conversations": [
                {"from": "human", "value": PROMPT},
                {"from": "gpt", "value": json.dumps(answer, separators=(",", ":"))},
            ],
            "accu_reward_method": "gui_defect",
            "image_size": [image_size, image_size],
            "task": "gui",
            "defect": defect,
            "n_widgets": len(before),
            "changed_box": None if changed is None else [int(v) for v in changed],
        })
    return write_jsonl(out_dir / f"{tag}.jsonl", rows)
