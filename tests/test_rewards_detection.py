"""Tests for vlmr1.rewards.detection: answer parsing, COCO AP, and the OVD rewards.

Rewards: map / od_ap, od_ap50, odLength, weighted_sum.
"""

import json

import pytest

from vlmr1.rewards import available_rewards, get_reward
from vlmr1.rewards.detection import (
    Detection,
    coco_ap,
    parse_detections,
    truth_detections,
    weighted_sum_score,
)

D = Detection


def ans(*items, fence=False) -> str:
    """A completion answering with ``items`` = (box, label) pairs, as Qwen2.5-VL writes them."""
    body = json.dumps([{"bbox_2d": box, "label": label} for box, label in items])
    return f"<think>look</think><answer>{f'```json{chr(10)}{body}{chr(10)}```' if fence else body}</answer>"


# ---------------------------------------------------------------- parse_detections


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]', [D([1, 2, 3, 4], "cat")]),
        ('<answer>```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\n```</answer>', [D([1, 2, 3, 4], "cat")]),
        ('```json\n[{"bbox_2d": [1.5, 2, 3, 4], "label": "cat"}]\n```', [D([1.5, 2, 3, 4], "cat")]),  # fence, no tags
        ('<answer>{"bbox_2d": [1, 2, 3, 4], "label": "cat"}</answer>', [D([1, 2, 3, 4], "cat")]),  # one object
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "  Red   CIRCLE "}]', [D([1, 2, 3, 4], "red circle")]),  # normalised
        ('Found: [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}] done.', [D([1, 2, 3, 4], "cat")]),  # prose around
        ('<answer>[]</answer>', []),
        ("<answer>None</answer>", []),
        ("  none ", []),  # case-insensitive, no tags
        ("<answer>```json\nNone\n```</answer>", []),
        # last <answer> wins, as in grounding.answer_content
        ('<answer>[]</answer><answer>[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]</answer>', [D([1, 2, 3, 4], "cat")]),
        # malformed items dropped, the rest kept: no box, 3 numbers, string coords, boolean coords, no label
        (
            '[{"label": "a"}, {"bbox_2d": [1, 2, 3], "label": "b"}, {"bbox_2d": ["1", 2, 3, 4], "label": "c"},'
            ' {"bbox_2d": [true, 2, 3, 4], "label": "d"}, {"bbox_2d": [1, 2, 3, 4]},'
            ' {"bbox_2d": [5, 6, 7, 8], "label": "e"}]',
            [D([5, 6, 7, 8], "e")],
        ),
        ('[{"bbox_2d": [30, 40, 10, 20], "label": "cat"}]', [D([30, 40, 10, 20], "cat")]),  # inverted: kept, scores 0
        ('[{"bbox_2d": [1, 2, 3], "label": "cat"}]', None),  # every item malformed: garbage, not "nothing found"
        ("[1, 2, 3, 4]", None),  # a REC box is not a detection list
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"', None),  # truncated JSON
        ("the cat is on the left", None),
        ("None found", None),
        ('"cat"', None),  # valid JSON, not a list or object
        ("", None),
    ],
)
def test_parse_detections(text, expected):
    assert parse_detections(text) == expected


@pytest.mark.parametrize(
    "sol, expected",
    [
        ('<answer>```json\n[{"bbox_2d": [0, 0, 10, 10], "label": "Cat"}]\n```</answer>', [D([0, 0, 10, 10], "cat")]),
        ([{"bbox_2d": [0, 0, 10, 10], "label": "cat"}], [D([0, 0, 10, 10], "cat")]),  # already parsed
        ({"bbox_2d": [0, 0, 10, 10], "label": "cat"}, [D([0, 0, 10, 10], "cat")]),
        ("None", []),
        ([], []),
    ],
)
def test_truth_detections(sol, expected):
    assert truth_detections(sol, 0) == expected


@pytest.mark.parametrize(
    "sol",
    [
        "garbage",
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"label": "dog"}]',  # one malformed item: a data bug
        [{"bbox_2d": [10, 10, 0, 0], "label": "cat"}],  # inverted truth box
        [0, 0, 10, 10],  # a REC box
        None,
    ],
)
def test_truth_detections_rejects_bad_ground_truth(sol):
    with pytest.raises(ValueError, match="sample 3"):
        truth_detections(sol, 3)
    with pytest.raises(ValueError, match="sample 0"):  # and the rewards surface it instead of scoring 0
        get_reward("map")(["[]"], solution=[sol])


