"""Tests for vlmr1.rewards.answer (default / mcq / yes_no / all_match) and the accuracy dispatcher."""

import threading

import pytest

from vlmr1.rewards import accuracy, answer, get_reward
from vlmr1.rewards.answer import bare_number, extract_choice, normalize_text, yes_or_no

# ---------------------------------------------------------------- default


@pytest.mark.parametrize(
    "completion, sol, expected",
    [
        ("<answer>0.5</answer>", "\\frac{1}{2}", 1.0),  # math-verify: 1/2 == 0.5
        ("<answer>\\frac{1}{2}</answer>", "0.5", 1.0),  # and the other way round
        ("<answer>$3$</answer>", "3", 1.0),  # LaTeX delimiters
        ("<answer>3.0</answer>", "3", 1.0),
        ("<answer>3 objects</answer>", "3", 1.0),  # math-verify reads the number in the text
        ("<answer>4</answer>", "3", 0.0),  # wrong answer
        ("<answer>3.0001</answer>", "3", 0.0),  # beyond math-verify's 6-decimal rounding
        ("The total is 3", "3", 1.0),  # no answer tags: the whole text
        ("<answer>3</answer>", "<answer> 3 </answer>", 1.0),  # solution wrapped in tags
        ("<answer>3</answer> no wait <answer>5</answer>", "5", 1.0),  # the LAST answer counts
        ("<answer>3</answer> no wait <answer>5</answer>", "3", 0.0),
        ("<answer>\\boxed{12}</answer>", "12", 1.0),
        ("<answer>50%</answer>", "0.5", 1.0),  # math-verify: 50/100
        ("<answer>1e3</answer>", "1000", 1.0),  # math-verify reads 1 ... the bare-number fallback says 1000
        ("<answer>1,000</answer>", "1000", 1.0),
        ("<answer>Paris.</answer>", "paris", 1.0),  # no math: normalised text (case, trailing period)
        ("<answer>  a  red\n car </answer>", "A red car", 1.0),  # whitespace collapsed
        ("<answer>Lyon</answer>", "Paris", 0.0),
        ("<answer></answer>", "3", 0.0),  # empty answer
        ("", "cat", 0.0),
        ("<answer>3</answer>", 3, 1.0),  # numeric solution from JSON
        ("<answer>0.25</answer>", 0.25, 1.0),
    ],
)
def test_default_reward(completion, sol, expected):
    assert get_reward("default")([completion], solution=[sol]) == [expected]


@pytest.mark.parametrize("bad", ["", "   ", "<answer> </answer>", None, [1, 2, 3, 4], True])
def test_default_unreadable_solution_is_an_error(bad):
    with pytest.raises(ValueError, match="sample 1"):
        get_reward("default")(["<answer>3</answer>", "<answer>3</answer>"], solution=["3", bad])


def test_default_works_off_the_main_thread():
    # math-verify's signal.alarm timeout raises off the main thread; the reward must switch it off there.
    result = {}
    t = threading.Thread(
        target=lambda: result.update(r=get_reward("default")(["<answer>0.5</answer>"], solution=["\\frac{1}{2}"]))
    )
    t.start()
    t.join(timeout=60)
    assert result["r"] == [1.0]


def test_default_math_verify_timeout_falls_back(monkeypatch):
    # 9^(9^(9^9)) makes sympy compute for minutes; the main-thread timeout (1 s here) must cut it
    # and leave the verdict to the fallbacks, which do not pay it.
    monkeypatch.setattr(answer, "MATH_VERIFY_TIMEOUT_S", 1)
    assert get_reward("default")(["<answer>$9^{9^{9^{9}}}$</answer>"], solution=["3"]) == [0.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", 3.0),
        (" $3.0$ ", 3.0),
        ("3.", 3.0),  # trailing period
        ("-2.5e3", -2500.0),
        ("1,000", 1000.0),  # thousands separators
        (".5", 0.5),
        ("12,34", None),  # not a thousands grouping
        ("3 objects", None),  # a number among words is not bare
        ("not 3", None),
        ("1e999", None),  # overflows to inf
        ("inf", None),
        ("", None),
    ],
)
def test_bare_number(text, expected):
    assert bare_number(text) == expected


