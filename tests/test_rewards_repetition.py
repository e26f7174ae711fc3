"""Tests for vlmr1.rewards.repetition: duplicate boxes in detection answers, n-gram repetition in text."""

import json

import pytest

from vlmr1.rewards import available_rewards, get_reward
from vlmr1.rewards.detection import Detection
from vlmr1.rewards.repetition import DUPLICATE_IOU, NGRAM, duplicate_box_rate, ngram_repetition

D = Detection


def ans(*items) -> str:
    body = json.dumps([{"bbox_2d": box, "label": label} for box, label in items])
    return f"<answer>{body}</answer>"


A, B = [0, 0, 10, 10], [20, 20, 30, 30]


@pytest.mark.parametrize(
    "completion, expected",
    [
        # ---- text: 1 - distinct / total word 3-grams
        ("", 0.0),
        ("too short", 0.0),  # 2 words < 3: no 3-gram, no penalty
        ("a b c", 0.0),  # one 3-gram, distinct
        ("the cat sat on the mat", 0.0),  # 4 3-grams, all distinct ("the" repeats, no 3-gram does)
        ("a b c a b c", -0.25),  # abc bca cab abc: 4 total, 3 distinct -> 1 - 3/4
        ("A b C a B c", -0.25),  # lower-cased first
        ("go go go go go", -2 / 3),  # 3 x (go go go): 1 distinct -> 1 - 1/3
        ("x y z x y z x y z", -4 / 7),  # 7 3-grams, 3 distinct -> 1 - 3/7
        ("<answer>None</answer>", 0.0),  # "nothing found" is not a detection list: text path, 1 token
        # ---- detection answers: duplicate-box rate
        (ans((A, "cat"), (B, "cat")), 0.0),
        (ans((A, "cat"), (A, "cat")), -0.5),  # the 2nd of 2 boxes repeats the 1st
        (ans((A, "cat"), (A, "cat"), (A, "cat"), (B, "dog")), -0.5),  # 2 of 4
        (ans((A, "cat"), (A, "dog")), 0.0),  # same box, another label: two objects, not a repeat
        (ans((A, "Red  Cat"), (A, "red cat")), -0.5),  # labels normalised before comparing
        (ans((A, "cat"), ([0, 0, 10, 9], "cat")), -0.5),  # IoU 90/100 = .9 >= DUPLICATE_IOU
        (ans((A, "cat"), ([0, 0, 10, 8.9], "cat")), 0.0),  # IoU .89: a different box
        (ans(([5, 0, 5, 10], "cat"), ([5, 0, 5, 10], "cat")), -0.5),  # zero-area twice: IoU 0, same coordinates
        # A detection answer is judged by its boxes only, even after a looping think block.
        ("<think>" + "look again " * 20 + "</think>" + ans((A, "cat"), (B, "cat")), 0.0),
    ],
)
def test_repetition_reward(completion, expected):
    out = get_reward("repetition")([completion], solution=["ignored"], problem=["ignored"])
    assert out == [pytest.approx(expected, abs=1e-12)]
    assert -1.0 < out[0] <= 0.0


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("a b a b a b", 2, 1 - 2 / 5),  # ab ba ab ba ab: 5 total, 2 distinct
        ("a b a b a b", 1, 1 - 2 / 6),
        ("a b a b a b", 6, 0.0),  # a single 6-gram
        ("a b a b a b", 7, 0.0),  # shorter than n
    ],
)
def test_ngram_repetition(text, n, expected):
    assert ngram_repetition(text, n) == pytest.approx(expected, abs=1e-12)


def test_duplicate_box_rate_counts_each_repeat_once():
    # boxes 2 and 3 both repeat box 1: 2 of 3 (VLM-R1's 1-gram rate: 1 - 1 distinct / 3 total, the same here)
    assert duplicate_box_rate([D(A, "cat")] * 3) == pytest.approx(2 / 3, abs=1e-12)
    assert duplicate_box_rate([]) == 0.0


def test_repetition_constants_and_registration():
    assert (DUPLICATE_IOU, NGRAM) == (0.9, 3)
    assert "repetition" in available_rewards()


def test_a_looping_answer_cut_off_by_the_length_limit_is_penalised():
    # The same box listed over and over until the length limit cut the list inside its 8th object.
    # Read as a fragment (its first complete object, the parser's old fallback) it looked like one
    # box: no duplicates, penalty 0. Unparseable now, it is scored as text: 7 objects of 7 words
    # plus 3 words of the cut one = 52 words, 50 word 3-grams; distinct are the first (it holds
    # the leading "["), the 7 of one period and the last (it ends in "2", not "2,"): 9 of 50.
    item = '{"bbox_2d": [1, 2, 3, 4], "label": "cat"}'
    text = "[" + ", ".join([item] * 7) + ', {"bbox_2d": [1, 2'
    assert get_reward("repetition")([text]) == [pytest.approx(-(1 - 9 / 50))]