# ---------------------------------------------------------------- coco_ap

GT_A = [D([0, 0, 10, 10], "a")]  # area 100


def test_coco_ap_hand_case_iou_0_6():
    # Prediction [0,0,6,10] vs truth [0,0,10,10]: inter 60, union 100 -> IoU 0.6 exactly.
    # Thresholds .5,.55,.6 pass (IoU >= t); .65..95 fail. One TP ranked first: precision 1 at recall 1,
    # so the 101-point interpolated AP is exactly 1.0 at a passing threshold and 0 at a failing one.
    # AP@[.5:.95] = 3/10 = 0.3, AP50 = 1.0, AP75 = 0.0.
    out = coco_ap([[D([0, 0, 6, 10], "a")]], [GT_A])
    assert out["ap"] == pytest.approx(0.3, abs=1e-9)
    assert out["ap50"] == pytest.approx(1.0, abs=1e-9)
    assert out["ap75"] == pytest.approx(0.0, abs=1e-9)
    assert out["per_category"] == {"a": pytest.approx(0.3, abs=1e-9)}


def test_coco_ap_split_uses_101_point_interpolation():
    # Two images, one truth each. Image 1 exact (IoU 1), image 2 at IoU 0.6.
    # t <= .6 (3 thresholds): 2 TP of 2 -> AP 1.
    # t >= .65 (7 thresholds): ranked [TP (image 1), FP (image 2)]: recall [.5, .5], precision [1, .5].
    #   Recall points 0, .01, ..., .50 (51 of 101) get precision 1, the 50 above .5 get 0 -> AP 51/101.
    preds = [[D([0, 0, 10, 10], "a")], [D([0, 0, 6, 10], "a")]]
    out = coco_ap(preds, [GT_A, GT_A])
    assert out["ap"] == pytest.approx((3 * 1 + 7 * 51 / 101) / 10, abs=1e-9)
    assert out["ap50"] == pytest.approx(1.0, abs=1e-9)
    assert out["ap75"] == pytest.approx(51 / 101, abs=1e-9)


@pytest.mark.parametrize(
    "preds, expected_ap50",
    [
        ([D([0, 0, 10, 10], "a"), D([50, 50, 60, 60], "a")], 1.0),  # [TP, FP]: precision 1 at recall 1
        # [FP, TP]: precision [0, 1/2], envelope 1/2 at every recall point. Same score 1.0 for both boxes:
        # only the listed order (kept by pycocotools' stable sort) tells the two apart.
        ([D([50, 50, 60, 60], "a"), D([0, 0, 10, 10], "a")], 0.5),
        # An inverted box is a false positive too. Inverted in x only, pycocotools given it as written would
        # compute area -10*10 = -100, outside every area range, and silently ignore it (AP50 1.0).
        ([D([60, 50, 50, 60], "a"), D([0, 0, 10, 10], "a")], 0.5),
        ([D([60, 60, 50, 50], "a"), D([0, 0, 10, 10], "a")], 0.5),  # inverted in both: area +100
        ([D([0, 0, 10, 10], "b")], 0.0),  # right box, wrong label: a miss for a, a false positive for b
    ],
)
def test_coco_ap_ranking_and_false_positives(preds, expected_ap50):
    assert coco_ap([preds], [GT_A])["ap50"] == pytest.approx(expected_ap50, abs=1e-9)


def test_coco_ap_no_cap_at_100_detections():
    # 150 false positives, then the true box: precision at recall 1 is 1/151 at every recall point.
    # With pycocotools' default maxDets=100 the true box would be cut off and AP would be 0.
    preds = [D([100 + 20 * k, 100, 110 + 20 * k, 110], "a") for k in range(150)] + [D([0, 0, 10, 10], "a")]
    assert coco_ap([preds], [GT_A])["ap50"] == pytest.approx(1 / 151, abs=1e-9)


