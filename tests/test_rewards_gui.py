"""The GUI defect reward, its parser and the evaluator's defect metrics."""

import json
import math

import pytest

from vlmr1.rewards.gui import (
    defect_accuracy,
    defect_metrics,
    defect_score,
    gui_defect_reward,
    parse_defect,
    parse_defect_rows,
    region_iou,
)
from vlmr1.rewards.registry import compute_rewards, get_reward


def column_mean(out, name: str) -> float:
    """A reward's mean over the rows it applies to (None rows are NaN and left out), as the trainer logs it."""
    return float(out.per_func[:, out.names.index(name)].nanmean())


NONE = '{"defect":"none"}'
SHIFT = '{"defect":"shifted_widget","bbox_2d":[0,0,20,20]}'


def _ans(kind, box=None):
    return json.dumps({"defect": kind} if box is None else {"defect": kind, "bbox_2d": box})


@pytest.mark.parametrize(
    "solution, completion, expected",
    [
        (NONE, _ans("none"), 1.0),  # true none, said none
        (NONE, _ans("none", [1, 2, 3, 4]), 1.0),  # a box next to "none" is ignored
        (NONE, _ans("shifted_widget", [0, 0, 20, 20]), 0.0),  # false alarm
        (SHIFT, _ans("shifted_widget", [0, 0, 20, 20]), 1.0),  # 0.5 * 1 + 0.5 * IoU 1
        # pred [10,0,30,20]: inter 10*20 = 200, union 400 + 400 - 200 = 600, IoU 1/3 -> 0.5 + 0.5/3
        (SHIFT, _ans("shifted_widget", [10, 0, 30, 20]), 0.5 + 0.5 / 3),
        # pred [0,0,10,10] inside the truth: IoU 100/400 = 0.25 -> 0.5 + 0.125
        (SHIFT, _ans("shifted_widget", [0, 0, 10, 10]), 0.625),
        (SHIFT, _ans("shifted_widget", [40, 40, 60, 60]), 0.5),  # right type, disjoint box: IoU 0
        (SHIFT, _ans("shifted_widget"), 0.5),  # right type, no box: type credit only
        (SHIFT, _ans("shifted_widget", [20, 20, 0, 0]), 0.5),  # inverted box: IoU 0
        (SHIFT, _ans("missing_widget", [0, 0, 20, 20]), 0.0),  # wrong type: no region credit
        (SHIFT, _ans("none"), 0.0),  # missed defect
        (SHIFT, "shifted_widget at [0, 0, 20, 20]", 0.0),  # no JSON object: unparseable
        (SHIFT, '{"defect": 3, "bbox_2d": [0, 0, 20, 20]}', 0.0),  # defect is not a string
        (SHIFT, " ", 0.0),
        # In a fence inside <answer>, type in odd case and spacing: 0.5 + 0.5 * 1
        (SHIFT, '<answer>```json\n{"defect": " Shifted_Widget ", "bbox_2d": [0, 0, 20, 20]}\n```</answer>', 1.0),
        # The LAST <answer> counts: the draft says none, the final answer the right defect.
        (SHIFT, f"<answer>{_ans('none')}</answer> no wait <answer>{_ans('shifted_widget', [0, 0, 20, 20])}</answer>", 1.0),
        # Text around the object and a broken object first: the first object that decodes wins.
        (SHIFT, 'I see {bad json} then {"defect": "shifted_widget", "bbox_2d": [0, 0, 20, 20]} done', 1.0),
        (SHIFT, '{"defect": "shifted_widget", "bbox_2d": [0, 0, NaN, 20]}', 0.5),  # non-finite box dropped
        (SHIFT, '{"defect": "shifted_widget", "bbox_2d": [0, 0, 20]}', 0.5),  # 3 numbers: no box
    ],
)
def test_gui_defect_reward_table(solution, completion, expected):
    assert gui_defect_reward([completion], [solution]) == [pytest.approx(expected, abs=1e-9)]


