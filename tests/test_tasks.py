"""Every task end to end on the tiny random model: 2 GRPO steps from generated data, then
``vlmr1 eval`` on a generated split, each with its own rewards and metrics."""

import json

import pytest

from vlmr1.cli import main
from vlmr1.config import load_config
from vlmr1.rl.trainer import train

# task -> (rewards it trains with, completion budget, metrics its evaluation must report)
TASKS = {
    "rec": (["acc50_tight", "iou", "box_format"], 16, {"acc50", "acc75", "mean_iou", "parsed"}),
    "det": (["map", "weighted_sum", "repetition"], 24, {"map", "ap50", "ap75", "parsed"}),
    "count": (["accuracy", "length"], 8, {"accuracy"}),
    "gui": (["gui_defect", "accuracy"], 16, {"defect_acc", "score", "parsed"}),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_two_grpo_steps_per_task(task, tiny_dir, tmp_path):
    rewards, length, metrics = TASKS[task]
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.path={tiny_dir}",
            f"data.synthetic={task}",
            f"data.task={task}",
            "data.num_train=8",
            "data.num_eval=4",
            "train.prompts_per_step=2",
            "rollout.group_size=2",
            f"rollout.max_completion_length={length}",
            "train.micro_batch_size=4",
            "train.steps=2",
            "train.progress=false",
            f"train.output_dir={out}",
            f"reward.funcs={json.dumps(rewards)}",
            "reward.weights=null",
            "reward.eval_format=null",
        ],
    )
    summary = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:  # every reward ran and was logged (a NaN mean would mean it never applied)
        assert all(0 <= r["completion_length"] <= length for r in steps)
        for name in rewards:
            assert f"rewards/{name}" in r and r[f"rewards/{name}"] == r[f"rewards/{name}"]
    for when in ("before", "after"):
        for split in ("in", "ood"):
            got = summary[when][split]
            assert metrics <= got.keys() and got["n"] == 4
            assert all(0.0 <= got[m] <= 1.0 for m in metrics)
    # Each task's prompts reached the model with their images (GUI: two per prompt).
    first = json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])
    n_images = 2 if task == "gui" else 1
    assert len(first["image"] if isinstance(first["image"], list) else [first["image"]]) == n_images
    preds = [json.loads(line) for line in (out / "eval" / "after-in.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(len(p["image"]) == n_images for p in preds)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_vlmr1_eval_per_task(task, tiny_dir, tmp_path, capsys):
    main(["data", task, "--out", str(tmp_path), "--n", "3", "--split", "ood"])
    data = tmp_path / "ood.jsonl"
    main(["eval", "--model", str(tiny_dir), "--data", str(data), "--task", task, "--max-new-tokens", "12"])
    printed = capsys.readouterr().out
    for metric in TASKS[task][2]:
        assert f" {metric} " in printed
    rows = [json.loads(line) for line in (tmp_path / "ood.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["kind"] for r in rows} == {"rec" if task == "rec" else {"det": "detection", "count": "answer", "gui": "gui"}[task]}


@pytest.mark.parametrize("extra, kind", [([], "rec"), (["--reward-methods", "default"], "answer")])
def test_vlmr1_eval_reads_rec_files_without_a_method(tiny_dir, tmp_path, capsys, extra, kind):
    # A VLM-R1 REC file need not name accu_reward_method: under the rec task its rows are REC
    # (IoU, Acc@0.5), unless --reward-methods says otherwise for the file.
    main(["data", "rec", "--out", str(tmp_path), "--n", "3", "--split", "in"])
    data = tmp_path / "in.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "accu_reward_method"}) + "\n" for r in rows))
    main(["eval", "--model", str(tiny_dir), "--data", str(data), "--max-new-tokens", "12", *extra])
    preds = [json.loads(line) for line in (tmp_path / "in.predictions.jsonl").read_text().splitlines()]
    assert {p["kind"] for p in preds} == {kind}