@pytest.mark.parametrize(
    "preds, truths, expected",
    [
        # Predicted-only label b: COCO gives it AP -1 and skips it; here it scores 0 -> mean (1 + 0) / 2.
        ([[D([0, 0, 10, 10], "a"), D([20, 20, 30, 30], "b")]], [GT_A], 0.5),
        ([[D([0, 0, 10, 10], "a")]], [GT_A + [D([20, 20, 30, 30], "b")]], 0.5),  # truth-only label b: AP 0
        ([[]], [[]], 1.0),  # both empty: a correct "nothing here"
        ([[], []], [[], []], 1.0),
        ([[D([0, 0, 10, 10], "a")]], [[]], 0.0),  # no truth anywhere, predictions present
        ([[]], [GT_A], 0.0),  # truth present, no predictions (pycocotools would crash on [])
        # Split with an empty image: every box scores 1.0, so ties rank in image order, then listed order.
        # [TP (image 1), FP (image 2)]: precision 1 at recall 1 -> 1.0.
        ([[D([0, 0, 10, 10], "a")], [D([0, 0, 5, 5], "a")]], [GT_A, []], 1.0),
        # [FP (image 1), TP (image 2)]: precision [0, 1/2] -> 1/2 at every recall point.
        ([[D([0, 0, 5, 5], "a")], [D([0, 0, 10, 10], "a")]], [[], GT_A], 0.5),
        ([[D([0, 0, 10, 10], "a")], []], [GT_A, []], 1.0),  # an empty image beside a solved one costs nothing
    ],
)
def test_coco_ap_category_rule_and_edge_cases(preds, truths, expected):
    out = coco_ap(preds, truths)
    # Every box here is exact (IoU 1) or misses (IoU < .5), so AP is the same at every IoU threshold.
    for key in ("ap", "ap50", "ap75"):
        assert out[key] == pytest.approx(expected, abs=1e-9), key


def test_coco_ap_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 prediction lists for 1 images"):
        coco_ap([[], []], [[]])


# ---------------------------------------------------------------- rewards

RED, BLUE = [0, 0, 10, 10], [20, 20, 40, 40]  # areas 100 and 400
GT2 = json.dumps([{"bbox_2d": RED, "label": "red circle"}, {"bbox_2d": BLUE, "label": "blue square"}])
CORRECT = ans((RED, "red circle"), (BLUE, "blue square"))
EVERY_CATEGORY = ans((RED, "red circle"), (BLUE, "blue square"), ([50, 50, 60, 60], "green triangle"),
                     ([70, 70, 80, 80], "yellow square"))  # fmt: skip


