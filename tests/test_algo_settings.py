"""The issue-17 algorithm settings: rejected where they cannot apply, honoured in a real run."""

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch

from vlmr1.config import AlgoConfig, ConfigError, load_config
from vlmr1.rl.trainer import loss_mask, train

REWARD = "def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algo.beta=0.0", "algo.kl_bias_correction=true"], "algo.kl_bias_correction weights the KL term"),
        (["algo.surrogate=sapo", "algo.delta=2.0"], "algo.delta (the two-sided clip) applies to algo.surrogate=clip only"),
        (["algo.delta=1.1"], "algo.delta must be > 1 + algo.eps_high"),
        (["algo.surrogate=sapo", "algo.eps_high=0.28"], "algo.surrogate=sapo has no hard clip"),
        (["algo.sapo_temperature_neg=2.0"], "algo.sapo_temperature_pos / _neg apply to algo.surrogate=sapo only"),
        (["algo.surrogate=sapo", "algo.sapo_temperature_pos=0.0"], "algo.sapo_temperature_pos and _neg must be > 0"),
        (["algo.surrogate=cispo", "algo.importance_level=sequence"], "algo.surrogate=cispo weights each token"),
        (["algo.eps_low=1.0"], "algo.eps_low must be < 1"),
        (["algo.off_policy_mask_threshold=0.5"], "algo.off_policy_mask_threshold needs algo.num_iterations > 1"),
        (["algo.num_iterations=2", "algo.off_policy_mask_threshold=-1.0"], "algo.off_policy_mask_threshold must be >= 0"),
        (["algo.top_entropy_quantile=1.5"], "algo.top_entropy_quantile must be in [0, 1]"),
        (["algo.dynamic_sampling_rounds=2"], "set algo.filter_zero_std=true"),
        (["algo.filter_zero_std=true", "algo.dynamic_sampling_rounds=-1"], "algo.dynamic_sampling_rounds must be >= 0"),
        (["algo.surrogate=ppo"], "algo.surrogate='ppo': expected one of"),
        (["train.eval_samples=-1"], "train.eval_samples must be >= 0"),
        (["train.eval_samples=4", "train.eval_before=false", "train.eval_after=false"], "train.eval_samples applies to evaluation"),
    ],
)
def test_rejected(overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.surrogate=cispo", "algo.eps_low=1.0", "algo.eps_high=4.0"],  # MiniMax-M1's upper cap only
        ["algo.surrogate=sapo", "algo.sapo_temperature_pos=2.0"],
        ["algo.delta=1.5", "algo.kl_bias_correction=true"],
        ["algo.num_iterations=2", "algo.off_policy_mask_threshold=0.0"],
        ["algo.top_entropy_quantile=0.0", "algo.mask_truncated_completions=true"],
        ["algo.filter_zero_std=true", "algo.dynamic_sampling_rounds=3"],
    ],
)
def test_accepted(overrides):
    load_config(None, overrides)


def test_a_run_with_every_new_loss_setting_logs_them(tiny_dir, tmp_path):
    reward = tmp_path / "r.py"
    reward.write_text(REWARD)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.path={tiny_dir}", "data.num_train=8", "data.num_eval=2", "train.prompts_per_step=2",
            "rollout.group_size=4", "rollout.max_completion_length=6", "train.micro_batch_size=4", "train.steps=2",
            "train.progress=false", f"train.output_dir={out}", f"reward.funcs=[{reward}:length_reward]", "reward.weights=null",
            "algo.surrogate=cispo", "algo.kl_bias_correction=true", "algo.num_iterations=2", "algo.off_policy_mask_threshold=0.0",
            "algo.top_entropy_quantile=0.5", "train.eval_samples=2",
            "reward.eval_format=null",
        ],
    )
    summary = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["entropy"] > 0 and 0 <= r["entropy_high_fraction"] <= 1
        assert 0 <= r["off_policy_masked"] <= 1
        assert not any(math.isnan(v) for v in r.values() if isinstance(v, float))
    for when in ("before", "after"):
        assert {"pass@1", "pass@2", "mean@2", "acc50"} <= summary[when]["in"].keys()


def test_the_trainer_masks_truncated_completions_only_when_asked():
    rollout = SimpleNamespace(completion_mask=torch.tensor([[1, 1], [1, 0]]), truncated=torch.tensor([True, False]))
    assert loss_mask(rollout, AlgoConfig()) is None  # the completion mask, as before
    assert loss_mask(rollout, AlgoConfig(mask_truncated_completions=True)).tolist() == [[0, 0], [1, 0]]
