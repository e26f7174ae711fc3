"""Tests for vlmr1.rewards.length: the cosine curve by hand, correctness from ``accuracy``, units."""

import math

import pytest

from vlmr1.rewards import get_reward
from vlmr1.rewards.length import CHARS_PER_TOKEN, CORRECT_THRESHOLD, DEFAULT_MAX_TOKENS, cosine_scaled

# r = at_max + 0.5 * (at_0 - at_max) * (1 + cos(pi * t)), t = min(len / L, 1)
# correct: at_0 = 1.0, at_max = 0.5 -> r = 0.5 + 0.25 * (1 + cos(pi t))
# wrong:   at_0 = -0.5, at_max = 0.0 -> r = -0.25 * (1 + cos(pi t))
C45 = math.cos(math.pi / 4)  # 0.70710678


@pytest.mark.parametrize(
    "length, max_length, correct, expected",
    [
        (0, 100, True, 1.0),  # 0.5 + 0.25 * (1 + 1)
        (100, 100, True, 0.5),  # 0.5 + 0.25 * (1 - 1)
        (50, 100, True, 0.75),  # 0.5 + 0.25 * (1 + 0)
        (25, 100, True, 0.5 + 0.25 * (1 + C45)),  # 0.92677670
        (75, 100, True, 0.5 + 0.25 * (1 - C45)),  # 0.57322330
        (0, 100, False, -0.5),  # -0.25 * 2
        (100, 100, False, 0.0),  # -0.25 * 0
        (50, 100, False, -0.25),  # -0.25 * 1
        (25, 100, False, -0.25 * (1 + C45)),  # -0.42677670
        (75, 100, False, -0.25 * (1 - C45)),  # -0.07322330
        (250, 100, True, 0.5),  # clamped: t = min(2.5, 1) = 1 (unclamped cos(2.5 pi) = 0 would give 0.75)
        (200, 100, False, 0.0),  # clamped: unclamped cos(2 pi) = 1 would give -0.5 again
        (512, 1024, True, 0.75),  # t = 0.5 at another scale
    ],
)
def test_cosine_scaled(length, max_length, correct, expected):
    assert cosine_scaled(length, max_length, correct) == pytest.approx(expected, abs=1e-9)


def test_cosine_scaled_custom_values():
    # at_0 = 2, at_max = 1 (correct), t = 0.5: 1 + 0.5 * (2 - 1) * (1 + 0) = 1.5
    assert cosine_scaled(5, 10, True, correct_at_0=2.0, correct_at_max=1.0) == pytest.approx(1.5, abs=1e-9)
    # at_0 = -10, at_max = 0 (wrong), t = 0: -10
    assert cosine_scaled(0, 10, False, wrong_at_0=-10.0, wrong_at_max=0.0) == pytest.approx(-10.0, abs=1e-9)


@pytest.mark.parametrize(
    "length, max_length, match",
    [
        (-1, 10, "length"),
        (math.nan, 10, "length"),
        (1, 0, "max_length"),
        (1, -5, "max_length"),
        (1, math.inf, "max_length"),
    ],
)
def test_cosine_scaled_rejects_bad_lengths(length, max_length, match):
    with pytest.raises(ValueError, match=match):
        cosine_scaled(length, max_length, True)


def test_cosine_scaled_is_monotone_the_right_way():
    lengths = range(0, 101, 10)
    correct = [cosine_scaled(n, 100, True) for n in lengths]
    wrong = [cosine_scaled(n, 100, False) for n in lengths]
    assert all(a > b for a, b in zip(correct, correct[1:]))  # shorter right answers are better
    assert all(a < b for a, b in zip(wrong, wrong[1:]))  # longer wrong answers are punished less
    assert min(correct) > max(wrong)  # any right answer beats any wrong one


# ---------------------------------------------------------------- the registered reward