def test_prediction_is_scaled_from_input_to_image_size():
    # Model input 224x224, image 112x112: pred [0,0,40,40] -> [0,0,20,20] = truth, so 0.5 + 0.5 * 1.
    # Unscaled it would be IoU 400/1600 = 0.25 -> 0.625.
    comp = [_ans("shifted_widget", [0, 0, 40, 40])]
    assert gui_defect_reward(comp, [SHIFT], image_size=[[112, 112]], input_size=[[224, 224]]) == [pytest.approx(1.0)]
    assert gui_defect_reward(comp, [SHIFT], image_size=[[112, 112]], input_size=[[112, 112]]) == [pytest.approx(0.625)]
    assert gui_defect_reward(comp, [SHIFT], image_size=[[112, 112]], input_size=[None]) == [pytest.approx(0.625)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"defect":"none"}', ("none", None)),
        ('{"defect":"NONE","bbox_2d":[1,2,3,4]}', ("none", None)),
        ('{"defect":"color_change","bbox_2d":[1,2.5,3,4]}', ("color_change", [1.0, 2.5, 3.0, 4.0])),
        ('{"defect":"color_change","bbox_2d":"1,2,3,4"}', ("color_change", None)),
        ('{"defect":"color_change","bbox_2d":[true,2,3,4]}', ("color_change", None)),  # bools are not coordinates
        ('{"bbox_2d":[1,2,3,4]} {"defect":"text_overlap"}', ("text_overlap", None)),  # first object without "defect" skipped
        ('{"defect": {"type": "x"}}', None),
        ('{"defect": ""}', None),
        ("[1, 2, 3, 4]", None),
        ("", None),
    ],
)
def test_parse_defect(text, expected):
    assert parse_defect(text) == expected


@pytest.mark.parametrize("bad", ['{"defect":"missing_widget"}', "missing", "", None])
def test_unreadable_solution_is_a_data_error_naming_the_sample(bad):
    with pytest.raises(ValueError, match="sample 1"):
        gui_defect_reward([NONE, NONE], [NONE, bad])


def test_registered_and_usable_through_compute_rewards():
    assert get_reward("gui_defect") is gui_defect_reward
    out = compute_rewards({"gui_defect": get_reward("gui_defect")}, None, [NONE, "junk"], {"solution": [NONE, SHIFT]})
    assert out.per_func[:, 0].tolist() == [1.0, 0.0]
    assert not math.isnan(column_mean(out, "gui_defect"))


def test_defect_score_direct():
    assert defect_score(None, ("none", None)) == 0.0
    assert defect_score(("a", [0.0, 0.0, 2.0, 2.0]), ("a", [0.0, 0.0, 2.0, 4.0])) == pytest.approx(0.75)  # IoU 4/8


# Four samples for the metrics: (prediction, truth).
PAIRS = [
    (("none", None), ("none", None)),  # right type
    (("shifted_widget", [0.0, 0.0, 20.0, 20.0]), ("shifted_widget", [0.0, 0.0, 20.0, 20.0])),  # right, IoU 1
    (("missing_widget", [10.0, 0.0, 30.0, 20.0]), ("shifted_widget", [0.0, 0.0, 20.0, 20.0])),  # wrong, IoU 1/3
    (None, ("color_change", [0.0, 0.0, 10.0, 10.0])),  # unparsed: wrong, IoU 0
]


def test_defect_accuracy_and_region_iou():
    assert defect_accuracy(PAIRS) == pytest.approx(2 / 4)  # samples 1 and 2
    # Over the 3 samples with a true defect: (1 + 1/3 + 0) / 3 = 4/9; the wrong type still localises.
    assert region_iou(PAIRS) == pytest.approx(4 / 9)
    assert region_iou(PAIRS[:1]) is None  # no true defect: undefined, not 0
    with pytest.raises(ValueError):
        defect_accuracy([])


def test_rows_and_metrics_for_the_evaluator():
    texts = [NONE, SHIFT, _ans("missing_widget", [10, 0, 30, 20]), "no idea"]
    sols = [NONE, SHIFT, SHIFT, '{"defect":"color_change","bbox_2d":[0,0,10,10]}']
    rows = parse_defect_rows(texts, sols, [[112, 112]] * 4, [[112, 112]] * 4)
    assert [r["type_correct"] for r in rows] == [True, True, False, False]
    assert [r["parsed"] for r in rows] == [True, True, True, False]
    assert rows[0]["iou"] is None and rows[2]["iou"] == pytest.approx(1 / 3)
    assert rows[3]["pred_defect"] is None and rows[3]["true_box"] == [0.0, 0.0, 10.0, 10.0]
    json.dumps(rows)  # JSON-able for the predictions file
    m = defect_metrics(rows)
    assert m["defect_acc"] == pytest.approx(0.5)
    assert m["region_iou"] == pytest.approx(4 / 9)  # (1 + 1/3 + 0) / 3
    assert m["score"] == pytest.approx((1.0 + 1.0 + 0.0 + 0.0) / 4)
    assert m["parsed"] == pytest.approx(0.75)
    assert "region_iou" not in defect_metrics(rows[:1])  # only a "none" sample
