"""Split-level evaluation metrics per task kind, on hand-written completions (no model)."""

import json

import pytest

from vlmr1.evaluate import summarise
from vlmr1.eval_metrics import SCORERS, kind_of


def _rows(kind, texts, cols):
    fields = SCORERS[kind].score_rows(texts, {"image_size": [None] * len(texts), "input_size": [None] * len(texts), **cols})
    return [{"kind": kind, **f} for f in fields]


@pytest.mark.parametrize(
    "method, kind",
    [("rec", "rec"), ("iou", "rec"), ("map", "detection"), ("odLength", "detection"), ("weighted_sum", "detection"),
     ("gui_defect", "gui"), ("default", "answer"), ("mcq", "answer"), (None, "answer")],
)
def test_kind_follows_the_rows_reward_method(method, kind):
    assert kind_of(method) == kind


def test_rec_split_metrics():
    # IoUs: exact box 1.0; [0,0,10,10] vs [0,0,10,20] = 100/200 = 0.5 (a hit at >= 0.5); no box 0.
    texts = ["[0, 0, 10, 10]", "[0, 0, 10, 10]", "no idea"]
    sols = ["[0, 0, 10, 10]", "[0, 0, 10, 20]", "[0, 0, 10, 10]"]
    m = summarise(_rows("rec", texts, {"solution": sols}))
    assert m["acc50"] == pytest.approx(2 / 3) and m["mean_iou"] == pytest.approx(1.5 / 3)
    assert m["parsed"] == pytest.approx(2 / 3) and m["n"] == 3
    assert m["acc75"] == pytest.approx(1 / 3)  # only the exact box reaches IoU 0.75


def test_rec_acc75_counts_tight_boxes_only():
    # [0,0,10,10] vs [0,0,10,13]: IoU 100/130 = 0.769 (>= 0.75); vs [0,0,10,14]: 100/140 = 0.714
    # (a hit at 0.5, not at 0.75); IoU exactly 0.75: [0,0,10,15] vs [0,0,10,20] = 150/200.
    texts = ["[0, 0, 10, 10]", "[0, 0, 10, 10]", "[0, 0, 10, 15]"]
    sols = ["[0, 0, 10, 13]", "[0, 0, 10, 14]", "[0, 0, 10, 20]"]
    m = summarise(_rows("rec", texts, {"solution": sols}))
    assert m["acc50"] == pytest.approx(1.0) and m["acc75"] == pytest.approx(2 / 3)


def _det(*items):
    return json.dumps([{"bbox_2d": b, "label": lab} for b, lab in items])


def test_detection_map_is_computed_over_the_whole_split():
    # Two images, one "red circle" each. Image 1 is found exactly; image 2's answer is unparsed
    # (found nothing). Over the split: 2 ground-truth boxes, 1 prediction, a true positive at
    # every IoU threshold -> precision 1 up to recall 0.5, nothing beyond -> AP = 0.5 at every
    # threshold (101-point interpolation: recall points 0..0.5 are 51 of 101 -> 51/101).
    a, b = [10, 10, 30, 30], [50, 50, 70, 70]
    texts = [_det((a, "red circle")), "garbage"]
    sols = [_det((a, "red circle")), _det((b, "red circle"))]
    m = summarise(_rows("detection", texts, {"solution": sols}))
    assert m["map"] == pytest.approx(51 / 101, abs=1e-6) and m["ap50"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["parsed"] == pytest.approx(0.5)
    # Found on both images: AP 1 (to pycocotools' float rounding).
    texts = [_det((a, "red circle")), _det((b, "red circle"))]
    assert summarise(_rows("detection", texts, {"solution": sols}))["map"] == pytest.approx(1.0, abs=1e-9)


def test_answer_accuracy_dispatches_per_row():
    # default (math-verify): "3" == "$3$"; mcq: "(B)" names B; yes_no: "eyes" is not yes.
    texts = ["$3$", "The answer is (B)", "eyes"]
    cols = {"solution": ["3", "B", "yes"], "reward_method": ["default", "mcq", "yes_no"]}
    m = summarise(_rows("answer", texts, cols))
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_gui_split_metrics():
    # Row 1: true "none", said "none" -> type right, score 1. Row 2: true shifted_widget at
    # [0,0,10,10], said shifted_widget at [0,0,10,20] -> type right, IoU 0.5, score 0.5 + 0.25.
    # Row 3: true missing_widget, said "none" -> type wrong, IoU 0, score 0.
    texts = ['{"defect": "none"}', '{"defect": "shifted_widget", "bbox_2d": [0, 0, 10, 20]}', '{"defect": "none"}']
    sols = ['{"defect": "none"}', '{"defect": "shifted_widget", "bbox_2d": [0, 0, 10, 10]}',
            '{"defect": "missing_widget", "bbox_2d": [5, 5, 9, 9]}']
    m = summarise(_rows("gui", texts, {"solution": sols}))
    assert m["defect_acc"] == pytest.approx(2 / 3)
    assert m["region_iou"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["score"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)


def test_mixed_split_prefixes_each_kind():
    rows = _rows("rec", ["[0, 0, 10, 10]"], {"solution": ["[0, 0, 10, 10]"]})
    rows += _rows("answer", ["4"], {"solution": ["4"], "reward_method": ["default"]})
    m = summarise(rows)
    assert m["rec/acc50"] == 1.0 and m["answer/accuracy"] == 1.0 and m["n"] == 2