@pytest.mark.parametrize(
    "completion, exp_map, exp_ap50, exp_len, exp_ws",
    [
        (CORRECT, 1.0, 1.0, 1.0, 1.0),
        (ans((RED, "red circle"), (BLUE, "blue square"), fence=True), 1.0, 1.0, 1.0, 1.0),
        (ans((RED, "Red  Circle"), (BLUE, "BLUE square")), 1.0, 1.0, 1.0, 1.0),  # labels normalised
        # Only red: red AP 1, blue AP 0 -> 0.5. odLength: n_gt 2 >= n_pred 1 -> no penalty.
        # ws: localisation 1/2 (blue missed counts 0); miss 1/2, false alarm 0 -> .7*.5 + .3*(1-.25) = .575
        (ans((RED, "red circle")), 0.5, 0.5, 0.5, 0.575),
        # Every prompt category: 4 labels, 2 with AP 1 -> 0.5; odLength .5 * 2/4 = .25;
        # ws: localisation 1, miss 0, false alarm 2/4 -> .7 + .3*(1 - .25) = .925
        (EVERY_CATEGORY, 0.5, 0.5, 0.25, 0.925),
        # Red at IoU .6 ([0,0,6,10]: 60/100): red AP .3, blue 1 -> .65; AP50 1.
        # ws: localisation (.6 + 1)/2 = .8 -> .56 + .3 = .86
        (ans(([0, 0, 6, 10], "red circle"), (BLUE, "blue square")), 0.65, 1.0, 0.65, 0.86),
        # Blue at IoU .5 exactly ([20,20,40,30]: 200/400): blue AP .1 (only t=.5), map (1+.1)/2 = .55.
        # ws: threshold inclusive, localisation (1 + .5)/2 = .75 -> .525 + .3 = .825
        (ans((RED, "red circle"), ([20, 20, 40, 30], "blue square")), 0.55, 1.0, 0.55, 0.825),
        # Blue at IoU .49 ([20,20,40,29.8]: 196/400): no match. ws: .7*.5 + .3*(1 - (.5 + .5)/2) = .5
        (ans((RED, "red circle"), ([20, 20, 40, 29.8], "blue square")), 0.5, 0.5, 0.5, 0.5),
        # Red listed twice after blue: AP unchanged (the FP ranks after both TPs); odLength 1 * 2/3;
        # ws: false alarm 1/3 -> .7 + .3*(1 - 1/6) = .95
        (ans((RED, "red circle"), (BLUE, "blue square"), (RED, "red circle")), 1.0, 1.0, 2 / 3, 0.95),
        # Labels swapped: right places, wrong names -> every box a miss and a false positive.
        # ws: localisation 0, miss 1, false alarm 1 -> 0 (VLM-R1 pays .3: a wrong-label pair is "matched")
        (ans((RED, "blue square"), (BLUE, "red circle")), 0.0, 0.0, 0.0, 0.0),
        # Red inverted: a false positive, red missed -> map (0 + 1)/2. ws: localisation 1/2, miss 1/2,
        # false alarm 1/2 -> .7*.5 + .3*(1 - .5) = .5
        (ans(([10, 10, 0, 0], "red circle"), (BLUE, "blue square")), 0.5, 0.5, 0.5, 0.5),
        ("<answer>None</answer>", 0.0, 0.0, 0.0, 0.0),
        ("<answer>[]</answer>", 0.0, 0.0, 0.0, 0.0),
        ("<answer>I see a red circle and a blue square</answer>", 0.0, 0.0, 0.0, 0.0),  # unparseable
        ("", 0.0, 0.0, 0.0, 0.0),
    ],
)
def test_detection_rewards(completion, exp_map, exp_ap50, exp_len, exp_ws):
    cols = {"solution": [GT2], "problem": ["ignored column"]}
    assert get_reward("map")([completion], **cols)[0] == pytest.approx(exp_map, abs=1e-9)
    assert get_reward("od_ap")([completion], **cols)[0] == pytest.approx(exp_map, abs=1e-9)
    assert get_reward("od_ap50")([completion], **cols)[0] == pytest.approx(exp_ap50, abs=1e-9)
    assert get_reward("odLength")([completion], **cols)[0] == pytest.approx(exp_len, abs=1e-9)
    assert get_reward("weighted_sum")([completion], **cols)[0] == pytest.approx(exp_ws, abs=1e-9)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>None</answer>", 1.0),  # correct "nothing here", however it is spelled
        ("<answer>none</answer>", 1.0),
        ("<answer>[]</answer>", 1.0),
        ("<answer>```json\n[]\n```</answer>", 1.0),
        (ans((RED, "red circle")), 0.0),  # hallucinated object
        ("<answer>nothing to see</answer>", 0.0),  # unparseable is never "nothing found"
        ('<answer>[{"bbox_2d": [1, 2, 3], "label": "x"}]</answer>', 0.0),  # all-garbage list likewise
    ],
)
@pytest.mark.parametrize("solution", ["None", "<answer>None</answer>", "[]", []])
def test_detection_rewards_empty_truth(completion, expected, solution):
    for name in ("map", "od_ap50", "odLength", "weighted_sum"):
        assert get_reward(name)([completion], solution=[solution]) == [pytest.approx(expected, abs=1e-9)], name


def test_reward_hack_listing_every_prompt_category_scores_lower():
    # Prompt: "find red circle, blue square, green triangle, yellow square"; the image holds only the
    # first two. Listing every category with made-up boxes for the absent ones must not pay.
    for name in ("map", "od_ap50", "odLength", "weighted_sum"):
        honest, hedged = get_reward(name)([CORRECT, EVERY_CATEGORY], solution=[GT2, GT2])
        assert hedged < honest - 0.05, name


def test_label_mismatch_is_a_miss():
    gt = [{"bbox_2d": RED, "label": "red circle"}]
    wrong = ans((RED, "blue square"))  # the right box, the wrong label
    for name in ("map", "od_ap50", "odLength", "weighted_sum"):
        assert get_reward(name)([wrong], solution=[gt]) == [0.0], name


def test_weighted_sum_matches_only_equal_labels():
    # Truth a [0,0,10,10]. Predictions: b on the exact box (IoU 1, wrong label), a at [0,0,10,8] (IoU .8).
    # Label-gated greedy matching pairs a with a: localisation .8, miss 0, false alarm 1/2
    # -> .7*.8 + .3*(1 - .25) = .56 + .225 = .785. (IoU-only greedy would take b first and score it 0.)
    pred = [D([0, 0, 10, 10], "b"), D([0, 0, 10, 8], "a")]
    assert weighted_sum_score(pred, GT_A) == pytest.approx(0.785, abs=1e-9)