# ---------------------------------------------------------------- mcq


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b", "B"),  # a lone letter in any case
        ("**C**", "C"),
        ("Answer: B", "B"),
        ("the answer is D", "D"),
        ("Option A is wrong; the correct option is D.", "D"),  # the last explicit phrase
        ("A. Paris", "A"),  # an opening label
        ("C) 12", "C"),
        ("I think it is (C) because of the colour", "C"),
        ("A cat is on the mat", None),  # the article, not a choice
        ("A cat. The answer is C", "C"),
        ("I think it is C", "C"),  # the pronoun "I" is skipped
        ("C is correct", "C"),
        ("B because the cat is red", "B"),  # VLM-R1 needs punctuation after the letter: None there
        ("B or C", None),  # a hedge names no choice
        ("The answer is a dog", None),  # lowercase "a" after "answer is" is the article
        ("U.S. army", None),  # "U." followed by "S" is no label, and U/S are two letters
        ("I'm sure it's B", "B"),
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    "completion, sol, expected",
    [
        ("<think>...</think><answer>B</answer>", "B", 1.0),
        ("<answer>(B)</answer>", "<answer> B </answer>", 1.0),
        ("<answer>B. Paris</answer>", "B", 1.0),
        ("<answer>The answer is C</answer>", "B", 0.0),
        ("<answer>A cat is on the mat</answer>", "A", 0.0),  # the "A cat" trap: no letter -> 0
        ("<answer>A</answer>", "A", 1.0),
        ("<answer>B or C</answer>", "B", 0.0),  # hedging earns nothing
        ("<answer>Paris</answer>", "B", 0.0),  # no letter
        ("The answer is (D).", "D", 1.0),  # no tags: the whole text
        ("<answer>d</answer>", "D", 1.0),
    ],
)
def test_mcq_reward(completion, sol, expected):
    assert get_reward("mcq")([completion], solution=[sol]) == [expected]


@pytest.mark.parametrize("bad", ["Paris", "", "B or C"])
def test_mcq_unreadable_solution_is_an_error(bad):
    with pytest.raises(ValueError, match="sample 0"):
        get_reward("mcq")(["<answer>B</answer>"], solution=[bad])


# ---------------------------------------------------------------- yes_no


@pytest.mark.parametrize(
    "completion, sol, expected",
    [
        ("<answer>yes</answer>", "yes", 1.0),
        ("<answer>Yes.</answer>", "<answer> yes </answer>", 1.0),
        ("<answer>No, there is none.</answer>", "no", 1.0),
        ("<answer>no</answer>", "yes", 0.0),
        ("<answer>I see two eyes</answer>", "yes", 0.0),  # "eyes" is not "yes" (VLM-R1 paid this 1.0)
        ("<answer>a red nose</answer>", "no", 0.0),  # "nose" is not "no"
        ("<answer>not sure</answer>", "no", 0.0),  # "not" is not "no"
        ("<answer>yes and no</answer>", "yes", 0.0),  # both: no answer
        ("<answer>YES, yes!</answer>", "yes", 1.0),  # repeats of one word are fine
        ("<answer>maybe</answer>", "no", 0.0),  # neither
        ("Yes", "Yes", 1.0),  # no tags
    ],
)
def test_yes_no_reward(completion, sol, expected):
    assert get_reward("yes_no")([completion], solution=[sol]) == [expected]


@pytest.mark.parametrize(
    "text, expected",
    [("yes", "yes"), ("eyes", None), ("nose", None), ("yes and no", None), ("No, no.", "no"), ("yes/no", None)],
)
def test_yes_or_no(text, expected):
    assert yes_or_no(text) == expected


@pytest.mark.parametrize("bad", ["maybe", "yes or no", "eyes"])
def test_yes_no_unreadable_solution_is_an_error(bad):
    with pytest.raises(ValueError, match="sample 0"):
        get_reward("yes_no")(["<answer>yes</answer>"], solution=[bad])


# ---------------------------------------------------------------- all_match


