"""Synthetic counting: "How many red objects are there?" -> "3".

Three question kinds, chosen uniformly:
- ``colour``: "How many {colour} objects are there?" (any shape of that colour counts);
- ``shape``: "How many {shape}s are there?" (any colour);
- ``difference``: "How many more {shape_a}s than {shape_b}s are there?", built with
  count(a) = count(b) + answer, so the answer is never negative.

The answer is drawn first, uniformly over the split's range, and the scene is built around it,
so a constant guess is right only about 1 / (range size) of the time. Objects that do not match
the question are added as distractors (other colours, or the third shape), at least one when
nothing is counted, so no image is empty. The solution is the integer as a string;
``accu_reward_method`` is ``"default"`` (math-verify).

Objects use rec.py's palette, renderer and backgrounds (exact palette colours, no
anti-aliasing, objects >= 2 px apart), so every count can be recomputed from the pixels.

Splits:
- ``in``: answers 0..5, TRAIN_PAIRS only, objects 12-22 px, plain colour-ramp background;
- ``ood``: answers 3..8 (6..8 never occur in ``in``), any pair including HELD_OUT ones,
  more distractors, smaller objects (10-18 px) and the noise background.

A scene whose counted objects do not all fit is redrawn (from the same generator, so still
deterministic); after ``_MAX_TRIES`` the answer is whatever was drawn, and the row says so
truthfully because the answer is always recomputed from the placed objects.

Determinism: sample ``i`` draws only from ``np.random.default_rng([seed, split_code, i])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from .det import place
from .rec import ALL_PAIRS, COLOURS, SHAPES, TRAIN_PAIRS, Shape, background, check_split, output_dir, render, sample_rng, write_jsonl

QUESTIONS = {
    "colour": "<image>How many {a} objects are there?",
    "shape": "<image>How many {a}s are there?",
    "difference": "<image>How many more {a}s than {b}s are there?",
}
_MAX_TRIES = 20


class CountSplit(NamedTuple):
    answers: tuple[int, int]  # inclusive answer range
    distractors: tuple[int, int]  # inclusive range of non-counted objects
    pairs: tuple[tuple[str, str], ...]  # colour-shape pairs that may be drawn
    sizes: tuple[int, int]  # object side length range
    bg_kind: Literal["plain", "noise"]


SPLITS = {
    "in": CountSplit((0, 5), (0, 3), TRAIN_PAIRS, (12, 22), "plain"),
    "ood": CountSplit((3, 8), (2, 5), ALL_PAIRS, (10, 18), "noise"),
}


def count(objects: list[Shape], kind: str, a: str, b: str | None = None) -> int:
    """The true answer for `objects` (what was drawn, not what was planned)."""
    if kind == "colour":
        return sum(o.colour == a for o in objects)
    if kind == "shape":
        return sum(o.shape == a for o in objects)
    if kind == "difference":
        return sum(o.shape == a for o in objects) - sum(o.shape == b for o in objects)
    raise ValueError(f"unknown question kind {kind!r}")


def _plan(rng: np.random.Generator, cfg: CountSplit, answer: int, kind: str) -> tuple[str, str | None, list, list]:
    """(a, b, counted pairs, distractor pairs) for a question whose answer is `answer`."""
    pairs = cfg.pairs

    def draw(pool, k):
        return [pool[int(j)] for j in rng.integers(len(pool), size=k)]

    n_distract = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    if kind == "colour":
        a, b = list(COLOURS)[int(rng.integers(len(COLOURS)))], None
        counted = draw([p for p in pairs if p[0] == a], answer)
        other_pool = [p for p in pairs if p[0] != a]
    elif kind == "shape":
        a, b = SHAPES[int(rng.integers(len(SHAPES)))], None
        counted = draw([p for p in pairs if p[1] == a], answer)
        other_pool = [p for p in pairs if p[1] != a]
    else:
        a, b = (SHAPES[int(j)] for j in rng.permutation(len(SHAPES))[:2])
        base = int(rng.integers(0, 3))  # how many of shape b; shape a gets base + answer
        counted = draw([p for p in pairs if p[1] == a], base + answer) + draw([p for p in pairs if p[1] == b], base)
        other_pool = [p for p in pairs if p[1] not in (a, b)]
        n_distract //= 2  # fewer distractors: this kind already draws more objects
    # Never an empty image: "0" should mean "none of these here", not "nothing at all".
    others = draw(other_pool, max(n_distract, int(not counted)))
    return a, b, counted, others


def generate_count(
    out_dir: Path,
    n: int,
    split: Literal["in", "ood"] = "in",
    seed: int = 0,
    image_size: int = 112,
    name: str | None = None,
) -> Path:
    """Write `n` counting samples to `out_dir/images/*.png` and `out_dir/{name or split}.jsonl`.

    Ids are ``count-{name or split}-{i:06d}`` (1-based). Returns the JSONL path.
    """
    check_split(split)
    if n < 1:
        raise ValueError(f"need n >= 1, got {n=}")
    if image_size < 64:
        raise ValueError(f"need image_size >= 64 to fit the scenes, got {image_size=}")
    cfg = SPLITS[split]
    tag = name or split
    out_dir = output_dir(out_dir)
    rows = []
    for i in range(1, n + 1):
        rng = sample_rng(seed, split, i)
        kind = list(QUESTIONS)[int(rng.integers(len(QUESTIONS)))]
        target = int(rng.integers(cfg.answers[0], cfg.answers[1] + 1))
        for _ in range(_MAX_TRIES):
            a, b, counted, others = _plan(rng, cfg, target, kind)
            # Counted objects go first so that only distractors are dropped when space runs out.
            objects = place(rng, counted + others, image_size, *cfg.sizes)
            answer = count(objects, kind, a, b)
            if answer == target:
                break
        img = render(objects, background(rng, image_size, cfg.bg_kind))
        sid = f"count-{tag}-{i:06d}"
        img.save(out_dir / "images" / f"{sid}.png", format="PNG")
        rows.append({
            "id": sid,
            "image": f"images/{sid}.png",
            "conversations": [
                {"from": "human", "value": QUESTIONS[kind].format(a=a, b=b)},
                {"from": "gpt", "value": str(answer)},
            ],
            "accu_reward_method": "default",
            "image_size": [image_size, image_size],
            "task": "count",
            "question_type": kind,
            "n_objects": len(objects),
        })
    return write_jsonl(out_dir / f"{tag}.jsonl", rows)
