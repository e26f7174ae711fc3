"""vlmr1 report: a real 2-step GRPO run rendered to HTML, the box drawing, and a hand-written SFT run folder."""

import json
import re

import pytest
from PIL import Image, ImageDraw

from vlmr1.config import load_config
from vlmr1.report import detection_f1, eval_series, pick_gallery, read_metrics, resolve_image, write_report
from vlmr1.report_plots import PRED, TRUE, draw_box, moving_average
from vlmr1.rl.trainer import train

RED, WHITE = (255, 0, 0), (255, 255, 255)


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """2 GRPO steps of the embedded base (real boxes, so IoUs vary), 8 samples per held-out split,
    evaluated before, after step 1, after step 2 and after training."""
    out = tmp_path_factory.mktemp("grpo")
    cfg = load_config(
        None,
        [
            "data.num_train=8",
            "data.num_eval=8",
            "train.prompts_per_step=2",
            "rollout.group_size=2",
            "train.steps=2",
            "train.eval_every=1",
            "train.progress=false",
            f"train.output_dir={out}",
        ],
    )
    train(cfg)
    return out


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)


def split_sections(page: str) -> dict[str, str]:
    """Gallery HTML of each split, keyed by split name (each starts at its <h3>split NAME: ...)."""
    parts = re.split(r"<h3>split ([^:<]+):", page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def card_scores(section: str) -> list[float]:
    return [float(s) for s in re.findall(r'class="card [^"]*" data-score="([0-9.]+)"', section)]


def test_grpo_report_has_sections_curves_and_existing_images(grpo_run):
    index = write_report(grpo_run, gallery=3)
    assert index == grpo_run / "report" / "index.html" and index.exists()
    page = index.read_text()
    for heading in ("<h2>Run summary</h2>", "<h2>Training curves</h2>", "<h2>Evaluation curves</h2>", "<h2>Rollouts</h2>", "<h2>Gallery</h2>"):
        assert heading in page
    sources = img_sources(page)
    # Three curve figures, then one picture per gallery card: 2 splits x (3 best + 3 worst). The
    # rollouts section's pictures are checked in tests/test_rollout_log.py.
    assert {"train_rewards.png", "train_other.png", "eval_curves.png"} <= set(sources)
    assert len([s for s in sources if s.startswith("gallery/")]) == 12
    for src in sources:
        assert not src.startswith(("/", "http")), src  # relative: the folder is self-contained
        assert (index.parent / src).is_file(), src
    assert "GRPO" in page and "No reward lines" not in page


def test_grpo_gallery_lists_best_then_worst_by_iou(grpo_run):
    page = write_report(grpo_run, out=grpo_run / "report3", gallery=3).read_text()
    sections = split_sections(page)
    assert sorted(sections) == ["in", "ood"]
    for split, section in sections.items():
        assert "after-" + split + ".jsonl" in section  # the final evaluation's predictions are preferred
        ious = sorted((r["iou"] for r in read_metrics(grpo_run / "eval" / f"after-{split}.jsonl")), reverse=True)
        scores = card_scores(section)
        # The 3 highest IoUs, then the 3 lowest, each group in descending order.
        assert scores == pytest.approx(ious[:3] + ious[-3:], abs=1e-6)
        assert section.index("<h4>best</h4>") < section.index("<h4>worst</h4>")


def test_small_split_is_shown_whole_without_repeats(grpo_run):
    # gallery=8 asks for 8 + 8 of a split of 8 samples: each sample once, best to worst.
    page = write_report(grpo_run, out=grpo_run / "report8", gallery=8).read_text()
    for section in split_sections(page).values():
        ids = re.findall(r"&middot; (rec-eval_\w+-\d+)</div>", section)
        assert len(ids) == 8 and len(set(ids)) == 8
        scores = card_scores(section)
        assert scores == sorted(scores, reverse=True)


def test_draw_box_outlines_the_edge_and_leaves_the_inside():
    im = Image.new("RGB", (20, 20), WHITE)
    draw_box(ImageDraw.Draw(im), [2, 3, 10, 12], RED, width=1)
    for xy in [(2, 3), (10, 12), (2, 7), (10, 7), (6, 3), (6, 12)]:  # corners and the middle of each edge
        assert im.getpixel(xy) == RED, xy
    for xy in [(6, 7), (3, 4), (9, 11), (1, 7), (11, 7), (6, 2), (6, 13)]:  # inside, and just outside
        assert im.getpixel(xy) == WHITE, xy


def test_draw_box_scales_original_pixels_to_the_enlarged_image():
    im = Image.new("RGB", (40, 40), WHITE)
    draw_box(ImageDraw.Draw(im), [2, 3, 10, 12], RED, width=1, scale=2.0)  # -> [4, 6, 20, 24]
    assert im.getpixel((4, 6)) == RED and im.getpixel((20, 24)) == RED and im.getpixel((4, 15)) == RED
    assert im.getpixel((2, 3)) == WHITE and im.getpixel((12, 15)) == WHITE


def test_sft_run_without_rewards_or_predictions(tmp_path):
    lines = [
        {"step": 0, "eval/in/acc50": 0.25, "eval/in/format_rate": 1.0},
        {"step": 1, "loss": 2.0, "grad_norm": 1.0, "lr": 1e-4, "time/update": 0.5},
        {"step": 2, "loss": 1.5, "grad_norm": 0.8, "lr": 1e-4, "time/update": 0.5},
        {"step": 2, "eval_after/in/acc50": 0.5, "eval_after/in/format_rate": 1.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "summary.json").write_text(json.dumps({"before": {"in": {"acc50": 0.25, "n": 4}}, "after": {"in": {"acc50": 0.5, "n": 4}}}))
    page = write_report(tmp_path).read_text()
    assert "No reward lines in metrics.jsonl" in page
    assert "No evaluation predictions" in page
    assert "SFT" in page and "+0.250" in page  # the before/after change 0.5 - 0.25
    sources = img_sources(page)
    assert sources == ["train_other.png", "eval_curves.png"]
    assert all((tmp_path / "report" / s).is_file() for s in sources)
    # The eval/ line at step 0 and the eval_after/ line at step 2 form one curve per metric.
    assert eval_series(read_metrics(tmp_path / "metrics.jsonl"))["in"]["acc50"] == [(0, 0.25), (2, 0.5)]


def test_detection_f1_matches_labels_and_boxes():
    a, b = [0, 0, 10, 10], [20, 20, 30, 30]
    # One of two predictions matches (same label, IoU 1); the other box is right but its label is not:
    # F1 = 2 * 1 / (2 + 2) = 0.5.
    assert detection_f1([[a, "cat"], [b, "dog"]], [[a, "cat"], [b, "cow"]]) == 0.5
    # [0, 0, 10, 10] vs [5, 0, 15, 10]: IoU 50 / 150 = 1/3 < 0.5, no match.
    assert detection_f1([[[5, 0, 15, 10], "cat"]], [[a, "cat"]]) == 0.0
    assert detection_f1(None, [[a, "cat"]]) == 0.0  # unparsed
    assert detection_f1([], []) == 1.0  # nothing to find, nothing found


def test_pick_gallery_orders_best_then_worst():
    rows = [{"kind": "rec", "iou": v, "id": str(v)} for v in (0.1, 0.9, 0.5, 0.3, 0.7)]
    assert [(g, r["iou"]) for g, r in pick_gallery(rows, 1)] == [("best", 0.9), ("worst", 0.1)]
    # 5 rows <= 2 x 3: all of them, the better half (3) tagged best.
    picked = pick_gallery(rows, 3)
    assert [r["iou"] for _, r in picked] == [0.9, 0.7, 0.5, 0.3, 0.1]
    assert [g for g, _ in picked] == ["best"] * 3 + ["worst"] * 2


def test_resolve_image_in_a_moved_run_folder(tmp_path):
    image = tmp_path / "data" / "images" / "a.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(image)
    assert resolve_image(str(image), tmp_path) == image  # recorded absolute path still valid
    assert resolve_image("/gone/old/run/data/images/a.png", tmp_path) == image  # the folder moved
    assert resolve_image("images/a.png", tmp_path) == image  # relative to the run's data/
    assert resolve_image("/gone/b.png", tmp_path) is None


def test_moving_average_is_a_trailing_mean():
    # window 2: [1], [1, 3], [3, 5], [5, 7] -> 1, 2, 4, 6
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_gallery_of_detection_gui_and_answer_rows(tmp_path):
    for name in ("a.png", "before.png", "after.png"):
        Image.new("RGB", (112, 112), WHITE).save(tmp_path / name)
    a, before, after = (str(tmp_path / n) for n in ("a.png", "before.png", "after.png"))
    box = [10.0, 10.0, 40.0, 40.0]
    det = [
        {"id": "d-miss", "kind": "detection", "image": [a], "pred": None, "truth": [[box, "cat"]]},
        {"id": "d-hit", "kind": "detection", "image": [a], "pred": [[box, "cat"]], "truth": [[box, "cat"]]},
    ]
    gui = [{"id": "g1", "kind": "gui", "image": [before, after], "pred_box": box, "true_box": box, "pred_defect": "x", "true_defect": "x", "score": 1.0}]
    count = [{"id": "c-wrong", "kind": "answer", "image": [a], "completion": "3", "solution": "2", "correct": False},
             {"id": "c-right", "kind": "answer", "image": [a], "completion": "<answer>2</answer>", "solution": "2", "correct": True}]
    (tmp_path / "eval").mkdir()
    for file, rows in (("after-det", det), ("before-gui", gui), ("step3-gui", gui), ("after-count", count)):
        (tmp_path / "eval" / f"{file}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report(tmp_path, gallery=1).read_text()
    sections = split_sections(page)
    assert card_scores(sections["det"]) == [1.0, 0.0]  # F1 of a perfect answer, then of an unparsed one
    assert "step3-gui.jsonl" in sections["gui"]  # a later step beats the evaluation before training
    assert sections["count"].index("c-right") < sections["count"].index("c-wrong")
    assert "<pre>2</pre>" in sections["count"]  # the predicted answer taken out of <answer>...</answer>
    # GUI: before and after side by side, each 112 px image enlarged 3x, 8 px apart.
    assert Image.open(tmp_path / "report" / "gallery" / "gui-001.png").size == (3 * 112 * 2 + 8, 3 * 112)
    # Detection hit, enlarged 3x: the predicted box (red, 2 px) lies on the true one (green, 4 px),
    # whose inner band stays visible: x = 30, 31 red, x = 32, 33 green at y = 60 on the left edge.
    hit = Image.open(tmp_path / "report" / "gallery" / "det-001.png")
    assert hit.getpixel((30, 60)) == PRED and hit.getpixel((32, 60)) == TRUE
    assert hit.getpixel((60, 60)) == WHITE


def test_cli_report_command(tmp_path, capsys):
    from vlmr1.cli import main

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--gallery", "0"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "index.html")
    assert "Gallery off" in (tmp_path / "r" / "index.html").read_text()