def test_weighted_sum_greedy_takes_highest_iou_first():
    # Truths g0 [0,0,10,10], g1 [0,0,10,8]; one prediction p [0,0,10,9]: IoU .9 with both
    # (90/100 and 80/90 = .889): it matches g0 (the higher IoU), g1 is missed.
    # localisation .9/2 = .45, miss 1/2, false alarm 0 -> .7*.45 + .3*(1 - .25) = .315 + .225 = .54
    gt = [D([0, 0, 10, 10], "a"), D([0, 0, 10, 8], "a")]
    assert weighted_sum_score([D([0, 0, 10, 9], "a")], gt) == pytest.approx(0.54, abs=1e-9)


def test_detection_rewards_scale_prediction_to_original_image():
    # The model saw a 2x upscaled input (200x200) of a 100x100 image: its boxes are in input pixels.
    comp = ans(([0, 0, 20, 20], "red circle"), ([40, 40, 80, 80], "blue square"))
    sizes = {"image_size": [(100, 100)], "input_size": [[200, 200]]}
    for name in ("map", "od_ap50", "odLength", "weighted_sum"):
        fn = get_reward(name)
        assert fn([comp], solution=[GT2], **sizes) == [pytest.approx(1.0, abs=1e-9)], name
        # Unscaled, red [0,0,20,20] vs [0,0,10,10] has IoU .25 and blue [40,40,80,80] misses: well below 1.
        assert fn([comp], solution=[GT2])[0] < 0.5, name


def test_detection_rewards_registered():
    assert {"map", "od_ap", "od_ap50", "odLength", "weighted_sum"} <= set(available_rewards())
    assert get_reward("od_ap") is get_reward("map")


THREE = [
    {"bbox_2d": [0, 0, 10, 10], "label": "cat"},
    {"bbox_2d": [20, 20, 30, 30], "label": "dog"},
    {"bbox_2d": [40, 40, 50, 50], "label": "cat"},
]


def _cuts(text: str) -> list[str]:
    """Every prefix of ``text`` that stops inside the list: each position in each of its objects."""
    return [text[:k] for k in range(1, len(text) - 1)]


@pytest.mark.parametrize("fenced", [False, True])
def test_a_list_cut_off_anywhere_is_unparseable(fenced):
    # A rollout that hit the length limit mid-answer must not score: before, the fallback decoded
    # the first complete inner object as the whole answer (a cut inside the third object scored
    # map 0.505, weighted_sum 0.575). Every cut of a 3-object list, in every object, is None.
    full = json.dumps(THREE)
    for cut in _cuts(full):
        text = f"<answer>```json\n{cut}" if fenced else f"<think>ok</think><answer>{cut}"
        assert parse_detections(text) is None, cut


def test_truncated_answer_earns_nothing_from_the_detection_rewards():
    cut = json.dumps(THREE)[:-20]  # inside the third object
    sol = [json.dumps(THREE)]
    for name in ("map", "od_ap", "od_ap50", "weighted_sum"):
        assert get_reward(name)([cut], sol, image_size=[(100, 100)], input_size=[(100, 100)]) == [0.0], name


@pytest.mark.parametrize(
    "text",
    [
        'Found these: [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}] in the image.',  # prose around
        'Objects (see [note]): [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]',  # a closed bracket before
        '{"bbox_2d": [0, 0, 10, 10], "label": "cat"} is the answer',  # one object, prose after
        'I think [maybe: [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]',  # a stray bracket never closed
        'smile :-[ here [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]',
        'Use "[" then [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]',  # a bracket in quotes
    ],
)
def test_prose_around_a_complete_answer_still_parses(text):
    assert parse_detections(text) == [D([0, 0, 10, 10], "cat")]


@pytest.mark.parametrize(
    "text",
    [
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [1, 1, 5, 5], "label": "dog"},]',  # trailing comma
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"} {"bbox_2d": [1, 1, 5, 5], "label": "dog"}]',  # no comma
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [1, 1, 5, 5], "label": tr',  # cut in a literal
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [1, 1, 5, 5.',  # cut in a number
    ],
)
def test_a_broken_list_is_not_read_as_its_first_object(text):
    # A list that closes but is not JSON, or is cut inside a literal or a number, is one broken
    # answer: the objects inside it are not answers of their own.
    assert parse_detections(text) is None
