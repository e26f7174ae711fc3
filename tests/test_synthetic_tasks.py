"""Synthetic detection, counting and GUI-defect generators: determinism, loading, pixel truth, splits."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmr1.data import load_samples
from vlmr1.data.synthetic import gui
from vlmr1.data.synthetic.count import generate_count
from vlmr1.data.synthetic.det import generate_det
from vlmr1.data.synthetic.gui import DEFECTS, TITLE_H, generate_gui
from vlmr1.data.synthetic.rec import COLOURS, HELD_OUT, TRAIN_PAIRS
from vlmr1.rewards.gui import gui_defect_reward

GENERATORS = {"det": generate_det, "count": generate_count, "gui": generate_gui}
METHODS = {"det": "map", "count": "default", "gui": "gui_defect"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _png_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


def _img(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel).convert("RGB"))


def _components(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """4-connected components of `mask` as (box x1, y1, x2, y2 exclusive, fill fraction of the box)."""
    big = mask.size + 1
    lab = np.where(mask, np.arange(mask.size).reshape(mask.shape), big)
    while True:  # propagate the smallest index through each component until nothing changes
        m = lab.copy()
        m[1:] = np.minimum(m[1:], lab[:-1])
        m[:-1] = np.minimum(m[:-1], lab[1:])
        m[:, 1:] = np.minimum(m[:, 1:], lab[:, :-1])
        m[:, :-1] = np.minimum(m[:, :-1], lab[:, 1:])
        m = np.where(mask, m, big)
        if (m == lab).all():
            break
        lab = m
    out = []
    for v in np.unique(lab[mask]):
        ys, xs = np.nonzero(lab == v)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        out.append((box, len(xs) / ((box[2] - box[0]) * (box[3] - box[1]))))
    return out


def _shape(fill: float) -> str:
    # rec.render fills, sizes 10-40: square 1.0, circle 0.755-0.80, triangle 0.50-0.55.
    return "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle"


def _objects(img: np.ndarray) -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """Every drawn object recovered from exact palette-colour pixels: (colour, shape, box)."""
    found = []
    for colour, rgb in COLOURS.items():
        for box, fill in _components((img == np.array(rgb, np.uint8)).all(-1)):
            found.append((colour, _shape(fill), box))
    return found


# ---------------------------------------------------------------- shared: determinism, format, loading


@pytest.mark.parametrize("task", list(GENERATORS))
@pytest.mark.parametrize("split", ["in", "ood"])
def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, task, split):
    gen = GENERATORS[task]
    a, b, c = (gen(tmp_path / d, 6, split, seed=s) for d, s in (("a", 3), ("b", 3), ("c", 4)))
    assert a.read_bytes() == b.read_bytes()
    assert _png_bytes(a.parent) == _png_bytes(b.parent)
    assert len(_png_bytes(a.parent)) == (12 if task == "gui" else 6)
    assert a.read_bytes() != c.read_bytes()
    assert _png_bytes(a.parent) != _png_bytes(c.parent)


@pytest.mark.parametrize("task", list(GENERATORS))
def test_rows_load_and_name_their_method(tmp_path, task):
    path = GENERATORS[task](tmp_path, 4, "in", seed=0, name="val")
    assert path == tmp_path / "val.jsonl"
    rows = _rows(path)
    assert [r["id"] for r in rows] == [f"{task}-val-{i:06d}" for i in range(1, 5)]
    samples, skipped, _ = load_samples(str(path), None)
    assert len(samples) == 4 and not skipped
    for row, s in zip(rows, samples):
        assert row["accu_reward_method"] == METHODS[task] and s.reward_method == METHODS[task]
        assert row["task"] == task and row["image_size"] == [112, 112]
        assert s.solution == row["conversations"][1]["value"]
        assert all(Path(p).is_file() and Image.open(p).size == (112, 112) for p in s.images)
        human = row["conversations"][0]["value"]
        if task == "gui":  # two images, placed by the conversation: "Before: <image> After: <image> ..."
            assert len(s.images) == 2
            assert s.images[0].endswith("_before.png") and s.images[1].endswith("_after.png")
            assert human.startswith("Before: <image> After: <image> Is there a visual defect")
            assert human.count("<image>") == 2
        else:
            assert len(s.images) == 1 and human.startswith("<image>") and human.count("<image>") == 1


@pytest.mark.parametrize("task", list(GENERATORS))
def test_bad_arguments(tmp_path, task):
    with pytest.raises(ValueError, match="split"):
        GENERATORS[task](tmp_path, 1, "test", seed=0)
    with pytest.raises(ValueError, match="n >= 1"):
        GENERATORS[task](tmp_path, 0, "in", seed=0)


# ---------------------------------------------------------------- detection

CATEGORIES = re.compile(r"categories: (.*)\. Answer with")


@pytest.mark.parametrize("split", ["in", "ood"])
def test_det_boxes_are_the_pixels_and_absent_categories_are_absent(tmp_path, split):
    path = generate_det(tmp_path, 30, split, seed=2)
    for row in _rows(path):
        human, gpt = (t["value"] for t in row["conversations"])
        queried = CATEGORIES.search(human).group(1).split(", ")
        assert queried == row["categories"] and len(set(queried)) == len(queried)
        dets = json.loads(gpt)
        assert gpt == json.dumps(dets, separators=(",", ":"))  # compact
        assert [(d["bbox_2d"][1], d["bbox_2d"][0]) for d in dets] == sorted((d["bbox_2d"][1], d["bbox_2d"][0]) for d in dets)
        img = _img(tmp_path, row["image"])
        drawn = _objects(img)
        assert len(drawn) == row["n_objects"]
        # The answer is exactly the drawn objects of the queried categories: box, colour and shape from pixels.
        truth = sorted((f"{c} {s}", list(b)) for c, s, b in drawn if f"{c} {s}" in queried)
        assert sorted((d["label"], d["bbox_2d"]) for d in dets) == truth
        # 1-2 queried categories are nowhere in the image, so "list every category" is wrong.
        absent = set(queried) - {d["label"] for d in dets}
        assert 1 <= len(absent) <= 2
        assert not absent & {f"{c} {s}" for c, s, _ in drawn}
        # Objects are >= 2 px apart: the 1-px ring around each answer box holds no palette pixel.
        palette = np.zeros(img.shape[:2], bool)
        for rgb in COLOURS.values():
            palette |= (img == np.array(rgb, np.uint8)).all(-1)
        for d in dets:
            x1, y1, x2, y2 = d["bbox_2d"]
            ring = palette[max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1].sum() - palette[y1:y2, x1:x2].sum()
            assert ring == 0


def test_det_splits(tmp_path):
    rin = _rows(generate_det(tmp_path / "in", 60, "in", seed=1))
    rood = _rows(generate_det(tmp_path / "ood", 60, "ood", seed=1))
    train = {f"{c} {s}" for c, s in TRAIN_PAIRS}
    held = {f"{c} {s}" for c, s in HELD_OUT}
    assert all(set(r["categories"]) <= train for r in rin)  # held-out pairs never even named in `in`
    targets_ood = {d["label"] for r in rood for d in json.loads(r["conversations"][1]["value"])}
    assert targets_ood == held  # ood targets are held-out pairs, all of them used
    assert np.mean([r["n_objects"] for r in rood]) > np.mean([r["n_objects"] for r in rin]) + 1
    assert max(r["n_objects"] for r in rin) <= 4 and min(r["n_objects"] for r in rood) >= 3
    assert _img(tmp_path / "ood", rood[0]["image"])[:, :, 0].astype(int).std() > 10  # noise background
    # Repeated instances of one category occur (detection must find them all).
    assert any(len(d) > len({x["label"] for x in d}) for d in (json.loads(r["conversations"][1]["value"]) for r in rin))


# ---------------------------------------------------------------- counting

QUESTION = re.compile(r"How many (?:(\w+) objects|more (\w+)s than (\w+)s|(\w+)s) are there\?$")


def _recount(img: np.ndarray, question: str) -> int:
    colour, more, than, shape = QUESTION.search(question).groups()
    drawn = _objects(img)
    if colour:
        return sum(c == colour for c, _, _ in drawn)
    if shape:
        return sum(s == shape for _, s, _ in drawn)
    return sum(s == more for _, s, _ in drawn) - sum(s == than for _, s, _ in drawn)


@pytest.mark.parametrize("split", ["in", "ood"])
def test_count_answers_match_the_pixels(tmp_path, split):
    rows = _rows(generate_count(tmp_path, 30, split, seed=5))
    kinds = Counter(r["question_type"] for r in rows)
    assert set(kinds) == {"colour", "shape", "difference"}
    for row in rows:
        human, gpt = (t["value"] for t in row["conversations"])
        img = _img(tmp_path, row["image"])
        assert gpt == str(_recount(img, human)), row["id"]
        assert int(gpt) >= 0 and len(_objects(img)) == row["n_objects"] >= 1  # never an empty image


def test_count_answers_are_balanced_and_ood_counts_higher(tmp_path):
    ans = {}
    for split in ("in", "ood"):
        rows = _rows(generate_count(tmp_path / split, 500, split, seed=0))
        ans[split] = Counter(int(r["conversations"][1]["value"]) for r in rows)
        # A constant guess is weak: the most common answer is well under 40% (uniform over 6 values: ~17%).
        assert max(ans[split].values()) < 0.4 * 500, ans[split]
    assert set(ans["in"]) == set(range(6))  # 0..5
    assert set(ans["ood"]) == set(range(3, 9))  # 3..8: 6, 7 and 8 never occur in `in`


def test_count_splits_pairs_and_background(tmp_path):
    rin = _rows(generate_count(tmp_path / "in", 40, "in", seed=3))
    rood = _rows(generate_count(tmp_path / "ood", 40, "ood", seed=3))
    drawn_in = {(c, s) for r in rin for c, s, _ in _objects(_img(tmp_path / "in", r["image"]))}
    drawn_ood = {(c, s) for r in rood for c, s, _ in _objects(_img(tmp_path / "ood", r["image"]))}
    assert drawn_in and not drawn_in & set(HELD_OUT)
    assert drawn_ood & set(HELD_OUT)
    assert np.mean([r["n_objects"] for r in rood]) > np.mean([r["n_objects"] for r in rin]) + 2
    assert _img(tmp_path / "ood", rood[0]["image"])[:, :, 0].astype(int).std() > 10


# ---------------------------------------------------------------- GUI defects


def _inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


@pytest.mark.parametrize("split", ["in", "ood"])
def test_gui_difference_lies_in_the_defect_box(tmp_path, split):
    rows = _rows(generate_gui(tmp_path, 60, split, seed=4))
    shift_range = gui.SPLITS[split].shift
    for row in rows:
        before, after = (_img(tmp_path, p) for p in row["image"])
        answer = json.loads(row["conversations"][1]["value"])
        assert row["conversations"][1]["value"] == json.dumps(answer, separators=(",", ":"))
        assert answer["defect"] == row["defect"] in DEFECTS
        diff = (before != after).any(-1)
        if row["defect"] == "none":
            assert set(answer) == {"defect"} and row["changed_box"] is None
            assert (tmp_path / row["image"][0]).read_bytes() == (tmp_path / row["image"][1]).read_bytes()
            continue
        box, changed = answer["bbox_2d"], row["changed_box"]
        assert 0 <= box[0] < box[2] <= 112 and TITLE_H <= box[1] < box[3] <= 112  # below the title bar
        ys, xs = np.nonzero(diff)
        assert len(xs), row["id"]  # a defect is visible
        diff_box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert _inside(diff_box, changed), (row["id"], diff_box, changed)  # nothing changes elsewhere
        if row["defect"] == "shifted_widget":  # box = new place; changed also covers the old place
            assert _inside(box, changed)
            moved = (changed[2] - changed[0] - (box[2] - box[0]), changed[3] - changed[1] - (box[3] - box[1]))
            assert min(moved) == 0 and shift_range[0] <= max(moved) <= shift_range[1]
        else:
            assert changed == box
        if row["defect"] in ("missing_widget", "shifted_widget", "color_change"):
            # The whole widget changes (bar rounded corners): the diff spans nearly all of the box.
            assert diff_box[2] - diff_box[0] >= box[2] - box[0] - 2 and diff_box[3] - diff_box[1] >= box[3] - box[1] - 2


def test_gui_defect_mix_and_ood_shift(tmp_path):
    rin = _rows(generate_gui(tmp_path / "in", 150, "in", seed=1))
    rood = _rows(generate_gui(tmp_path / "ood", 150, "ood", seed=1))
    for rows in (rin, rood):
        kinds = Counter(r["defect"] for r in rows)
        assert set(kinds) == set(DEFECTS), kinds
        assert 0.25 <= kinds["none"] / 150 <= 0.42  # about a third
        assert max(v for k, v in kinds.items() if k != "none") <= 0.25 * 150  # no defect type dominates
    # ood: dark theme, more widgets.
    bright_in = np.mean([_img(tmp_path / "in", r["image"][0]).mean() for r in rin[:20]])
    bright_ood = np.mean([_img(tmp_path / "ood", r["image"][0]).mean() for r in rood[:20]])
    assert bright_in > 180 and bright_ood < 90
    assert max(r["n_widgets"] for r in rin) <= 6 < min(r["n_widgets"] for r in rood) + 1
    assert min(r["n_widgets"] for r in rin) >= 3


@pytest.mark.parametrize("split", ["in", "ood"])
def test_gui_solutions_score_full_reward(tmp_path, split):
    # The generator's answers are what the reward expects: each solution scores 1.0 against itself.
    rows = _rows(generate_gui(tmp_path, 30, split, seed=6))
    sols = [r["conversations"][1]["value"] for r in rows]
    assert gui_defect_reward(sols, sols, image_size=[r["image_size"] for r in rows]) == [1.0] * len(rows)


def test_gui_widget_text_fits_before_the_defect():
    # Layouts never cut their own text (truncation only comes from the defect): every button and
    # field's text, drawn unclipped, stays inside the box interior.
    rng = np.random.default_rng(0)
    for _ in range(50):
        for split in ("in", "ood"):
            theme = gui.THEMES[split][0]
            for w in gui.layout(rng, int(rng.integers(3, 9)), theme):
                assert _inside(w.box, (2, TITLE_H + 2, 110, 110)), w
                if w.kind != "label":
                    ink = gui.text_mask(w, 112).getbbox()
                    unclipped = gui._text_mask(112, gui._text_origin(w), w.text, None).getbbox()
                    assert ink == unclipped and _inside(ink, (w.box[0] + 1, w.box[1] + 1, w.box[2] - 1, w.box[3] - 1)), w
