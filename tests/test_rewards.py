"""Tests for vlmr1.rewards: box parsing, IoU arithmetic, REC/format rewards, registry, compute_rewards."""

import math

import pytest
import torch

from vlmr1.rewards import RewardFunctionError, available_rewards, compute_rewards, get_reward, registry
from vlmr1.rewards.grounding import AREA_RATIO_MAX, IOU_THRESHOLD, box_area, iou, parse_box, scale_box


def column_mean(out, name: str) -> float:
    """A reward's mean over the rows it applies to (None rows are NaN and left out), as the trainer logs it."""
    return float(out.per_func[:, out.names.index(name)].nanmean())


# ---------------------------------------------------------------- parse_box


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>[1, 2, 3, 4]</answer>", [1, 2, 3, 4]),
        ("[1,2,3,4]", [1, 2, 3, 4]),  # no tags: the whole text is searched
        ("The box is [10.5, 20.25, 30, 40.0].", [10.5, 20.25, 30, 40]),  # float coords
        ("<answer>[-5, -3, 10, 12]</answer>", [-5, -3, 10, 12]),  # negative coords
        ("<answer>[ 1 ,2 , 3,4 ]</answer>", [1, 2, 3, 4]),  # free spacing
        ('<answer>{"bbox_2d": [1, 2, 3, 4], "label": "red circle"}</answer>', [1, 2, 3, 4]),
        ('[{"label": "x", "bbox_2d": [5, 6, 7, 8]}] and [1, 2, 3, 4]', [5, 6, 7, 8]),  # bbox_2d key wins
        ("<answer>[30, 40, 10, 20]</answer>", [30, 40, 10, 20]),  # inverted: parsed as written, iou rejects
        ("<answer>[1,2,3,4]</answer> wait <answer>[5,6,7,8]</answer>", [5, 6, 7, 8]),  # LAST answer
        ("<answer><answer>[1,2,3,4]</answer></answer>", [1, 2, 3, 4]),  # nested: last pair holds the box
        ("<answer>[1,2,3,4]", [1, 2, 3, 4]),  # unclosed tag: no complete answer -> whole text
        ("[9, 9, 9, 9] <answer>no box here</answer>", None),  # answer present: no fallback to the text
        ("<answer>1, 2, 3, 4</answer>", None),  # no brackets
        ("<answer>[1, 2, 3]</answer>", None),  # 3 numbers
        ("<answer>[1, 2, 3, 4, 5]</answer>", None),  # 5 numbers
        ("<answer>[a, b, c, d]</answer>", None),
        ("lorem ]] ipsum [[ ,,, 12", None),  # text garbage
        ("", None),
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == expected


# ---------------------------------------------------------------- iou


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 5, 15, 15], 1 / 7),  # inter 5*5=25, union 100+100-25=175 -> 25/175
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),  # inter 5*10=50, union 100+100-50=150
        ([0, 0, 10, 10], [2, 2, 8, 8], 0.36),  # contained: inter 6*6=36, union 100
        ([-10, -10, 10, 10], [0, 0, 10, 10], 0.25),  # negative: inter 100, union 400+100-100=400
        ([0.5, 0.5, 2.5, 2.5], [1.5, 1.5, 3.5, 3.5], 1 / 7),  # floats: inter 1*1=1, union 4+4-1=7
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # sharing an edge: zero-width intersection
        ([10, 0, 0, 10], [0, 0, 10, 10], 0.0),  # inverted in x -> invalid
        ([0, 0, 10, 10], [0, 10, 10, 0], 0.0),  # inverted in y -> invalid
        ([5, 0, 5, 10], [0, 0, 10, 10], 0.0),  # zero width: valid but no area
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # both empty: union 0 must not divide by zero
        ([0, 0, 10, math.nan], [0, 0, 10, 10], 0.0),
    ],
)
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert iou(b, a) == pytest.approx(expected, abs=1e-12)  # symmetric


