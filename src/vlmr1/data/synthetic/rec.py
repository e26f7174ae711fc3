"""Synthetic referring-expression comprehension (REC): "the red circle" -> its box.

An image holds coloured shapes (circle, square, triangle) that never overlap.
Every (colour, shape) pair occurs at most once per image, so the query
"the {colour} {shape}" names exactly one object. The answer is that object's
box ``[x1, y1, x2, y2]`` in absolute integer pixels with ``x2 = x1 + size``
(exclusive right/bottom edge): the drawn pixels span columns x1 .. x2 - 1.

Splits:
- ``in``: a smooth light colour ramp as background, ``min_objects..max_objects`` objects, and the
  HELD_OUT pairs appear nowhere (neither as target nor as distractor), so a
  model trained on ``in`` has never seen them.
- ``ood``: the target is always a HELD_OUT pair (distractors may be any pair),
  scenes hold two more objects (``min_objects+2 .. max_objects+2``) and the
  ramp is overlaid with blocky grey texture and pixel noise. With ``ood_shift="pairs"`` only the
  first of these changes: held-out targets with in-domain object counts on the plain ramp
  (distractors may still be any pair), which tests composition alone.

Why a ramp: Qwen2.5-VL's vision tower has no absolute position embedding, only
rotary (relative) positions, so a 3M-parameter model has almost no way to tell
*where* a patch is; trained on flat backgrounds it stayed at chance for 1,100
steps, ignoring the image. The ramp (red grows left to right, green top to
bottom) gives every patch its position in its own pixels, as real scenes give
layout cues. Ramp channels stay in [150, 250] with blue at 200 and the texture
moves them by at most 65, while every palette colour has a channel far outside
that range, so the background never equals a palette colour and colour masks stay exact.

Shapes are drawn without anti-aliasing, so every pixel of an object has
exactly its palette colour. A distractor that finds no free spot after
``attempts`` tries is dropped; ``n_objects`` in each row is the count drawn.

Determinism: sample ``i`` draws only from ``np.random.default_rng([seed,
split_code, i])``; the same arguments give the same JSONL and PNG bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
# Colour-shape pairs never seen in the `in` split; the `ood` split always targets one.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "square"),
    ("yellow", "triangle"),
    ("purple", "circle"),
)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)
PROMPT = "<image>Please provide the bounding box coordinate of the region this sentence describes: {query}."
SPLIT_CODE = {"in": 0, "ood": 1}


def check_split(split: str) -> None:
    if split not in SPLIT_CODE:
        raise ValueError(f"split must be 'in' or 'ood', got {split!r}")


def sample_rng(seed: int, split: str, i: int) -> np.random.Generator:
    """Sample ``i``'s own generator: every sample depends only on (seed, split, i)."""
    return np.random.default_rng([seed, SPLIT_CODE[split], i])


