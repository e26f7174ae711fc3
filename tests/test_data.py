"""VLM-R1 JSONL loading: validation messages, skip mode, file/folder pairing, templates."""

import json
import logging
import os
from pathlib import Path

import pytest

from vlmr1.data import DataError, Sample, format_question, load_samples, question_template


def _human(text="<image>Where is the cat?"):
    return {"from": "human", "value": text}


def _gpt(text="[1, 2, 3, 4]"):
    return {"from": "gpt", "value": text}


GOOD = {"id": "s1", "image": "img.png", "conversations": [_human(), _gpt()], "accu_reward_method": "rec"}


def _write(path: Path, rows: list) -> Path:
    """Rows may be dicts (dumped as JSON) or raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in ("img.png", "b.png"):
        (tmp_path / name).write_bytes(b"png")
    return tmp_path


def _row(**changes):
    row = dict(GOOD, **changes)
    return {k: v for k, v in row.items() if v is not DROP}


DROP = object()

# (case name, bad row, text the error must contain after "file:line: ")
BAD_ROWS = [
    ("invalid json", '{"id": "x", "image": ', "invalid JSON"),
    ("not an object", "[1, 2, 3]", "expected a JSON object, got list"),
    ("missing conversations", _row(conversations=DROP), "field 'conversations': expected a list of {from, value}"),
    ("conversations not a list", _row(conversations="hello"), "field 'conversations': expected a list"),
    ("turn without value", _row(conversations=[{"from": "human"}, _gpt()]), "field 'conversations'"),
    ("turn value not a string", _row(conversations=[_human(), {"from": "gpt", "value": [1]}]), "field 'conversations'"),
    ("no gpt turn", _row(conversations=[_human()]), "field 'conversations': expected exactly one 'gpt' turn, found 0"),
    ("no human turn", _row(conversations=[_gpt()]), "field 'conversations': expected exactly one 'human' turn, found 0"),
    ("two human turns", _row(conversations=[_human(), _gpt(), _human()]), "exactly one 'human' turn, found 2"),
    ("image not a string", _row(image=5), "field 'image': expected a path or a list of paths"),
    ("image list with non-string", _row(image=["img.png", 3]), "field 'image': expected a path or a list"),
    ("image empty string", _row(image=""), "field 'image'"),
    ("image file missing", _row(image="nope.png"), "field 'image': file not found"),
    ("one of two images missing", _row(image=["img.png", "nope.png"], conversations=[_human("<image><image>q"), _gpt()]), "nope.png"),
    ("too many placeholders", _row(conversations=[_human("<image><image>q"), _gpt()]), "2 <image> placeholders but the row has 1 images"),
    ("placeholder without image", _row(image=DROP), "1 <image> placeholders but the row has 0 images"),
    ("reward method not a string", _row(accu_reward_method=["rec"]), "field 'accu_reward_method': expected a string"),
    ("id not a string", _row(id={"a": 1}), "field 'id'"),
]


@pytest.mark.parametrize("bad,expected", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_error_names_file_line_and_field(folder, bad, expected):
    path = _write(folder / "data" / "train.jsonl", [GOOD, "", bad])  # the bad row is on line 3
    with pytest.raises(DataError) as err:
        load_samples(str(path), str(folder))
    assert str(err.value).startswith(f"{path}:3: ")
    assert expected in str(err.value)


@pytest.mark.parametrize("bad,expected", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_skipped_and_logged(folder, caplog, bad, expected):
    path = _write(folder / "train.jsonl", [GOOD, bad, _row(id="s3")])
    with caplog.at_level(logging.WARNING, logger="vlmr1.data.jsonl"):
        samples, skipped, _ = load_samples(str(path), str(folder), on_error="skip")
    assert [s.id for s in samples] == ["s1", "s3"]
    assert len(skipped) == 1 and skipped[0].startswith(f"{path}:2: ") and expected in skipped[0]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert skipped[0] in caplog.records[0].getMessage()


def test_skip_counts_many_bad_rows(folder):
    path = _write(folder / "t.jsonl", [GOOD, "nope", _row(image=7), _row(id="s4"), "[]"])
    result = load_samples(str(path), str(folder), on_error="skip")
    assert [s.source for s in result.samples] == [f"{path}:1", f"{path}:4"]
    assert [m.split(": ")[0] for m in result.skipped] == [f"{path}:2", f"{path}:3", f"{path}:5"]


def test_all_rows_bad_is_an_error_even_when_skipping(folder):
    path = _write(folder / "t.jsonl", ["nope", "[]"])
    with pytest.raises(DataError, match=r"no valid rows .* \(2 skipped\)"):
        load_samples(str(path), str(folder), on_error="skip")


def test_good_row_fields(folder):
    row = _row(image=["img.png", "b.png"], conversations=[_human("  <image>Compare <image> these. "), _gpt("yes")])
    row.update(solution_extra={"boxes": [[1, 2, 3, 4]]}, task="rec")
    path = _write(folder / "t.jsonl", [row])
    (s,) = load_samples(str(path), str(folder)).samples
    assert s == Sample(
        id="s1",
        images=[str(folder / "img.png"), str(folder / "b.png")],
        problem="<image>Compare <image> these.",  # placeholders kept: the adapter puts each image there
        solution="yes",
        reward_method="rec",
        extra={"solution_extra": {"boxes": [[1, 2, 3, 4]]}, "task": "rec"},
        source=f"{path}:1",
    )
    assert all(os.path.isabs(p) for p in s.images)


def test_no_placeholder_means_images_first(folder):
    # VLM-R1 puts images before the text when the question has no <image> marker.
    path = _write(folder / "t.jsonl", [_row(conversations=[_human("What is shown?"), _gpt()])])
    (s,) = load_samples(str(path), str(folder)).samples
    assert s.images == [str(folder / "img.png")] and s.problem == "What is shown?"


def test_text_only_row_and_defaults(folder):
    path = _write(folder / "t.jsonl", [{"conversations": [_human("1+1?"), _gpt("2")]}])
    (s,) = load_samples(str(path)).samples
    assert s.images == [] and s.reward_method is None and s.extra == {}
    assert s.id == f"{path}:1"  # rows without an id get their source as id


def test_colon_separated_files_pair_with_folders_by_position(tmp_path):
    a_imgs, b_imgs = tmp_path / "imgs_a", tmp_path / "imgs_b"
    a_imgs.mkdir()
    b_imgs.mkdir()
    (a_imgs / "only_a.png").write_bytes(b"a")
    (b_imgs / "only_b.png").write_bytes(b"b")
    fa = _write(tmp_path / "a.jsonl", [_row(id="a1", image="only_a.png")])
    fb = _write(tmp_path / "b.jsonl", [_row(id="b1", image="only_b.png"), _row(id="b2", image="only_b.png")])
    samples, skipped, _ = load_samples(f"{fa}:{fb}", f"{a_imgs}:{b_imgs}")
    assert [s.id for s in samples] == ["a1", "b1", "b2"] and skipped == []
    assert samples[0].images == [str(a_imgs / "only_a.png")]
    assert samples[2].images == [str(b_imgs / "only_b.png")]
    assert samples[2].source == f"{fb}:2"
    # Lists work the same; swapped folders find no images.
    assert len(load_samples([str(fa), str(fb)], [str(a_imgs), str(b_imgs)]).samples) == 3
    with pytest.raises(DataError, match="only_a.png"):
        load_samples(f"{fa}:{fb}", f"{b_imgs}:{a_imgs}")


def test_folder_count_must_match(folder):
    path = _write(folder / "t.jsonl", [GOOD])
    with pytest.raises(DataError, match="2 data files but 1 image folders"):
        load_samples(f"{path}:{path}", str(folder))
    with pytest.raises(DataError, match="empty path"):
        load_samples(f"{path}:", None)


def test_no_folder_resolves_next_to_each_file(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "img.png").write_bytes(b"x")
    path = _write(sub / "t.jsonl", [GOOD])
    (s,) = load_samples(str(path), None).samples
    assert s.images == [str(sub / "img.png")]
    with pytest.raises(DataError, match="file not found"):
        load_samples(str(path), str(tmp_path))  # wrong folder given explicitly


def test_check_images_off_allows_missing_files(folder):
    path = _write(folder / "t.jsonl", [_row(image="later.png")])
    (s,) = load_samples(str(path), str(folder), check_images=False).samples
    assert s.images == [str(folder / "later.png")]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=f"{path}: file has no rows"):
        load_samples(str(path), on_error="skip")


def test_missing_file_and_bad_mode(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_samples(str(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="on_error"):
        load_samples(str(tmp_path / "none.jsonl"), on_error="ignore")


def test_question_templates():
    assert question_template("rec") == "{Question}"
    assert format_question("rec", "the red circle") == "the red circle"
    think = format_question("rec_think", "Where?")
    assert think.startswith("Where? ") and "<think> </think>" in think and "<answer> </answer>" in think
    assert "{Question}" in question_template("default")
    # Replacement, not str.format: braces in a problem (JSON, LaTeX) survive.
    assert format_question("default", 'output {"bbox": [x]}').startswith('output {"bbox": [x]} First')
    with pytest.raises(KeyError, match="rec_think"):
        question_template("nope")


# --------------------------------------------------------------- reward methods per file (VLM-R1's --reward_method)

REC_NO_FIELD = _row(accu_reward_method=DROP)


def test_rows_without_a_method_take_their_files_method(tmp_path, folder):
    # VLM-R1 pairs --reward_method a:b with --data_file_paths by position and gives each row of a
    # file without accu_reward_method that file's method; a row's own field still wins.
    rec = _write(tmp_path / "rec.jsonl", [REC_NO_FIELD, _row(id="own", accu_reward_method="mcq")])
    math = _write(tmp_path / "math.jsonl", [_row(id="m", image=DROP, conversations=[_human("1+1?"), _gpt("2")], accu_reward_method=DROP)])
    samples = load_samples(f"{rec}:{math}", f"{folder}:{folder}", reward_methods="rec:default").samples
    assert [(s.id, s.reward_method) for s in samples] == [("s1", "rec"), ("own", "mcq"), ("m", "default")]
    lists = load_samples([str(rec), str(math)], [str(folder)] * 2, reward_methods=["iou", None]).samples
    assert [s.reward_method for s in lists] == ["iou", "mcq", None]  # None: the row keeps no method


def test_without_reward_methods_rows_keep_what_they_say(tmp_path, folder):
    rec = _write(tmp_path / "rec.jsonl", [REC_NO_FIELD, GOOD])
    assert [s.reward_method for s in load_samples(str(rec), str(folder)).samples] == [None, "rec"]


def test_reward_method_count_must_match_the_files(tmp_path, folder):
    rec = _write(tmp_path / "rec.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"2 reward methods for 1 data files; they pair by position"):
        load_samples(str(rec), str(folder), reward_methods="rec:default")


@pytest.mark.parametrize("task, method", [("rec", "rec"), ("rec_think", "rec"), ("default", None), ("count", None)])
def test_rec_tasks_score_rows_without_a_method_by_iou(tmp_path, folder, task, method):
    # VLM-R1's REC files need no accu_reward_method: its REC script scores by IoU. So do the REC
    # templates here; other tasks leave the row to "default" (math-verify), as VLM-R1 does.
    from vlmr1.config import load_config
    from vlmr1.data.batch import make_batch
    from vlmr1.embedded import prepare_data
    from vlmr1.rewards import get_reward

    (folder / "img.png").unlink()
    from PIL import Image

    Image.new("RGB", (20, 20)).save(folder / "img.png")
    rec = _write(tmp_path / "rec.jsonl", [REC_NO_FIELD])
    cfg = load_config(None, [f"data.train_files={rec}", f"data.image_folders={folder}", f"data.task={task}"])
    (sample,) = prepare_data(cfg, tmp_path / "run").train
    assert sample.reward_method == method
    if method == "rec":  # the accuracy reward then pays IoU: [1,2,3,4] vs itself
        cols = make_batch([sample], task).columns
        assert get_reward("accuracy")(["[1, 2, 3, 4]"], **cols) == [1.0]