@pytest.mark.parametrize(
    "box, expected",
    [
        ([0, 0, 10, 10], 100.0),
        ([-2, -2, 12, 12], 196.0),  # 14 * 14
        ([0.5, 1.0, 2.0, 4.0], 4.5),  # 1.5 * 3
        ([5, 0, 5, 10], 0.0),  # zero width
        ([10, 0, 0, 10], 0.0),  # inverted x: (0-10)*(10-0) would be -100
        ([10, 10, 0, 0], 0.0),  # inverted both: the product would be +100
    ],
)
def test_box_area(box, expected):
    assert box_area(box) == expected


def test_iou_continuous_not_plus_one():
    # With the +1 pixel convention [0,0,1,1] vs [1,1,2,2] would overlap by one pixel (1/7);
    # continuous boxes only touch at a corner.
    assert iou([0, 0, 1, 1], [1, 1, 2, 2]) == 0.0
    # continuous: [0,0,2,2] vs [1,0,3,2]: inter 1*2=2, union 4+4-2=6 -> 1/3 (the +1 convention gives 6/12)
    assert iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(1 / 3, abs=1e-12)


# ---------------------------------------------------------------- scaling


def test_scale_box():
    # Qwen input 112x112, original 224x224: every coordinate doubles.
    assert scale_box([28, 28, 56, 56], (112, 112), (224, 224)) == [56, 56, 112, 112]
    # Non-uniform: w 100 -> 200 (x2), h 50 -> 200 (x4).
    assert scale_box([10, 10, 20, 20], (100, 50), (200, 200)) == [20, 40, 40, 80]
    with pytest.raises(ValueError, match="positive"):
        scale_box([0, 0, 1, 1], (0, 10), (10, 10))


def test_rec_reward_scales_prediction_to_original_image():
    comp = ["<answer>[28, 28, 56, 56]</answer>"]
    sol = [[56, 56, 112, 112]]
    iou_fn = get_reward("iou")
    assert iou_fn(comp, solution=sol, image_size=[(224, 224)], input_size=[(112, 112)]) == [1.0]
    # Without sizes the prediction stays in input pixels: it only touches the true box at (56, 56).
    assert iou_fn(comp, solution=sol) == [0.0]
    # Only one of the two sizes: nothing to scale with.
    assert iou_fn(comp, solution=sol, image_size=[(224, 224)]) == [0.0]
    # Equal sizes: no scaling, and the unscaled box matches a ground truth in the same pixels.
    assert iou_fn(comp, solution=[[28, 28, 56, 56]], image_size=[(112, 112)], input_size=[[112, 112]]) == [1.0]


# ---------------------------------------------------------------- REC rewards

GT = [0, 0, 10, 10]  # true area 100


@pytest.mark.parametrize(
    "completion, solution, exp_iou, exp_acc50, exp_tight",
    [
        ("<answer>[0,0,10,10]</answer>", GT, 1.0, 1.0, 1.0),
        ("<answer>[5,5,15,15]</answer>", "[0,0,10,10]", 1 / 7, 0.0, 0.0),  # 25/175
        ("<answer>[0,0,10,12]</answer>", "<answer>[0, 0, 10, 10]</answer>", 5 / 6, 1.0, 1.0),  # 100/120; area 120<=130
        ("<answer>[0,0,10,13]</answer>", GT, 10 / 13, 1.0, 1.0),  # area 130 == 1.3*100: still paid
        ("<answer>[0,0,10,14]</answer>", GT, 10 / 14, 1.0, 0.0),  # hedge: area 140 > 130
        ("<answer>[0,0,20,10]</answer>", GT, 0.5, 1.0, 0.0),  # 100/200 = 0.5 exactly: threshold inclusive
        ("<answer>[-2,-2,12,12]</answer>", GT, 100 / 196, 1.0, 0.0),  # negative coords, area 14*14=196
        ("<answer>[0.0, 0.0, 5.0, 10.0]</answer>", GT, 0.5, 1.0, 1.0),  # floats: 50/100; small boxes are fine
        ("<answer>[0,0,10,9.9]</answer>", GT, 0.99, 1.0, 1.0),
        ("<answer>[0,0,4.9,10]</answer>", GT, 0.49, 0.0, 0.0),  # just under the threshold
        ("<answer>[10,10,0,0]</answer>", GT, 0.0, 0.0, 0.0),  # inverted
        ("<answer>[1,2,3]</answer>", GT, 0.0, 0.0, 0.0),  # 3 numbers
        ("the red circle is top left", GT, 0.0, 0.0, 0.0),  # no brackets
        ("", GT, 0.0, 0.0, 0.0),
        ("<answer><answer>[0,0,10,10]</answer></answer>", GT, 1.0, 1.0, 1.0),  # nested: format reward's job
    ],
)
def test_rec_rewards(completion, solution, exp_iou, exp_acc50, exp_tight):
    cols = {"solution": [solution]}
    assert get_reward("iou")([completion], **cols)[0] == pytest.approx(exp_iou, abs=1e-9)
    assert get_reward("acc50")([completion], **cols) == [exp_acc50]
    assert get_reward("rec_acc")([completion], **cols) == [exp_acc50]
    assert get_reward("acc50_tight")([completion], **cols) == [exp_tight]


