"""The synthetic REC generator: determinism, geometry, pixel truth and split separation."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmr1.data import load_samples
from vlmr1.data.synthetic import HELD_OUT, TRAIN_PAIRS, generate_rec
from vlmr1.data.synthetic import rec
from vlmr1.data.synthetic.rec import COLOURS, SHAPES, Shape, background, render, scene

QUERY = re.compile(r"the (\w+) (\w+)\.$")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _target(row: dict) -> tuple[str, str]:
    colour, shape = QUERY.search(row["conversations"][0]["value"]).groups()
    return colour, shape


def _png_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


@pytest.mark.parametrize("split", ["in", "ood"])
def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, split):
    a = generate_rec(tmp_path / "a", 12, split, seed=3)
    b = generate_rec(tmp_path / "b", 12, split, seed=3)
    c = generate_rec(tmp_path / "c", 12, split, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert _png_bytes(a.parent) == _png_bytes(b.parent)
    assert len(_png_bytes(a.parent)) == 12
    assert a.read_bytes() != c.read_bytes()
    assert _png_bytes(a.parent) != _png_bytes(c.parent)


def test_row_format(tmp_path):
    path = generate_rec(tmp_path, 3, "in", seed=0)
    assert path == tmp_path / "in.jsonl"
    row = _rows(path)[0]
    assert row["id"] == "rec-in-000001"
    assert row["image"] == "images/rec-in-000001.png"
    assert (tmp_path / row["image"]).is_file()
    human, gpt = row["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt"
    assert human["value"].startswith(
        "<image>Please provide the bounding box coordinate of the region this sentence describes: the "
    )
    assert re.fullmatch(r"\[\d+, \d+, \d+, \d+\]", gpt["value"])
    assert row["accu_reward_method"] == "rec" and row["task"] == "rec"
    assert row["image_size"] == [112, 112]
    # The loader reads what the generator writes (images resolved next to the jsonl).
    samples, skipped, _ = load_samples(str(path), None)
    assert len(samples) == 3 and not skipped
    assert samples[0].problem.endswith(f"the {' '.join(_target(row))}.")
    assert samples[0].extra["n_objects"] == row["n_objects"]


def test_name_prefixes_ids_and_file(tmp_path):
    path = generate_rec(tmp_path, 2, "in", seed=0, name="val")
    assert path.name == "val.jsonl"
    assert _rows(path)[1]["id"] == "rec-val-000002"


def _colour_mask(img: np.ndarray, colour: str) -> np.ndarray:
    return (img == np.array(COLOURS[colour], np.uint8)).all(-1)


@pytest.mark.parametrize("split", ["in", "ood"])
def test_target_pixels_fill_exactly_the_box(tmp_path, split):
    path = generate_rec(tmp_path, 40, split, seed=7)
    for row in _rows(path):
        img = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"))
        assert img.shape == (112, 112, 3)
        x1, y1, x2, y2 = json.loads(row["conversations"][1]["value"])
        assert 0 <= x1 < x2 <= 112 and 0 <= y1 < y2 <= 112
        assert 16 <= x2 - x1 <= 40 and x2 - x1 == y2 - y1
        colour, shape = _target(row)
        mask = _colour_mask(img, colour)[y1:y2, x1:x2]
        ys, xs = np.nonzero(mask)
        # The tight box of the target colour inside the answer box is the answer box itself.
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x2 - x1, y2 - y1)
        # Fill fraction identifies the shape: square 1.0, circle ~pi/4 = 0.785, triangle ~0.5.
        fill = mask.mean()
        expected = {"square": (0.99, 1.0), "circle": (0.70, 0.86), "triangle": (0.45, 0.62)}[shape]
        assert expected[0] <= fill <= expected[1], (row["id"], shape, fill)


def test_scene_boxes_inside_unique_and_separated():
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(200):
        objs = scene(rng, 6, HELD_OUT, TRAIN_PAIRS + HELD_OUT, image_size=112, margin=2)
        counts.append(len(objs))
        assert objs[0][:2] in HELD_OUT
        pairs = [o[:2] for o in objs]
        assert len(set(pairs)) == len(pairs)
        for i, a in enumerate(objs):
            assert 0 <= a.box[0] < a.box[2] <= 112 and 0 <= a.box[1] < a.box[3] <= 112
            for b in objs[i + 1 :]:
                apart_x = a.box[2] + 2 <= b.box[0] or b.box[2] + 2 <= a.box[0]
                apart_y = a.box[3] + 2 <= b.box[1] or b.box[3] + 2 <= a.box[1]
                assert apart_x or apart_y, (a, b)
    assert max(counts) == 6  # crowded scenes do get filled, not just truncated


def test_render_each_shape_tight():
    for shape in SHAPES:
        for size in (16, 23, 40):
            o = Shape("orange", shape, (5, 9, 5 + size, 9 + size))
            img = np.asarray(render([o], background(np.random.default_rng(0), 112, "plain")))
            ys, xs = np.nonzero(_colour_mask(img, "orange"))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == o.box


def test_splits_separate_held_out_pairs(tmp_path):
    rin = _rows(generate_rec(tmp_path / "in", 150, "in", seed=1))
    rood = _rows(generate_rec(tmp_path / "ood", 150, "ood", seed=1))
    assert all(_target(r) not in HELD_OUT for r in rin)
    assert all(_target(r) in HELD_OUT for r in rood)
    assert {_target(r) for r in rood} == set(HELD_OUT)  # every held-out pair gets used
    assert len({_target(r) for r in rin}) == len(TRAIN_PAIRS)
    # ood scenes are more cluttered and sit on a noisy grey background.
    assert np.mean([r["n_objects"] for r in rood]) > np.mean([r["n_objects"] for r in rin]) + 1
    assert min(r["n_objects"] for r in rood) >= 3 and max(r["n_objects"] for r in rin) <= 4
    img_ood = np.asarray(Image.open(tmp_path / "ood" / rood[0]["image"]).convert("RGB")).astype(int)
    assert img_ood[:, :, 0].std() > 10  # textured, not plain


def test_pairs_shift_changes_only_the_target_pair(tmp_path):
    rows = _rows(generate_rec(tmp_path, 150, "ood", seed=1, min_objects=2, max_objects=4, ood_shift="pairs"))
    assert all(_target(r) in HELD_OUT for r in rows)
    # In-domain object counts (no +2) and the plain ramp, whose blue channel is 200 everywhere
    # (the texture would move it by up to 65).
    assert min(r["n_objects"] for r in rows) == 2 and max(r["n_objects"] for r in rows) == 4
    img = np.asarray(Image.open(tmp_path / rows[0]["image"]).convert("RGB")).astype(int)
    bg = np.ones(img.shape[:2], bool)
    for colour in COLOURS:
        bg &= ~_colour_mask(img, colour)
    assert (img[:, :, 2][bg] == 200).all()
    with pytest.raises(ValueError, match="ood_shift"):
        generate_rec(tmp_path, 1, "in", seed=0, ood_shift="pairs")


@pytest.fixture
def drawn(monkeypatch):
    """Every scene generate_rec draws, in order: rows name only the target, not the distractors."""
    scenes, original = [], rec.scene

    def recording_scene(*args, **kwargs):
        scenes.append(original(*args, **kwargs))
        return scenes[-1]

    monkeypatch.setattr(rec, "scene", recording_scene)
    return scenes


def test_in_split_never_draws_held_out_distractor(tmp_path, drawn):
    rec.generate_rec(tmp_path / "in", 100, "in", seed=5)
    distractors_in = {o[:2] for objs in drawn for o in objs[1:]}
    rec.generate_rec(tmp_path / "ood", 100, "ood", seed=5)
    distractors_all = {o[:2] for objs in drawn for o in objs[1:]}
    assert len(drawn) == 200
    assert distractors_in and not distractors_in & set(HELD_OUT)
    assert distractors_all & set(HELD_OUT)  # ood distractors may be any pair


@pytest.mark.parametrize("split", ["in", "ood"])
def test_distinct_kinds_leaves_the_target_the_only_one_of_its_kind(tmp_path, split, drawn):
    rows = _rows(rec.generate_rec(tmp_path, 120, split, seed=3, min_objects=2, max_objects=4, distinct_kinds=True))
    assert all(o.shape != objs[0].shape for objs in drawn for o in objs[1:])
    # Scenes still fill up: with 3 kinds, 4-6 shapes are drawn from the other two kinds' pairs.
    lo = 4 if split == "ood" else 2
    assert min(r["n_objects"] for r in rows) >= lo and max(r["n_objects"] for r in rows) == lo + 2
    # Without the option the same seed does put a second shape of the target's kind in many scenes.
    drawn.clear()
    rec.generate_rec(tmp_path / "plain", 120, split, seed=3, min_objects=2, max_objects=4)
    assert sum(any(o.shape == objs[0].shape for o in objs[1:]) for objs in drawn) > 30


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        generate_rec(tmp_path, 1, "test", seed=0)
    with pytest.raises(ValueError, match="min_objects"):
        generate_rec(tmp_path, 1, "in", seed=0, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="max_size"):
        generate_rec(tmp_path, 1, "in", seed=0, image_size=32)