@pytest.mark.parametrize(
    "completion, sol, expected",
    [
        ("<answer>red car</answer>", "red car", 1.0),
        ("<answer>Red Car.</answer>", "red car", 1.0),  # case and one trailing period
        ("<answer>  red \n\t car  </answer>", "red car", 1.0),  # whitespace collapsed
        ("<answer>red car</answer>", "<answer> red car </answer>", 1.0),
        ("<answer>red cars</answer>", "red car", 0.0),
        ("<answer>red</answer>", "red car", 0.0),
        ("<answer>0.5</answer>", "\\frac{1}{2}", 0.0),  # no math here: text must match
        ("red car", "red car", 1.0),  # no tags
        ("<answer>red car..</answer>", "red car", 0.0),  # only one trailing period is dropped
        ("<answer></answer>", "red car", 0.0),
    ],
)
def test_all_match_reward(completion, sol, expected):
    assert get_reward("all_match")([completion], solution=[sol]) == [expected]


@pytest.mark.parametrize(
    "text, expected",
    [(" Red  Car. ", "red car"), ("A\nB", "a b"), ("x.", "x"), ("x..", "x."), ("", "")],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


# ---------------------------------------------------------------- accuracy dispatcher


def test_accuracy_dispatches_per_sample():
    completions = [
        "<answer>0.5</answer>",  # default, right
        "<answer>B</answer>",  # mcq, wrong (C)
        "<answer>I see eyes</answer>",  # yes_no, neither word -> 0
        "<answer>4</answer>",  # None -> default, right
        "<answer>(C)</answer>",  # mcq, right
        "<answer>no</answer>",  # yes_no, right
        "<answer>[0, 0, 10, 5]</answer>",  # rec -> iou: inter 50, union 100 -> 0.5
    ]
    solution = ["\\frac{1}{2}", "C", "yes", "4", "C", "no", [0, 0, 10, 10]]
    methods = ["default", "mcq", "yes_no", None, "mcq", "yes_no", "rec"]
    out = get_reward("accuracy")(completions, solution=solution, reward_method=methods, sample_id=list("abcdefg"))
    assert out == pytest.approx([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5], abs=1e-12)


def test_accuracy_passes_matching_column_subsets(monkeypatch):
    seen = {}

    def spy(completions, solution, **cols):
        seen.update(completions=completions, solution=solution, **cols)
        return [0.25] * len(completions)

    monkeypatch.setitem(accuracy.METHOD_ALIASES, "spy_method", "spy")
    from vlmr1.rewards import registry

    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY, "spy": spy})
    methods = ["default", "spy_method", "spy_method"]
    out = get_reward("accuracy")(["a", "b", "c"], solution=["1", "2", "3"], reward_method=methods, extra=[10, 20, 30])
    # sample 0: default "a" vs "1" -> 0.0; samples 1 and 2: the spy's 0.25
    assert out == [0.0, 0.25, 0.25]
    assert seen["completions"] == ["b", "c"] and seen["solution"] == ["2", "3"] and seen["extra"] == [20, 30]


def test_accuracy_without_method_column_is_default():
    assert get_reward("accuracy")(["<answer>3</answer>", "x"], solution=["3", "3"]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "methods, match",
    [
        (["default", "nonsense"], r"sample 1: unknown accuracy method 'nonsense'"),
        (["accuracy", "default"], r"sample 0: .*'accuracy' call itself"),
        (["default", "length"], r"sample 1: .*call itself"),
        (["default", 3], r"sample 1: reward_method 3 is not a string"),
        (["x.py:f", "default"], r"sample 0: unknown accuracy method 'x.py:f'"),  # no code from dataset rows
        (["default"], r"1 rows for 2 completions"),
    ],
)
def test_accuracy_rejects_bad_methods(methods, match):
    with pytest.raises(ValueError, match=match):
        get_reward("accuracy")(["<answer>3</answer>", "<answer>3</answer>"], solution=["3", "3"], reward_method=methods)


def test_accuracy_names_batch_indices_of_a_bad_solution():
    with pytest.raises(ValueError, match=r"'mcq' on batch samples \[1, 2\].*sample 1: solution 'Paris'"):
        get_reward("accuracy")(["B", "B", "B"], solution=["3", "B", "Paris"], reward_method=["default", "mcq", "mcq"])