def test_rec_constants():
    assert (IOU_THRESHOLD, AREA_RATIO_MAX) == (0.5, 1.3)


@pytest.mark.parametrize("bad", ["no box", "[1,2,3]", [1, 2, 3], None])
def test_rec_unreadable_solution_is_an_error(bad):
    with pytest.raises(ValueError, match="sample 0"):
        get_reward("iou")(["[0,0,1,1]"], solution=[bad])


# ---------------------------------------------------------------- format rewards


@pytest.mark.parametrize(
    "completion, exp_format, exp_answer_format",
    [
        ("<think>look</think><answer>[1,2,3,4]</answer>", 1.0, 1.0),
        ("  <think>a\nb</think>\n<answer>x</answer>\n", 1.0, 0.0),  # layout ok, no box in the answer
        ("<answer>[1,2,3,4]</answer>", 0.0, 1.0),  # the tiny model's layout
        ('The target: <answer>{"bbox_2d": [1, 2, 3, 4]}</answer>', 0.0, 1.0),
        ("<think>a</think><answer>[1,2,3,4]</answer> trailing", 0.0, 1.0),
        ("<think>a</think><answer><answer>[1,2,3,4]</answer></answer>", 0.0, 0.0),  # nested answer tags
        ("<think>a</think><think>b</think><answer>[1,2,3,4]</answer>", 0.0, 1.0),  # two think blocks
        ("<answer>[1,2,3,4]</answer><answer>[1,2,3,4]</answer>", 0.0, 0.0),  # two answers
        ("</answer>[1,2,3,4]<answer>", 0.0, 0.0),  # reversed tags
        ("<think>a</think><answer>[1,2,3,4]", 0.0, 0.0),  # unclosed
        ("<answer>[1, 2, 3]</answer>", 0.0, 0.0),  # 3 numbers
        ("<think>a</think>", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_format_rewards(completion, exp_format, exp_answer_format):
    assert get_reward("format")([completion]) == [exp_format]
    assert get_reward("answer_format")([completion]) == [exp_answer_format]


# ---------------------------------------------------------------- compute_rewards


def _const(values):
    return lambda completions, **_: list(values)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("[1, 2, 3, 4]", 1.0),  # the tiny model's layout: a bare box
        ("  [10,20,30,40]\n", 1.0),  # surrounding whitespace allowed, spaces inside optional
        ("[1.5, 2, 3.25, 4]", 1.0),  # decimals are still a box
        ("[-3, 2, 30, 40]", 1.0),  # a negative coordinate is a (bad) box, but well formed
        ("[1, 2, 3]", 0.0),  # three numbers
        ("[1, 2, 3, 4, 5]", 0.0),  # five numbers
        ("[1, 2, 3, 4] and more", 0.0),  # trailing text
        ("The box is [1, 2, 3, 4]", 0.0),  # leading text
        ("<answer>[1, 2, 3, 4]</answer>", 0.0),  # tags are not the bare layout
        ("", 0.0),
        ("[a, b, c, d]", 0.0),
    ],
)
def test_box_format_reward(completion, expected):
    assert get_reward("box_format")([completion]) == [expected]


QWEN_REC = '<think>the red one</think><answer>```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "cup"}]\n```</answer>'


@pytest.mark.parametrize(
    "completion, expected",
    [
        (QWEN_REC, 1.0),  # Qwen2.5-VL's grounding answer, as VLM-R1's REC prompt asks for
        ('<think>x</think> <answer>{"bbox": [10.5, 20, 30, 40]}</answer>', 1.0),  # floats: what iou reads
        ("<think>x</think><answer></answer>", 0.0),  # empty answer: full reward under `format`
        ("<think>x</think><answer>the red cup</answer>", 0.0),  # no box
        ("<think>x</think><answer>[10, 20, 30, 40]</answer>", 0.0),  # a box but no object around it (VLM-R1: {..})
        ('<think>x</think><answer>{"bbox_2d": [10, 20, 30]}</answer>', 0.0),  # three numbers
        ('<answer>{"bbox_2d": [10, 20, 30, 40]}</answer>', 0.0),  # no think block
        ('<think>x</think><answer>{"bbox_2d": [10, 20, 30, 40]}</answer><answer>{}</answer>', 0.0),  # two answers
        ('preamble <think>x</think><answer>{"bbox_2d": [1, 2, 3, 4]}</answer>', 0.0),  # text before <think>
    ],
)
def test_rec_format_reward(completion, expected):
    # VLM-R1's format_reward_rec: <think>..</think> then an <answer> holding {..[x1,y1,x2,y2]..}.
    assert get_reward("rec_format")([completion]) == [expected]
    if expected:
        assert get_reward("format")([completion]) == [1.0]  # rec_format only ever narrows `format`


def test_compute_rewards_none_and_weights():
    out = compute_rewards(
        {"a": _const([1.0, 0.0, 0.5]), "b": _const([None, 1, 2])},
        weights=[2.0, 0.5],
        completions=["x", "y", "z"],
        columns={},
    )
    assert out.names == ["a", "b"]
    assert out.per_func.shape == (3, 2) and out.per_func.dtype == torch.float32
    assert torch.isnan(out.per_func).tolist() == [[False, True], [False, False], [False, False]]
    assert out.per_func[1:].tolist() == [[0.0, 1.0], [0.5, 2.0]]
    # total = 2*a + 0.5*b with the None left out: [2*1, 2*0 + 0.5*1, 2*0.5 + 0.5*2] = [2, 0.5, 2]
    assert out.total.tolist() == [2.0, 0.5, 2.0]
    # means over the applicable rows only: a (1+0+0.5)/3 = 0.5, b (1+2)/2 = 1.5
    assert [column_mean(out, "a"), column_mean(out, "b")] == [pytest.approx(0.5), pytest.approx(1.5)]


def test_compute_rewards_default_weights_and_all_none_row():
    out = compute_rewards({"a": _const([None, 3]), "b": _const([None, 4])}, None, ["x", "y"], {})
    assert out.total.tolist() == [0.0, 7.0]  # row 0: nothing applicable -> 0
    out = compute_rewards({"a": _const([None, None])}, None, ["x", "y"], {})
    assert math.isnan(column_mean(out, "a"))


def test_compute_rewards_passes_columns_to_real_rewards():
    funcs = {n: get_reward(n) for n in ["iou", "acc50", "answer_format"]}
    comps = ["<answer>[5,5,15,15]</answer>", "<answer>[0,0,10,10]</answer>", "garbage"]
    out = compute_rewards(funcs, [1.0, 1.0, 0.5], comps, {"solution": [GT] * 3, "problem": ["p"] * 3})
    # row 0: iou 1/7, acc 0, format 1 -> 1/7 + 0.5; row 1: 1 + 1 + 0.5; row 2: 0
    assert out.total.tolist() == pytest.approx([1 / 7 + 0.5, 2.5, 0.0], abs=1e-6)
    assert column_mean(out, "acc50") == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "returned, match",
    [
        ([1.0], "returned 1 values for 2"),  # wrong length
        ([1.0, 2.0, 3.0], "returned 3 values for 2"),
        (1.0, "returned float"),  # not a list
        ([1.0, "good"], "index 1"),
        ([1.0, math.nan], "index 1"),  # NaN must be spelled None
        ([math.inf, 0.0], "index 0"),
    ],
)
def test_compute_rewards_rejects_bad_returns(returned, match):
    with pytest.raises(RewardFunctionError, match=rf"'sloppy'.*{match}"):
        compute_rewards({"ok": _const([1, 1]), "sloppy": lambda c, **_: returned}, None, ["x", "y"], {})


