"""Referring-expression comprehension (REC) rewards: parse one box, score it by IoU.

Conventions, fixed here once for the whole project:
- Boxes are ``[x1, y1, x2, y2]`` in continuous coordinates: area = (x2 - x1) * (y2 - y1),
  with no "+1 pixel" term. VLM-R1 has several copies of ``iou`` that mix the inclusive-pixel
  convention (+1 on widths and heights) with the continuous one, so the same prediction gets
  different rewards depending on the model class; we keep only the continuous one.
- A box with x2 < x1 or y2 < y1 (inverted) or a non-finite coordinate is invalid: IoU 0.
  Zero-width boxes are valid but have no area, so they never score.
- Ground truth (``solution``) is in ORIGINAL image pixels. Qwen2.5-VL predicts absolute pixels
  of its resized input, so when a sample carries both ``image_size`` and ``input_size`` (w, h)
  and they differ, the prediction is scaled input -> original before scoring.
- Predictions are not clipped to the image: a box reaching outside only grows the union, so
  clipping would only hide a model error.

Departures from VLM-R1's REC reading (also listed in docs/tasks.md), and why:
- the LAST complete ``<answer>`` is read, VLM-R1 reads the first: a model that drafts and then
  corrects itself means the final one; without any ``<answer>`` the whole text is read where
  VLM-R1 scores 0, since tags are the format reward's business and accuracy measures the answer;
- coordinates may be floats, negative, with free spacing; VLM-R1's pattern takes non-negative
  integers only, so a right box written with decimals scored 0.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from .registry import register, register_truth_check

IOU_THRESHOLD = 0.5
"""IoU at which a REC prediction counts as a hit (Acc@0.5, the standard REC metric)."""

AREA_RATIO_MAX = 1.3
"""``acc50_tight``: largest predicted/true area ratio still paid. IoU >= 0.5 alone pays boxes up
to 2x the true area (a box containing the target has IoU = true/pred); a policy trained without KL
learns to inflate boxes towards that bound, so the tight reward stops paying the hedge early."""

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
# A box as every reward reads it: four numbers (ints, floats, signs, free spacing) in brackets.
BOX_PATTERN = rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
_BOX_RE = re.compile(BOX_PATTERN)
# Qwen2-VL's native grounding output: <|box_start|>(x1,y1),(x2,y2)<|box_end|> (0-1000 frame).
_POINT_PAIR_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
# Qwen2.5-VL's native grounding output: [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}].
# Looked for first so that another 4-number list earlier in the JSON does not win.
_BBOX_2D_RE = re.compile(r"[\"']bbox_2d[\"']\s*:\s*" + BOX_PATTERN)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

Box = list[float]


def answer_content(text: str) -> str:
    """Content of the LAST complete ``<answer>...</answer>``, else the whole text.

    The last one, because a model that drafts an answer and then corrects itself means the final one.
    """
    found = _ANSWER_RE.findall(text)
    return found[-1] if found else text


def parse_box(text: str) -> Box | None:
    """First ``[x1, y1, x2, y2]`` of exactly four numbers in the answer, or None.

    Accepts ints, floats, negative values and free spacing; a ``"bbox_2d": [...]`` key wins over
    a bare list, and Qwen2-VL's corner pairs ``(x1,y1),(x2,y2)`` are read when there is no list. Inverted boxes are returned as written (``iou`` rejects them), so that a parse
    failure and a wrong box stay distinguishable.
    """
    region = answer_content(text)
    m = _BBOX_2D_RE.search(region) or _BOX_RE.search(region) or _POINT_PAIR_RE.search(region)
    return [float(g) for g in m.groups()] if m else None


def _valid(box: Sequence[float]) -> bool:
    return len(box) == 4 and all(math.isfinite(v) for v in box) and box[2] >= box[0] and box[3] >= box[1]


def box_area(box: Sequence[float]) -> float:
    """Continuous area; 0 for an invalid box."""
    return (box[2] - box[0]) * (box[3] - box[1]) if _valid(box) else 0.0


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes; 0 if either box is invalid."""
    if not (_valid(a) and _valid(b)):
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def scale_box(box: Sequence[float], from_size: Sequence[float], to_size: Sequence[float]) -> Box:
    """Map a box from an image of ``from_size`` (w, h) to one of ``to_size`` (w, h).

    Used to bring Qwen2.5-VL predictions (pixels of the resized model input) back to the original image.
    """
    (fw, fh), (tw, th) = from_size, to_size
    if min(fw, fh, tw, th) <= 0:
        raise ValueError(f"image sizes must be positive, got from {from_size} to {to_size}")
    sx, sy = tw / fw, th / fh
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def _solution_box(sol, index: int | None) -> Box:
    # A ground truth we cannot read is a data bug: fail loudly instead of scoring 0.
    if isinstance(sol, str):
        box = parse_box(sol)
    elif isinstance(sol, (list, tuple)) and len(sol) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sol):
        box = [float(v) for v in sol]
    else:
        box = None
    if box is None:
        where = f"sample {index}: " if index is not None else ""
        raise ValueError(f"{where}solution {sol!r} holds no [x1, y1, x2, y2] box")
    return box


