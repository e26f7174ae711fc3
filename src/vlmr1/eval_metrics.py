"""Evaluation scorers, one per kind of task: REC, detection, text/math answers, GUI defects.

A row's ``accu_reward_method`` picks its kind (VLM-R1's field, so real data needs no extra
setting). Each scorer turns a batch of completions into per-sample JSON-able fields
(``score_rows``) and a split's rows into its metrics (``summarise``). Detection is scored over
the whole split with COCO AP, not as a mean of per-image APs, which is what COCO mAP means.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .rewards import detection
from .rewards.grounding import IOU_THRESHOLD, iou, pred_and_truth
from .rewards.gui import defect_metrics, parse_defect_rows
from .rewards.registry import get_reward

REC_METHODS = {"rec", "iou", "acc50", "rec_acc", "acc50_tight"}
DETECTION_METHODS = {"map", "od_ap", "od_ap50", "odLength", "weighted_sum"}
GUI_METHODS = {"gui_defect"}
TIGHT_IOU = 0.75  # Acc@0.75, reported beside Acc@0.5


def kind_of(method: str | None) -> str:
    """"rec" | "detection" | "gui" | "answer" (math-verify, mcq, yes/no, exact match, user methods)."""
    if method in REC_METHODS:
        return "rec"
    if method in DETECTION_METHODS:
        return "detection"
    if method in GUI_METHODS:
        return "gui"
    return "answer"


def _rec_rows(texts: list[str], cols: dict) -> list[dict]:
    pairs = pred_and_truth(texts, cols["solution"], cols["image_size"], cols["input_size"])
    rows = []
    for pred, truth in pairs:
        score = iou(pred, truth) if pred is not None else 0.0
        rows.append({"pred_box": pred, "true_box": truth, "iou": score, "hit": score >= IOU_THRESHOLD, "parsed": pred is not None})
    return rows


def _rec_summary(rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    return {
        "acc50": sum(r["hit"] for r in rows) / n,
        # Box tightness: the token loss of SFT does not optimise IoU, an IoU reward does.
        "acc75": sum(r["iou"] >= TIGHT_IOU for r in rows) / n,
        "mean_iou": sum(r["iou"] for r in rows) / n,
        "parsed": sum(r["parsed"] for r in rows) / n,
    }


def _detection_rows(texts: list[str], cols: dict) -> list[dict]:
    pairs = detection.pred_and_truth(texts, cols["solution"], cols.get("image_size"), cols.get("input_size"))
    return [
        {
            "pred": None if pred is None else [[d.box, d.label] for d in pred],
            "truth": [[d.box, d.label] for d in truth],
            "parsed": pred is not None,
        }
        for pred, truth in pairs
    ]


def _detection_summary(rows: list[dict]) -> dict[str, float]:
    def dets(pairs):  # an unparsed answer found nothing: its image still counts, with its misses
        return [detection.Detection(box, label) for box, label in (pairs or [])]

    ap = detection.coco_ap([dets(r["pred"]) for r in rows], [dets(r["truth"]) for r in rows])
    return {"map": ap["ap"], "ap50": ap["ap50"], "ap75": ap["ap75"], "parsed": sum(r["parsed"] for r in rows) / len(rows)}


def _answer_rows(texts: list[str], cols: dict) -> list[dict]:
    correct = get_reward("accuracy")(texts, **cols)
    return [{"correct": bool(c is not None and c >= 1.0)} for c in correct]


def _answer_summary(rows: list[dict]) -> dict[str, float]:
    return {"accuracy": sum(r["correct"] for r in rows) / len(rows)}


def _gui_rows(texts: list[str], cols: dict) -> list[dict]:
    return parse_defect_rows(texts, cols["solution"], cols.get("image_size"), cols.get("input_size"))


class Scorer(NamedTuple):
    score_rows: Callable[[list[str], dict], list[dict]]  # completions + columns -> per-sample fields
    summarise: Callable[[list[dict]], dict[str, float]]  # a split's rows -> its metrics


SCORERS: dict[str, Scorer] = {
    "rec": Scorer(_rec_rows, _rec_summary),
    "detection": Scorer(_detection_rows, _detection_summary),
    "answer": Scorer(_answer_rows, _answer_summary),
    "gui": Scorer(_gui_rows, defect_metrics),
}


def before_after_rows(summary: dict) -> list[tuple]:
    """(split, metric, before, after, change) for every metric of either evaluation; None where absent."""
    before, after = summary.get("before") or {}, summary.get("after") or {}
    rows = []
    for split in sorted(set(before) | set(after)):
        b_m, a_m = before.get(split, {}), after.get(split, {})
        for metric in [k for k in {**b_m, **a_m} if k != "n"]:
            b, a = b_m.get(metric), a_m.get(metric)
            rows.append((split, metric, b, a, a - b if b is not None and a is not None else None))
    return rows