def test_compute_rewards_names_a_raising_reward():
    def boom(completions, **_):
        raise KeyError("solution")

    with pytest.raises(RewardFunctionError, match="'boom' raised KeyError") as info:
        compute_rewards({"boom": boom}, None, ["x"], {})
    assert isinstance(info.value.__cause__, KeyError)


def test_compute_rewards_names_the_sample_a_reward_fails_on():
    # The reward chokes only on the second row's solution; the error names that row's sample id.
    def picky(completions, solution, **_):
        return [float(int(s)) for s in solution]

    cols = {"solution": ["1", "x", "2"], "sample_id": ["a", "b", "c"]}
    with pytest.raises(RewardFunctionError, match=r"'picky' raised ValueError on sample 'b' \(row 1\)"):
        compute_rewards({"picky": picky}, None, ["p", "q", "r"], cols)


def test_compute_rewards_validates_shapes():
    with pytest.raises(ValueError, match="2 reward weights for 1 rewards"):
        compute_rewards({"a": _const([1])}, [1.0, 2.0], ["x"], {})
    with pytest.raises(ValueError, match="column 'solution' has 2 rows for 1"):
        compute_rewards({"a": _const([1])}, None, ["x"], {"solution": [GT, GT]})


# ---------------------------------------------------------------- registry and user rewards