EDGE_TOLERANCE = 1.0
"""Pixels a ground-truth box may pass the image's edge by (annotations rounded outward)."""


def box_problem(box: Sequence[float], image_size: Sequence[int] | None) -> str | None:
    """What is wrong with a ground-truth box in original pixels, or None: four finite numbers,
    x1 < x2 and y1 < y2 (a box of zero or negative area scores IoU 0 against any prediction),
    inside the ``image_size`` (w, h) image, where known, up to ``EDGE_TOLERANCE``."""
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return f"box {list(box)} is not four finite numbers"
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        return f"box {list(box)} is not [x1, y1, x2, y2] with x1 < x2 and y1 < y2"
    if image_size is not None:
        w, h = image_size
        t = EDGE_TOLERANCE
        if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
            return f"box {list(box)} lies outside the {w}x{h} image (boxes are in pixels of the original image)"
    return None


@register_truth_check("iou", "acc50", "rec_acc", "acc50_tight")
def check_box_solution(sol, image_size=None) -> None:
    problem = box_problem(_solution_box(sol, None), image_size)
    if problem:
        raise ValueError(f"solution {sol!r}: {problem}")


def pred_and_truth(completions: list[str], solution: list, image_size=None, input_size=None):
    """Per sample: (predicted box in original pixels or None, ground-truth box)."""
    out = []
    for i, (text, sol) in enumerate(zip(completions, solution, strict=True)):
        gt = _solution_box(sol, i)
        pred = parse_box(text)
        orig = image_size[i] if image_size is not None else None
        inp = input_size[i] if input_size is not None else None
        if pred is not None and orig is not None and inp is not None and tuple(orig) != tuple(inp):
            pred = scale_box(pred, inp, orig)
        out.append((pred, gt))
    return out


@register("iou")
def iou_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """Continuous IoU between the predicted and the true box; 0 when no box parses."""
    pairs = pred_and_truth(completions, solution, image_size, input_size)
    return [iou(p, g) if p is not None else 0.0 for p, g in pairs]


@register("acc50", "rec_acc")
def acc50_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """1.0 if IoU >= IOU_THRESHOLD (Acc@0.5), else 0.0."""
    pairs = pred_and_truth(completions, solution, image_size, input_size)
    return [float(p is not None and iou(p, g) >= IOU_THRESHOLD) for p, g in pairs]


@register("acc50_tight")
def acc50_tight_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """1.0 if IoU >= IOU_THRESHOLD and pred area <= AREA_RATIO_MAX * true area, else 0.0.

    A hit that does not pay for oversized hedging boxes.
    """
    pairs = pred_and_truth(completions, solution, image_size, input_size)
    return [
        float(p is not None and iou(p, g) >= IOU_THRESHOLD and box_area(p) <= AREA_RATIO_MAX * box_area(g))
        for p, g in pairs
    ]
