"""Open-vocabulary detection (OVD) rewards: parse a list of labelled boxes, score it against the truth.

Answers are Qwen2.5-VL's grounding JSON, ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]``, possibly in
a ```json fence and/or in ``<answer>...</answer>``; ``None`` means "nothing found". Box conventions
(continuous coordinates, invalid boxes, scaling input -> original pixels) are those of ``grounding``.

Rewards: ``map`` / ``od_ap`` (per-sample COCO AP@[.5:.95]), ``od_ap50``, ``odLength`` (AP times a
penalty for listing more boxes than there are objects) and ``weighted_sum`` (IoU plus completeness).

Departures from VLM-R1 (grpo_jsonl.py: map_reward, calculate_map, od_reward, odLength_reward,
detection_score), and why:
- Hallucinated labels cost reward everywhere. VLM-R1 builds COCO categories from the ground truth only
  and drops a prediction whose label is not among them (``cats2id[label]`` raises, ``except: pass``),
  and pycocotools itself gives a category with predictions but no ground truth AP -1, which its mean
  skips. Either way, listing every category named in the prompt is free. Here the mean runs over every
  category in the ground truth OR the predictions, and a predicted-only category scores AP 0.
- One parser for every reward: ``map`` and ``od_ap`` are aliases. VLM-R1's ``map`` reads only a
  ```json fence (no fence: nothing predicted) and its ``od_ap`` needs ``<answer>`` tags; both returned
  AP50 (``stats[1]``) in early versions and AP@[.5:.95] later. Here both are AP@[.5:.95].
- ``weighted_sum`` matches a prediction to a ground-truth box only when the labels agree. VLM-R1
  matches on IoU alone and then zeroes the IoU of a wrong-label pair, which still uses up both boxes:
  the wrong label counts as neither a miss nor a false alarm (VLM-R1 pays it 0.3; here it pays 0). Its
  IoU also mixes the "+1 pixel" intersection with a continuous union; ours is continuous throughout.
- Inverted or non-finite predicted boxes are false positives. Handed to pycocotools as written, a box
  with negative width has negative area, falls outside every area range and is silently ignored.
- pycocotools' cap of 100 detections per image is lifted (``maxDets`` = the longest answer): a capped
  answer could hide false positives after the 100th box.
- Edge cases are decided here, before pycocotools (which crashes on an empty result list): no truth
  and no prediction -> 1.0 (a correct "nothing here"), one side empty -> 0.0.

Completions carry no confidences, so every box gets score 1.0; pycocotools ranks with a stable sort,
so the model's listed order breaks the tie: a box listed earlier is treated as more confident.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import re
from typing import NamedTuple, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .grounding import _valid  # the project's one rule for a valid box (finite, not inverted)
from .grounding import answer_content, box_area, box_problem, iou, scale_box
from .registry import register, register_truth_check

MATCH_IOU = 0.5
"""``weighted_sum``: IoU at which a prediction may match a ground-truth box of the same label."""

POSITION_WEIGHT = 0.7
"""``weighted_sum``: weight of the localisation term (VLM-R1's alpha)."""

COMPLETENESS_WEIGHT = 0.3
"""``weighted_sum``: weight of the miss / false-alarm term (VLM-R1's gamma)."""

_FENCE_RE = re.compile(r"```(?:json)?(.*?)```", re.DOTALL | re.IGNORECASE)
_DECODER = json.JSONDecoder()


class Detection(NamedTuple):
    box: list[float]  # [x1, y1, x2, y2], as written (may be invalid: grounding.iou then gives 0)
    label: str  # normalised: stripped, lower-case, single spaces


def normalize_label(label: str) -> str:
    """``"  Red   Circle "`` -> ``"red circle"``: labels compare equal up to case and spacing."""
    return " ".join(label.split()).lower()


def _is_number(v) -> bool:
    # bool is an int subclass; a box of true/false is not a box.
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _item(obj) -> Detection | None:
    if not isinstance(obj, dict):
        return None
    box, label = obj.get("bbox_2d"), obj.get("label")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box) and isinstance(label, str)):
        return None
    return Detection([float(v) for v in box], normalize_label(label))


_OPEN_RE = re.compile(r"[\[{]")
_PARTIAL_SCALAR_RE = re.compile(r"-?\d*\.?\d*(?:[eE][-+]?\d*)?|t(?:r(?:ue?)?)?|f(?:a(?:l(?:se?)?)?)?|n(?:u(?:ll?)?)?")


def _cut_off(text: str, error: json.JSONDecodeError) -> bool:
    """Whether decoding failed only because the text ended: what came before is a valid start of JSON."""
    rest = text[error.pos :].strip()
    return error.msg.startswith("Unterminated string") or _PARTIAL_SCALAR_RE.fullmatch(rest) is not None