def output_dir(out_dir) -> Path:
    """``out_dir`` with its ``images/`` folder created."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


class Shape(NamedTuple):
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 with x2 = x1 + size (exclusive)


def too_close(a: tuple[int, ...], b: tuple[int, ...], margin: int) -> bool:
    """True if boxes a and b overlap once each is grown by `margin` pixels."""
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def scene(
    rng: np.random.Generator,
    n_objects: int,
    target_pairs: tuple[tuple[str, str], ...],
    distractor_pairs: tuple[tuple[str, str], ...],
    image_size: int = 112,
    min_size: int = 16,
    max_size: int = 40,
    margin: int = 2,
    attempts: int = 200,
    distinct_kinds: bool = False,
) -> list[Shape]:
    """Place `n_objects` non-overlapping shapes; element 0 is the target.

    The target pair comes from `target_pairs`, distractors from `distractor_pairs`
    minus pairs already used (pairs are unique in a scene), and with `distinct_kinds`
    also minus the target's shape, so the shape word alone names it. The target always fits
    (it is placed first, in an empty image); a distractor that finds no free spot
    within `attempts` rejection-sampling tries is dropped.
    """
    objects: list[Shape] = []
    used: set[tuple[str, str]] = set()
    for k in range(n_objects):
        pool = [p for p in (target_pairs if k == 0 else distractor_pairs) if p not in used]
        if k > 0 and distinct_kinds:
            pool = [p for p in pool if p[1] != objects[0].shape]
        if not pool:
            break
        colour, shape = pool[int(rng.integers(len(pool)))]
        placed = place_one(rng, colour, shape, objects, image_size, min_size, max_size, margin, attempts)
        if placed is not None:
            objects.append(placed)
            used.add((colour, shape))
    return objects


def place_one(
    rng: np.random.Generator,
    colour: str,
    shape: str,
    objects: list[Shape],
    image_size: int,
    min_size: int,
    max_size: int,
    margin: int,
    attempts: int,
) -> Shape | None:
    """A square-boxed shape at a random spot clear of ``objects``, or None after ``attempts`` tries."""
    for _ in range(attempts):
        size = int(rng.integers(min_size, max_size + 1))
        x1 = int(rng.integers(0, image_size - size + 1))
        y1 = int(rng.integers(0, image_size - size + 1))
        box = (x1, y1, x1 + size, y1 + size)
        if not any(too_close(box, o.box, margin) for o in objects):
            return Shape(colour, shape, box)
    return None


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object per line, "\n" endings on every platform (the files are compared bytewise)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def ramp(image_size: int) -> np.ndarray:
    """[H, W, 3] int positional colour ramp: R = 150..250 left to right, G = 150..250 top to bottom, B = 200."""
    axis = 150 + np.round(100 * np.arange(image_size) / max(1, image_size - 1)).astype(np.int64)
    out = np.empty((image_size, image_size, 3), np.int64)
    out[:, :, 0] = axis[None, :]
    out[:, :, 1] = axis[:, None]
    out[:, :, 2] = 200
    return out


def background(rng: np.random.Generator, image_size: int, kind: Literal["plain", "noise"]) -> np.ndarray:
    """[H, W, 3] uint8 background: the colour ramp, alone ("plain") or under grey texture and noise ("noise")."""
    base = ramp(image_size)
    if kind == "plain":
        return base.astype(np.uint8)
    cells = -(-image_size // 8)  # 8x8-pixel blocks of varying grey give texture, pixel noise on top
    coarse = np.kron(rng.integers(-40, 41, (cells, cells)), np.ones((8, 8), np.int64))[:image_size, :image_size]
    texture = coarse + rng.integers(-25, 26, (image_size, image_size))  # |texture| <= 65, same on all channels
    return np.clip(base + texture[:, :, None], 0, 255).astype(np.uint8)


def render(objects: list[Shape], bg: np.ndarray) -> Image.Image:
    """Draw `objects` onto background `bg` ([H, W, 3] uint8) without anti-aliasing."""
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for o in objects:
        x1, y1, x2, y2 = o.box
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)  # Pillow boxes are inclusive
        elif o.shape == "square":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
        elif o.shape == "triangle":  # apex at top centre, base along the bottom edge
            draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return img


MAX_OBJECTS = 8
"""Most shapes a generated scene may be asked for, out-of-domain's two extra included: a 112 px
image takes about 8 shapes of 16-40 px (measured: 2% of 7-shape and 8% of 8-shape scenes drop a
distractor that finds no free spot; beyond that most scenes come out short)."""


def generate_rec(
    out_dir: Path,
    n: int,
    split: Literal["in", "ood"],
    seed: int,
    min_objects: int = 1,
    max_objects: int = 4,
    image_size: int = 112,
    name: str | None = None,
    min_size: int = 16,
    max_size: int = 40,
    distinct_kinds: bool = False,
    ood_shift: Literal["all", "pairs"] = "all",
) -> Path:
    """Write `n` REC samples to `out_dir/images/*.png` and `out_dir/{name or split}.jsonl`.

    Rows follow VLM-R1's REC format; image paths are relative to `out_dir` (pass it
    as the image folder). Ids are ``rec-{name or split}-{i:06d}`` (1-based), so
    several named sets can share one `out_dir`. Returns the JSONL path.
    """
    check_split(split)
    if ood_shift not in ("all", "pairs") or (ood_shift == "pairs" and split != "ood"):
        raise ValueError(f"ood_shift must be 'all' or 'pairs', and 'pairs' needs split='ood'; got {ood_shift=}, {split=}")
    if n < 1 or not 1 <= min_objects <= max_objects:
        raise ValueError(f"need n >= 1 and 1 <= min_objects <= max_objects, got {n=}, {min_objects=}, {max_objects=}")
    if not 1 <= min_size <= max_size <= image_size:
        raise ValueError(f"need 1 <= min_size <= max_size <= image_size, got {min_size=}, {max_size=}, {image_size=}")
    tag = name or split
    out_dir = output_dir(out_dir)
    if split == "in":
        targets, distractors, lo, hi, bg_kind = TRAIN_PAIRS, TRAIN_PAIRS, min_objects, max_objects, "plain"
    elif ood_shift == "pairs":
        targets, distractors, lo, hi, bg_kind = HELD_OUT, ALL_PAIRS, min_objects, max_objects, "plain"
    else:
        targets, distractors, lo, hi, bg_kind = HELD_OUT, ALL_PAIRS, min_objects + 2, max_objects + 2, "noise"
    rows = []
    for i in range(1, n + 1):
        rng = sample_rng(seed, split, i)
        n_obj = int(rng.integers(lo, hi + 1))
        objects = scene(rng, n_obj, targets, distractors, image_size, min_size, max_size, distinct_kinds=distinct_kinds)
        img = render(objects, background(rng, image_size, bg_kind))
        sid = f"rec-{tag}-{i:06d}"
        img.save(out_dir / "images" / f"{sid}.png", format="PNG")
        target = objects[0]
        query = f"the {target.colour} {target.shape}"
        rows.append({
            "id": sid,
            "image": f"images/{sid}.png",
            "conversations": [
                {"from": "human", "value": PROMPT.format(query=query)},
                {"from": "gpt", "value": json.dumps(list(target.box))},
            ],
            "accu_reward_method": "rec",
            "image_size": [image_size, image_size],
            "task": "rec",
            "n_objects": len(objects),
        })
    return write_jsonl(out_dir / f"{tag}.jsonl", rows)
