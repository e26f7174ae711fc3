"""Synthetic open-vocabulary detection: "find these categories" -> a JSON list of labelled boxes.

An image holds non-overlapping coloured shapes (rec.py's palette, shapes, backgrounds and
renderer), 14-32 px by default (REC's 16-40 px leaves too little room for the repeats). A
category is a colour-shape pair written "red circle". Unlike REC, a category may occur more than
once in an image, so the model has to find every instance, not just one.

The prompt lists, in shuffled order, the categories present as targets plus 1-2 categories that
are nowhere in the image. Answering with every listed category therefore costs false positives,
which the detection reward (mAP) punishes. Objects of categories that are not listed may also be
drawn: distractors the model must leave out.

The solution is the compact JSON list (``json.dumps`` with no spaces) of
``{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}`` for every instance of a listed category,
ordered top-to-bottom then left-to-right (by ``(y1, x1)``). Boxes follow rec.py: absolute integer
pixels with exclusive right/bottom edges. ``accu_reward_method`` is ``"map"``.

Splits (mirroring rec.py):
- ``in``: targets, distractors and absent categories are TRAIN_PAIRS; plain colour-ramp background;
  ``min_objects..max_objects`` objects.
- ``ood``: target categories are HELD_OUT pairs (absent ones too while any held-out pair is left),
  distractors any pair, two more objects, noise background.

Determinism: sample ``i`` draws only from ``np.random.default_rng([seed, split_code, i])``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from .rec import ALL_PAIRS, HELD_OUT, TRAIN_PAIRS, Shape, background, check_split, output_dir, place_one, render, sample_rng, write_jsonl

PROMPT = (
    "<image>Detect every object of these categories: {categories}. "
    'Answer with a JSON list of {{"bbox_2d": [x1, y1, x2, y2], "label": category}}.'
)
DUPLICATE_PROB = 0.3
"""Chance that an extra object (beyond one per target category) repeats a target category."""


def label(pair: tuple[str, str]) -> str:
    """("red", "circle") -> "red circle"."""
    return f"{pair[0]} {pair[1]}"


def place(
    rng: np.random.Generator,
    pairs: list[tuple[str, str]],
    image_size: int = 112,
    min_size: int = 16,
    max_size: int = 40,
    margin: int = 2,
    attempts: int = 200,
) -> list[Shape]:
    """Place one shape per entry of `pairs` (repeats allowed), in order, without overlap.

    rec.scene keeps pairs unique; detection and counting need repeats, so this variant places
    a given list. An entry that finds no free spot in `attempts` tries is dropped, so callers
    put the objects that matter first (the first always fits: the image is still empty).
    """
    objects: list[Shape] = []
    for colour, shape in pairs:
        placed = place_one(rng, colour, shape, objects, image_size, min_size, max_size, margin, attempts)
        if placed is not None:
            objects.append(placed)
    return objects


def _pick(rng: np.random.Generator, pool: list, k: int) -> list:
    """`k` distinct elements of `pool` in random order (fewer if the pool is smaller)."""
    idx = rng.permutation(len(pool))[:k]
    return [pool[int(j)] for j in idx]


def det_scene(
    rng: np.random.Generator,
    n_objects: int,
    target_pool: tuple[tuple[str, str], ...],
    distractor_pool: tuple[tuple[str, str], ...],
    absent_pool: tuple[tuple[str, str], ...],
    n_absent: int,
    max_targets: int,
    **place_kwargs,
) -> tuple[list[Shape], list[tuple[str, str]]]:
    """(drawn objects, queried categories in prompt order) for one image.

    1..max_targets target categories get one object each; every further object repeats a target
    (probability DUPLICATE_PROB) or is a distractor of a category that is never queried. Absent
    categories come from `absent_pool` minus everything drawn (ALL_PAIRS when that runs dry).
    """
    n_targets = int(rng.integers(1, min(max_targets, n_objects) + 1))
    targets = _pick(rng, list(target_pool), n_targets)
    free = [p for p in distractor_pool if p not in targets]
    extra: list[tuple[str, str]] = []
    for _ in range(n_objects - len(targets)):
        if rng.random() < DUPLICATE_PROB or not free:
            extra.append(targets[int(rng.integers(len(targets)))])
        else:
            extra.append(free[int(rng.integers(len(free)))])
    objects = place(rng, targets + extra, **place_kwargs)
    drawn = {(o.colour, o.shape) for o in objects}
    present = [t for t in targets if t in drawn]  # targets are placed first, so target 0 always is
    absent = [p for p in absent_pool if p not in drawn] or [p for p in ALL_PAIRS if p not in drawn]
    queried = present + _pick(rng, absent, n_absent)
    return objects, _pick(rng, queried, len(queried))  # shuffled: position says nothing


def solution(objects: list[Shape], queried: list[tuple[str, str]]) -> str:
    """Compact JSON list of the queried objects, top-to-bottom then left-to-right."""
    hits = sorted((o for o in objects if (o.colour, o.shape) in queried), key=lambda o: (o.box[1], o.box[0]))
    dets = [{"bbox_2d": list(o.box), "label": label((o.colour, o.shape))} for o in hits]
    return json.dumps(dets, separators=(",", ":"))


def generate_det(
    out_dir: Path,
    n: int,
    split: Literal["in", "ood"] = "in",
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 4,
    n_absent: tuple[int, int] = (1, 2),
    max_targets: int = 3,
    image_size: int = 112,
    name: str | None = None,
    min_size: int = 14,
    max_size: int = 32,
) -> Path:
    """Write `n` detection samples to `out_dir/images/*.png` and `out_dir/{name or split}.jsonl`.

    `n_absent` is the inclusive range of absent categories listed per prompt; `max_targets`
    caps the present categories listed. Ids are ``det-{name or split}-{i:06d}`` (1-based).
    Returns the JSONL path.
    """
    check_split(split)
    if n < 1 or not 1 <= min_objects <= max_objects:
        raise ValueError(f"need n >= 1 and 1 <= min_objects <= max_objects, got {n=}, {min_objects=}, {max_objects=}")
    if not 1 <= n_absent[0] <= n_absent[1] or max_targets < 1:
        raise ValueError(f"need 1 <= n_absent[0] <= n_absent[1] and max_targets >= 1, got {n_absent=}, {max_targets=}")
    if not 1 <= min_size <= max_size <= image_size:
        raise ValueError(f"need 1 <= min_size <= max_size <= image_size, got {min_size=}, {max_size=}, {image_size=}")
    tag = name or split
    out_dir = output_dir(out_dir)
    if split == "in":
        pools, lo, hi, bg_kind = (TRAIN_PAIRS, TRAIN_PAIRS, TRAIN_PAIRS), min_objects, max_objects, "plain"
    else:
        pools, lo, hi, bg_kind = (HELD_OUT, ALL_PAIRS, HELD_OUT), min_objects + 2, max_objects + 2, "noise"
    rows = []
    for i in range(1, n + 1):
        rng = sample_rng(seed, split, i)
        n_obj = int(rng.integers(lo, hi + 1))
        k_absent = int(rng.integers(n_absent[0], n_absent[1] + 1))
        objects, queried = det_scene(
            rng, n_obj, *pools, k_absent, max_targets, image_size=image_size, min_size=min_size, max_size=max_size
        )
        img = render(objects, background(rng, image_size, bg_kind))
        sid = f"det-{tag}-{i:06d}"
        img.save(out_dir / "images" / f"{sid}.png", format="PNG")
        categories = [label(p) for p in queried]
        rows.append({
            "id": sid,
            "image": f"images/{sid}.png",
            "conversations": [
                {"from": "human", "value": PROMPT.format(categories=", ".join(categories))},
                {"from": "gpt", "value": solution(objects, queried)},
            ],
            "accu_reward_method": "map",
            "image_size": [image_size, image_size],
            "task": "det",
            "categories": categories,
            "n_objects": len(objects),
        })
    return write_jsonl(out_dir / f"{tag}.jsonl", rows)