def test_registry_names():
    assert {"iou", "acc50", "rec_acc", "acc50_tight", "format", "answer_format", "box_format"} <= set(available_rewards())
    assert get_reward("rec_acc") is get_reward("acc50")
    with pytest.raises(ValueError, match="unknown reward 'nope'.*acc50"):
        get_reward("nope")


def test_register_rejects_a_second_function_under_a_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="'iou' is already registered"):
        registry.register("iou")(_const([]))
    fn = registry.register("my_new", "my_alias")(_const([]))
    assert get_reward("my_alias") is fn and "my_new" in available_rewards()


USER_FILE = '''
from __future__ import annotations  # string annotations: @dataclass then looks the module up in sys.modules

from dataclasses import dataclass

@dataclass
class Cfg:
    bonus: float = 0.25

THRESHOLD = 3

def length_reward(completions, solution=None, **kwargs):
    return [len(c) + Cfg().bonus if s == "keep" else None for c, s in zip(completions, solution)]
'''


def test_user_reward_from_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    fn = get_reward(f"{path}:length_reward")
    out = compute_rewards({"len": fn}, [2.0], ["abc", "de"], {"solution": ["keep", "drop"]})
    # row 0: 2 * (3 + 0.25) = 6.5; row 1: None -> NaN, total 0
    assert out.total.tolist() == [6.5, 0.0]
    assert torch.isnan(out.per_func[1, 0])


def test_user_reward_errors(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    with pytest.raises(AttributeError, match=r"no function 'missing'.*length_reward"):
        get_reward(f"{path}:missing")
    with pytest.raises(TypeError, match="'THRESHOLD'.*not a function"):
        get_reward(f"{path}:THRESHOLD")
    with pytest.raises(FileNotFoundError, match="absent.py"):
        get_reward(f"{tmp_path / 'absent.py'}:length_reward")
    with pytest.raises(ValueError, match="names no function"):
        get_reward(f"{path}:")