def _closing(text: str, start: int) -> int | None:
    """Index just past the bracket that closes the one at ``start`` (brackets in strings skipped), or None."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _load_json(text: str):
    """The answer's JSON value: the whole text, else the first ``[`` or ``{`` from which one decodes.

    Prose around the JSON is tolerated ("Found: [...]"), but never a fragment of a broken answer:
    a list cut off by the end of the text (the length limit), or one that closes but is not JSON,
    is one broken answer, so the objects inside it are not tried as answers of their own.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    pos = 0
    while (m := _OPEN_RE.search(text, pos)) is not None:
        try:
            return _DECODER.raw_decode(text, m.start())[0]
        except json.JSONDecodeError as e:
            if _cut_off(text, e):
                return None
            # A bracket that closes: skip what it holds. One that never closes is prose ("[maybe: ...").
            end = _closing(text, m.start())
            pos = end if end is not None else m.start() + 1
    return None


def _parse_items(text: str) -> tuple[list[Detection], int] | None:
    """(detections, number of malformed items dropped), or None when nothing parses."""
    region = answer_content(text)
    fences = _FENCE_RE.findall(region)
    region = (fences[-1] if fences else region).strip()  # the last fence, as with the last <answer>
    if region.lower() == "none":
        return [], 0
    data = _load_json(region)
    if isinstance(data, dict):  # a single object instead of a list
        data = [data]
    if not isinstance(data, list):
        return None
    dets = [d for d in map(_item, data) if d is not None]
    # A non-empty list with no usable item is garbage, not "nothing found": read as [] it would earn
    # full reward on every image without objects.
    if data and not dets:
        return None
    return dets, len(data) - len(dets)


def parse_detections(text: str) -> list[Detection] | None:
    """Labelled boxes of an answer; ``[]`` for ``[]`` or ``None``; None when nothing parses.

    Items without a ``bbox_2d`` of exactly four numbers or without a string ``label`` are dropped and
    not counted anywhere: they can neither earn nor cost reward (a format reward is the place to
    punish them). A list where every item is malformed is unparseable (None).
    """
    parsed = _parse_items(text)
    return None if parsed is None else parsed[0]


def truth_detections(sol, index: int | None) -> list[Detection]:
    """Ground truth of sample ``index``: a string in the answer format, or a list of dicts (or one dict).

    Stricter than predictions: a malformed item or an invalid box is a data bug and raises ValueError.
    """
    if isinstance(sol, str):
        parsed = _parse_items(sol)
        ok = parsed is not None and parsed[1] == 0
        dets = parsed[0] if parsed is not None else []
    elif isinstance(sol, (list, tuple, dict)):
        items = [sol] if isinstance(sol, dict) else list(sol)
        dets = [_item(x) for x in items]
        ok = all(d is not None for d in dets)
    else:
        ok, dets = False, []
    if not ok or not all(_valid(d.box) for d in dets):
        where = f"sample {index}: " if index is not None else ""
        raise ValueError(
            f"{where}solution {sol!r} is not a JSON list of {{'bbox_2d': [x1, y1, x2, y2], 'label': str}} boxes"
        )
    return dets


@register_truth_check("map", "od_ap", "od_ap50", "odLength", "weighted_sum")
def check_detection_solution(sol, image_size=None) -> None:
    for d in truth_detections(sol, None):
        problem = box_problem(d.box, image_size)
        if problem:
            raise ValueError(f"solution {str(sol)[:120]!r}: label {d.label!r}: {problem}")


def pred_and_truth(completions: list[str], solution: list, image_size=None, input_size=None):
    """Per sample: (predicted detections in original pixels or None, ground-truth detections)."""
    out = []
    for i, (text, sol) in enumerate(zip(completions, solution, strict=True)):
        gt = truth_detections(sol, i)
        pred = parse_detections(text)
        orig = image_size[i] if image_size is not None else None
        inp = input_size[i] if input_size is not None else None
        if pred and orig is not None and inp is not None and tuple(orig) != tuple(inp):
            pred = [Detection(scale_box(d.box, inp, orig), d.label) for d in pred]
        out.append((pred, gt))
    return out


