"""rollouts.jsonl: the lines match what the trainer sampled and scored; resume cuts them back; the
report shows them; TensorBoard gets the table."""

import html
import json
import re

import pytest
import torch

from vlmr1.config import load_config
from vlmr1.report import write_report
from vlmr1.rl import algos
from vlmr1.rl.engines import HFEngine
from vlmr1.rl.rollout_log import RolloutLog, is_logged_step, pick_groups
from vlmr1.rl.trainer import train

REWARD = "def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n"
G, P, MAX_LEN = 4, 2, 8


class RecordingEngine(HFEngine):
    """The default engine, keeping each step's sampled texts and token ids."""

    def __init__(self):
        super().__init__(shared_prompt=True)
        self.rollouts = []

    def generate(self, *args, **kwargs):
        rollout = super().generate(*args, **kwargs)
        self.rollouts.append(rollout)
        return rollout


def run(tiny_dir, tmp_path, *extra, engine=None):
    reward = tmp_path / "r.py"
    reward.write_text(REWARD)
    out = tmp_path / "run"
    cfg = load_config(None, [
        f"model.path={tiny_dir}", "data.num_train=16", "data.num_eval=4", f"train.prompts_per_step={P}",
        f"rollout.group_size={G}", f"rollout.max_completion_length={MAX_LEN}", "train.micro_batch_size=4", "train.steps=3",
        "train.lr=1e-3", "train.progress=false", f"train.output_dir={out}", f"reward.funcs=[{reward}:length_reward]",
        "reward.weights=null", "train.eval_before=false", *extra,
    ])
    train(cfg, engine=engine)
    return out


def lines(out):
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged(tiny_dir, tmp_path_factory):
    engine = RecordingEngine()
    out = run(tiny_dir, tmp_path_factory.mktemp("log"), "train.log_completions=1", "train.log_completions_groups=0", engine=engine)
    return out, engine.rollouts


def test_lines_are_the_rollouts_the_trainer_scored(logged, tiny_adapter):
    out, rollouts = logged
    rows = lines(out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in rows] == [s for s in (1, 2, 3) for _ in range(P * G)]  # every group, every step
    for step, rollout in enumerate(rollouts, start=1):
        step_rows = [r for r in rows if r["step"] == step]
        assert [(r["group"], r["index"]) for r in step_rows] == [(g, j) for g in range(P) for j in range(G)]
        assert [r["completion"] for r in step_rows] == rollout.texts  # what was sampled, in row order
        assert [r["length"] for r in step_rows] == rollout.completion_mask.sum(1).tolist()
        eos = set(tiny_adapter.eos_token_ids)
        assert [r["truncated"] for r in step_rows] == [not (set(ids) & eos) for ids in rollout.completion_ids.tolist()]
        # The reward is the completion's length in characters, its only reward, weight 1.
        totals = [float(len(t)) for t in rollout.texts]
        assert [r["reward"] for r in step_rows] == totals
        assert [r["rewards"] for r in step_rows] == [{"length_reward": v} for v in totals]
        assert sum(totals) / len(totals) == pytest.approx(metrics[step - 1]["reward"])  # the logged step mean
        expected = algos.group_advantages(torch.tensor(totals), G, "group").tolist()
        assert [r["advantage"] for r in step_rows] == pytest.approx(expected, abs=1e-6)
        spreads = [len({totals[g * G + j] for j in range(G)}) == 1 for g in range(P)]
        assert [r["zero_std"] for r in step_rows] == [spreads[g] for g in range(P) for _ in range(G)]
        # beta 0.04: the policy's mean log-prob and its KL to the reference, per updated row.
        assert all(r["logp"] < 0 and r["kl"] >= 0 for r in step_rows)  # every row was updated (no filtering)
    assert all(r["kl"] == 0.0 for r in rows if r["step"] == 1)  # step 1: the policy is the reference
    assert all(r["images"] and r["solution"] and r["problem"] for r in rows)


def test_the_report_shows_the_rollouts(logged):
    out, _ = logged
    index = write_report(out)
    page = index.read_text()
    section = page[page.index("<h2>Rollouts</h2>") : page.index("<h2>Gallery</h2>")]
    assert "<h3>step 1</h3>" in section and "<h3>step 2</h3>" in section and "<h3>step 3</h3>" in section
    images = re.findall(r'src="([^"]+)"', section)
    assert "train_truncated.png" in images and "rollouts/step3-group1.png" in images
    assert all((index.parent / src).is_file() for src in images)
    assert all(f"<pre>{html.escape(r['completion'])}</pre>" in section for r in lines(out) if r["step"] == 3)


def test_tensorboard_gets_the_table(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged[0] / "tensorboard"))
    acc.Reload()
    assert "rollouts/text_summary" in acc.Tags()["tensors"]
    assert [e.step for e in acc.Tensors("rollouts/text_summary")] == [1, 2, 3]


def test_steps_and_groups_logged(tiny_dir, tmp_path):
    out = run(tiny_dir, tmp_path, "train.log_completions=2", "train.log_completions_groups=1", "train.eval_after=false", "data.num_eval=0")
    assert [(r["step"], r["group"]) for r in lines(out)] == [(1, 0)] * G + [(2, 0)] * G  # step 1, then every 2nd
    assert [s for s in range(1, 12) if is_logged_step(s, 5)] == [1, 5, 10] and not is_logged_step(1, 0)
    # 5 groups over 2 ranks: 3 + 2, each rank's first prompts; 0 is every group.
    assert pick_groups(4, 5, 2, 0) == [0, 1, 2] and pick_groups(4, 5, 2, 1) == [0, 1] and pick_groups(3, 0, 2, 1) == [0, 1, 2]


def test_resume_keeps_whole_lines_up_to_the_checkpoint(tmp_path):
    log = RolloutLog(tmp_path, every=1, groups=0, main=True)
    for step in (1, 2, 3):
        log.write(step, [{"step": step, "group": 0}, {"step": step, "group": 1}])
    with (tmp_path / "rollouts.jsonl").open("a") as f:
        f.write('{"step": 4, "gro')  # a line cut short
    log.truncate_after(2)
    assert [(r["step"], r["group"]) for r in lines(tmp_path)] == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_the_report_imports_no_training_stack():
    import subprocess
    import sys

    code = "import sys, vlmr1.report; assert not {'transformers', 'accelerate'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