def test_length_reward_uses_accuracy_for_correctness():
    short_right = "<answer>3</answer>"
    long_right = "<think>" + "x" * 500 + "</think><answer>3</answer>"
    short_wrong = "<answer>4</answer>"
    long_wrong = "<think>" + "x" * 500 + "</think><answer>4</answer>"
    out = get_reward("length")([short_right, long_right, short_wrong, long_wrong], solution=["3"] * 4)
    assert out[0] > out[1]  # correct: shorter wins
    assert out[3] > out[2]  # wrong: longer wins
    assert min(out[0], out[1]) > max(out[2], out[3])


def test_length_reward_token_columns():
    # completion_length in tokens, scale max_completion_length = 100: 50 tokens -> t = 0.5.
    comps = ["<answer>3</answer>", "<answer>4</answer>", "<answer>3</answer>"]
    out = get_reward("length")(
        comps, solution=["3", "3", "3"], completion_length=[50, 50, 100], max_completion_length=[100, 100, 100]
    )
    # right at t=0.5 -> 0.75; wrong at t=0.5 -> -0.25; right at t=1 -> 0.5
    assert out == pytest.approx([0.75, -0.25, 0.5], abs=1e-9)


def test_length_reward_character_fallback():
    text = "<answer>3</answer>"  # 18 characters
    scale = CHARS_PER_TOKEN * DEFAULT_MAX_TOKENS  # 4 * 1024 = 4096 characters
    expected = 0.5 + 0.25 * (1 + math.cos(math.pi * 18 / scale))  # ~0.99995
    assert get_reward("length")([text], solution=["3"]) == pytest.approx([expected], abs=1e-12)
    # With only max_completion_length = 9 (tokens): 36 characters; 18 / 36 = 0.5 -> 0.75.
    assert get_reward("length")([text], solution=["3"], max_completion_length=[9]) == pytest.approx([0.75], abs=1e-12)


def test_length_reward_threshold_and_dispatch():
    # rec row -> continuous IoU; [0,0,10,5] vs [0,0,10,10]: 50/100 = 0.5 >= CORRECT_THRESHOLD -> correct;
    # [0,0,10,4]: 40/100 = 0.4 -> wrong. Both 0 tokens of 10: correct 1.0, wrong -0.5.
    assert CORRECT_THRESHOLD == 0.5
    out = get_reward("length")(
        ["<answer>[0, 0, 10, 5]</answer>", "<answer>[0, 0, 10, 4]</answer>"],
        solution=[[0, 0, 10, 10]] * 2,
        reward_method=["rec", "rec"],
        completion_length=[0, 0],
        max_completion_length=[10, 10],
    )
    assert out == pytest.approx([1.0, -0.5], abs=1e-9)


def test_length_reward_none_where_accuracy_is_none(monkeypatch):
    from vlmr1.rewards import accuracy, registry

    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY, "na": lambda c, s, **_: [None] * len(c)})
    monkeypatch.setitem(accuracy.METHOD_ALIASES, "na_method", "na")
    out = get_reward("length")(["<answer>3</answer>"] * 2, solution=["3", "3"], reward_method=["na_method", None])
    assert out[0] is None and out[1] == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * 18 / 4096)), abs=1e-12)


def test_length_takes_correctness_from_the_detection_score_of_detection_rows():
    # VLM-R1's cosine reward calls its accuracy dispatcher, so a detection row (method "map",
    # from the row or from data.reward_methods for its file) is correct when its detection score
    # is >= 0.5. 10 of 100 tokens: t = 0.1, 1 + cos(0.1 pi) = 1.951057.
    import json

    sol = json.dumps([{"bbox_2d": [0, 0, 10, 10], "label": "cat"}])
    cols = dict(solution=[sol, sol], reward_method=["map", "map"], completion_length=[10, 10], max_completion_length=[100, 100])
    right, wrong = sol, json.dumps([{"bbox_2d": [50, 50, 60, 60], "label": "cat"}])  # map 1.0 and 0.0
    got = get_reward("length")([right, wrong], **cols)
    assert got == [pytest.approx(0.5 + 0.25 * 1.951057, abs=1e-6), pytest.approx(-0.25 * 1.951057, abs=1e-6)]
