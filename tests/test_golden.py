"""Golden values: the first two steps of a tiny seeded GRPO run and of an SFT run, pinned to numbers.

Equivalence tests (shared prompt vs repeated, 2 ranks vs 1, TRL's loss on the same tensors)
compare two paths of this code with each other, so a mis-scaling both paths share (the loss
doubled everywhere, a world-size factor applied on every rank) passes them all. These numbers
were recorded from the trainer on this project's CPU (torch 2.13, one thread, the tiny random
model of conftest, seed 0) after its loss had been checked against TRL's; a change that moves
them must explain why. Doubling the loss doubles every loss and gradient norm below, far outside
the tolerance (tried: the test then fails).

The tolerance, 1e-4 relative, allows for float rounding on other CPUs' kernels; sampled tokens
are compared only through the reward, which is exact (a length in characters).
"""

import json

import pytest

from vlmr1.config import load_config
from vlmr1.rl.trainer import train
from vlmr1.sft import sft

REL = 1e-4

LENGTH_REWARD = "def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n"


def run_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def common(tiny_dir, out):
    return [
        f"model.path={tiny_dir}",
        "data.num_train=16",
        "data.distinct_kinds=false",  # the scenes these numbers were recorded on
        "data.num_eval=0",
        "train.prompts_per_step=2",
        "train.steps=2",
        "train.lr=1e-3",
        "train.progress=false",
        f"train.output_dir={out}",
    ]


def test_grpo_first_two_steps(tiny_dir, tmp_path):
    reward = tmp_path / "r.py"
    reward.write_text(LENGTH_REWARD)
    out = tmp_path / "grpo"
    extra = ["rollout.group_size=4", "rollout.max_completion_length=8", "train.micro_batch_size=4",
             "rollout.temperature=0.7",  # the sampling temperature these numbers were recorded at
             f"reward.funcs=[{reward}:length_reward]", "reward.weights=null"]  # beta 0.04, k3, grpo aggregation
    train(load_config(None, common(tiny_dir, out) + extra))
    step1, step2 = run_rows(out)
    assert (step1["reward"], step2["reward"]) == (16.75, 21.25)  # mean characters per completion: same samples
    # Step 1 is on-policy with the reference equal to the policy: ratio 1, KL 0, and the loss is
    # -(1/N) sum_i A_i over the 8 rows, which is 0 because each group's advantages sum to 0.
    assert step1["kl"] == 0.0 and abs(step1["loss"]) < 1e-6
    assert step1["grad_norm"] == pytest.approx(13.3999605178833, rel=REL)
    assert step2["loss"] == pytest.approx(0.06854584813117981, rel=REL)
    assert step2["kl"] == pytest.approx(1.713646411895752, rel=REL)
    assert step2["grad_norm"] == pytest.approx(10.089414596557617, rel=REL)


def test_sft_first_two_steps(tiny_dir, tmp_path):
    out = tmp_path / "sft"
    sft(load_config(None, common(tiny_dir, out) + ["train.micro_batch_size=1"]))  # 2 micro-batches per step
    step1, step2 = run_rows(out)
    assert step1["loss"] == pytest.approx(7.107810735702515, rel=REL)
    assert step1["grad_norm"] == pytest.approx(20.602123260498047, rel=REL)
    assert step2["loss"] == pytest.approx(4.693345546722412, rel=REL)
    assert step2["grad_norm"] == pytest.approx(14.358811378479004, rel=REL)
