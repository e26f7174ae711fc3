"""GUI defect detection: reward ``gui_defect`` and the evaluator's defect metrics.

The model compares a before and an after screenshot and answers with one JSON object,
``{"defect": TYPE, "bbox_2d": [x1, y1, x2, y2]}``, or ``{"defect": "none"}`` when nothing is
wrong. The answer may sit in ``<answer>...</answer>`` (the last one counts) and/or in a ```json
fence; the first JSON object with a string ``"defect"`` is read. Types are compared after
stripping and lower-casing, so any taxonomy works (the synthetic one is
``vlmr1.data.synthetic.gui.DEFECTS``). Boxes follow ``grounding``: continuous coordinates, a
predicted box scaled from the model input size to the original image size when the sample
carries both ``input_size`` and ``image_size``.

Reward, per sample:
- answer unparseable -> 0.0;
- true defect "none" -> 1.0 if the prediction says "none", else 0.0 (a false alarm earns nothing);
- otherwise 0.5 * [types match] + 0.5 * IoU(pred box, true box) when the types match; a wrong type
  or "none" earns no region credit (a right box for the wrong defect is not a diagnosis), and a
  right type without a usable box earns 0.5.

VLM-R1 has no GUI task; this is the project's own task and reward, so there is nothing to depart from.
"""

from __future__ import annotations

import json
import math
import numbers
import re

from .grounding import answer_content, box_problem, iou, scale_box
from .registry import register, register_truth_check

NONE = "none"
"""The type meaning "no defect"; such answers carry no box."""

TYPE_WEIGHT = 0.5
"""Share of the reward paid for naming the right defect type; the rest pays the box's IoU."""

_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)

Defect = tuple[str, list[float] | None]  # (type, box in original pixels, None for "none" or no usable box)


def _box(value) -> list[float] | None:
    """Four finite numbers (bools are not numbers here) as floats, else None."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def parse_defect(text: str) -> Defect | None:
    """(type, box or None) from an answer, or None when it holds no ``{"defect": "..."}`` object.

    Type: the ``defect`` string stripped and lower-cased (an empty string is unparseable). Box:
    ``bbox_2d`` if it is four finite numbers, else None; always None for "none". Python's json
    accepts NaN and Infinity, hence the finiteness check.
    """
    region = answer_content(text)
    fenced = _FENCE_RE.search(region)
    if fenced:
        region = fenced.group(1)
    decoder = json.JSONDecoder()
    for start in [k for k, ch in enumerate(region) if ch == "{"]:
        try:
            obj, _ = decoder.raw_decode(region, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("defect"), str) and obj["defect"].strip():
            kind = obj["defect"].strip().lower()
            return (NONE, None) if kind == NONE else (kind, _box(obj.get("bbox_2d")))
    return None


def _truth(sol, index: int | None) -> Defect:
    # A ground truth we cannot read is a data bug: fail loudly instead of scoring 0.
    truth = parse_defect(sol) if isinstance(sol, str) else None
    if truth is None or (truth[0] != NONE and truth[1] is None):
        where = f"sample {index}: " if index is not None else ""
        raise ValueError(f"{where}solution {sol!r} is not a defect answer with a box (or 'none')")
    return truth


@register_truth_check("gui_defect")
def check_defect_solution(sol, image_size=None) -> None:
    kind, box = _truth(sol, None)
    problem = box_problem(box, image_size) if box is not None else None
    if problem:
        raise ValueError(f"solution {sol!r}: {problem}")


def pred_and_truth(completions: list[str], solution: list, image_size=None, input_size=None):
    """Per sample: (predicted Defect with its box in original pixels, or None; true Defect)."""
    out = []
    for i, (text, sol) in enumerate(zip(completions, solution, strict=True)):
        truth, pred = _truth(sol, i), parse_defect(text)
        orig = image_size[i] if image_size is not None else None
        inp = input_size[i] if input_size is not None else None
        if pred is not None and pred[1] is not None and orig is not None and inp is not None:
            if tuple(orig) != tuple(inp):
                pred = (pred[0], scale_box(pred[1], inp, orig))
        out.append((pred, truth))
    return out


def defect_score(pred: Defect | None, truth: Defect) -> float:
    """The ``gui_defect`` reward of one answer (see the module docstring)."""
    if pred is None or pred[0] != truth[0]:
        return 0.0
    if truth[0] == NONE:
        return 1.0
    region = iou(pred[1], truth[1]) if pred[1] is not None else 0.0
    return TYPE_WEIGHT + (1.0 - TYPE_WEIGHT) * region


@register("gui_defect")
def gui_defect_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """Type match and region IoU of a GUI defect answer (see the module docstring)."""
    return [defect_score(p, t) for p, t in pred_and_truth(completions, solution, image_size, input_size)]


def defect_accuracy(pairs: list[tuple[Defect | None, Defect]]) -> float:
    """Fraction of samples whose predicted type equals the true one ("none" included; unparsed = wrong)."""
    if not pairs:
        raise ValueError("defect_accuracy needs at least one sample")
    return sum(p is not None and p[0] == t[0] for p, t in pairs) / len(pairs)


def region_iou(pairs: list[tuple[Defect | None, Defect]]) -> float | None:
    """Mean IoU of the predicted box over samples with a true defect; None if there are none.

    Localisation alone: the box counts whatever type was named (0 when there is no box), so this
    and ``defect_accuracy`` measure two separate skills; the reward combines them.
    """
    scored = [iou(p[1], t[1]) if p is not None and p[1] is not None else 0.0 for p, t in pairs if t[0] != NONE]
    return sum(scored) / len(scored) if scored else None


def parse_defect_rows(texts: list[str], solution: list, image_size=None, input_size=None) -> list[dict]:
    """Per-sample JSON-able fields for the evaluator's predictions file."""
    rows = []
    for pred, truth in pred_and_truth(texts, solution, image_size, input_size):
        rows.append({
            "pred_defect": None if pred is None else pred[0],
            "pred_box": None if pred is None else pred[1],
            "true_defect": truth[0],
            "true_box": truth[1],
            "parsed": pred is not None,
            "type_correct": pred is not None and pred[0] == truth[0],
            "iou": None if truth[0] == NONE else region_iou([(pred, truth)]),
            "score": defect_score(pred, truth),
        })
    return rows


def defect_metrics(rows: list[dict]) -> dict[str, float]:
    """A split's metrics from ``parse_defect_rows`` rows.

    ``defect_acc`` (type match over all samples), ``region_iou`` (mean IoU over samples with a
    true defect; left out when the split has none), ``score`` (mean reward), ``parsed``.
    """
    n = len(rows)
    if n == 0:
        raise ValueError("defect_metrics needs at least one row")
    out = {"defect_acc": sum(r["type_correct"] for r in rows) / n}
    ious = [r["iou"] for r in rows if r["iou"] is not None]
    if ious:
        out["region_iou"] = sum(ious) / len(ious)
    out["score"] = sum(r["score"] for r in rows) / n
    out["parsed"] = sum(r["parsed"] for r in rows) / n
    return out