def _xywh(box: Sequence[float]) -> list[float]:
    # An invalid box becomes an empty one at the origin: it matches nothing (pycocotools gives IoU 0
    # when the overlap width is <= 0) yet, with area 0, stays inside the area range, so it is counted
    # as a false positive instead of being ignored.
    if not _valid(box):
        return [0.0, 0.0, 0.0, 0.0]
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def coco_ap(preds: list[list[Detection]], truths: list[list[Detection]]) -> dict:
    """COCO box AP over a split (one list of detections per image), every prediction with score 1.0.

    Returns ``{"ap": AP@[.5:.95], "ap50": ..., "ap75": ..., "per_category": {label: AP@[.5:.95]}}``.
    The mean runs over every label in the truth or the predictions; a predicted-only label scores 0.
    """
    if len(preds) != len(truths):
        raise ValueError(f"coco_ap got {len(preds)} prediction lists for {len(truths)} images")
    labels = sorted({d.label for dets in (*preds, *truths) for d in dets})
    n_gt, n_pred = sum(map(len, truths)), sum(map(len, preds))
    if n_gt == 0 or n_pred == 0:
        score = 1.0 if n_gt == n_pred else 0.0  # both empty: a correct "nothing here"
        return {"ap": score, "ap50": score, "ap75": score, "per_category": {label: score for label in labels}}

    cat_id = {label: k + 1 for k, label in enumerate(labels)}  # 1-based, sorted like params.catIds
    annotations = []
    for i, dets in enumerate(truths):
        for d in dets:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id[d.label],
                 "bbox": _xywh(d.box), "area": box_area(d.box), "iscrowd": 0}
            )
    results = [
        {"image_id": i + 1, "category_id": cat_id[d.label], "bbox": _xywh(d.box), "score": 1.0}
        for i, dets in enumerate(preds) for d in dets
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every call
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i + 1} for i in range(len(truths))],
            "categories": [{"id": cat_id[label], "name": label} for label in labels],
            "annotations": annotations,
        }
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, math.inf]], ["all"]
        ev.params.maxDets = [max(100, *map(len, preds))]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]  # [T=10 IoU thresholds, R=101 recall points, K]
    ap_tk = precision.mean(axis=1)  # [T, K]; -1 where a label has no ground truth anywhere
    ap_tk = np.where(ap_tk < 0, 0.0, ap_tk)  # ... which COCO would skip; here it is a miss: AP 0
    thrs = ev.params.iouThrs
    return {
        "ap": float(ap_tk.mean()),
        "ap50": float(ap_tk[np.isclose(thrs, 0.5)].mean()),
        "ap75": float(ap_tk[np.isclose(thrs, 0.75)].mean()),
        "per_category": {label: float(ap_tk[:, k].mean()) for k, label in enumerate(labels)},
    }


def greedy_matches(pred: list[Detection], gt: list[Detection]) -> list[float]:
    """IoUs of a greedy one-to-one matching: pairs with equal labels and IoU >= MATCH_IOU, taken in
    descending IoU (ties in list order), each prediction and each true box used at most once."""
    pairs = [(iou(p.box, g.box), i, j) for i, p in enumerate(pred) for j, g in enumerate(gt) if p.label == g.label]
    pairs = sorted((c for c in pairs if c[0] >= MATCH_IOU), key=lambda c: -c[0])  # stable: ties in list order
    used_pred, used_gt, matched = set(), set(), []
    for value, i, j in pairs:
        if i not in used_pred and j not in used_gt:
            used_pred.add(i)
            used_gt.add(j)
            matched.append(value)
    return matched


def weighted_sum_score(pred: list[Detection], gt: list[Detection]) -> float:
    """0.7 * localisation + 0.3 * (1 - (miss_rate + false_alarm_rate) / 2), in [0, 1].

    Matching: ``greedy_matches``. Localisation = sum of matched IoUs / n_gt, i.e. the mean IoU over the true
    objects with a missed object counting 0 (as VLM-R1 does). Not the mean over matched pairs: that
    would pay one perfect box out of ten objects .7 + .3 * (1 - .9 / 2) = .865, about as much as ten
    boxes at IoU .8 (.86), and teach the policy to answer only its easiest object.
    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    if not gt or not pred:
        return 1.0 if not gt and not pred else 0.0
    matched = greedy_matches(pred, gt)
    position = sum(matched) / len(gt)
    miss_rate = (len(gt) - len(matched)) / len(gt)
    false_alarm_rate = (len(pred) - len(matched)) / len(pred)
    return POSITION_WEIGHT * position + COMPLETENESS_WEIGHT * (1.0 - (miss_rate + false_alarm_rate) / 2.0)


def _ap_rewards(key: str, completions, solution, image_size, input_size) -> list[float]:
    pairs = pred_and_truth(completions, solution, image_size, input_size)
    return [coco_ap([p], [g])[key] if p is not None else 0.0 for p, g in pairs]


@register("map", "od_ap")
def map_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """Per-sample COCO AP@[.5:.95] (``coco_ap`` on one image); 0.0 when the prediction does not parse."""
    return _ap_rewards("ap", completions, solution, image_size, input_size)


@register("od_ap50")
def od_ap50_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """Per-sample COCO AP at IoU 0.5; 0.0 when the prediction does not parse."""
    return _ap_rewards("ap50", completions, solution, image_size, input_size)


@register("odLength")
def od_length_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """AP@[.5:.95] * min(1, n_gt / n_pred): AP alone does not punish extra boxes listed after the right ones."""
    out = []
    for pred, gt in pred_and_truth(completions, solution, image_size, input_size):
        if pred is None:
            out.append(0.0)
            continue
        ap = coco_ap([pred], [gt])["ap"]
        out.append(ap * min(1.0, len(gt) / len(pred)) if pred else ap)
    return out


@register("weighted_sum")
def weighted_sum_reward(completions: list[str], solution: list, image_size=None, input_size=None, **_) -> list[float]:
    """``weighted_sum_score`` per sample; 0.0 when the prediction does not parse."""
    pairs = pred_and_truth(completions, solution, image_size, input_size)
    return [weighted_sum_score(p, g) if p is not None else 0.0 for p, g in pairs]
