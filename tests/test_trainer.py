"""Smoke tests of the GRPO and SFT loops end to end on the tiny random model, and the CLI's config gate.

The GRPO runs use a reward that gives signal on a random model (completion length in characters),
so advantages are non-zero and the weights really move.
"""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import vlmr1.models.loading as loading_module
import vlmr1.rl.trainer as trainer_module
from vlmr1.cli import main
from vlmr1.config import load_config
from vlmr1.rl.engines import HFEngine
from vlmr1.rl.trainer import train
from vlmr1.rl.update import micro_batches
from vlmr1.sft import sft

REWARD = "def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n"


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "r.py"
    path.write_text(REWARD)
    return path


def grpo_config(tiny_dir, reward_file, out, *extra):
    """2 prompts x 4 completions of <= 8 tokens, 2 steps; ``extra`` overrides come last and win."""
    return load_config(
        None,
        [
            f"model.path={tiny_dir}",
            "data.num_train=16",
            "data.num_eval=8",
            "train.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_completion_length=8",
            "train.micro_batch_size=4",
            "train.steps=2",
            "train.lr=1e-3",
            "train.progress=false",
            f"train.output_dir={out}",
            f"reward.funcs=[{reward_file}:length_reward]",
            "reward.weights=null",
            *extra,
        ],
    )


def run_counting_loads(fn, cfg):
    """Run ``fn(cfg)``, recording the path of every model loaded (every ``load_adapter`` call)."""
    calls = []
    real = loading_module.load_adapter

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading_module, "load_adapter", counting)
        result = fn(cfg)
    return result, calls


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_rows(out):
    """Metric rows of optimizer steps (eval rows share step numbers but carry no loss)."""
    return [row for row in read_metrics(out) if "loss" in row]


def optimizer_steps(ckpt):
    """AdamW's per-parameter step counter saved in a checkpoint (all parameters agree)."""
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    steps = {float(s["step"]) for s in state.values()}
    assert len(steps) == 1
    return steps.pop()


@pytest.fixture(scope="module")
def grpo_run(tiny_dir, reward_file, tmp_path_factory):
    """The main 2-step GRPO run (beta = 0.04, evaluation before and after). Tests must not modify it."""
    out = tmp_path_factory.mktemp("grpo")
    summary, loads = run_counting_loads(train, grpo_config(tiny_dir, reward_file, out))
    return out, summary, loads


def test_grpo_logs_finite_losses_for_each_step(grpo_run):
    out, _, _ = grpo_run
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("loss", "reward", "kl", "grad_norm", "clip_fraction"):
            assert math.isfinite(row[key]), key
        assert row["reward_std"] > 0  # the length reward gives advantage signal
        assert 1 <= row["completion_length"] <= 8
        assert {"time/gen", "time/reward", "time/ref", "time/update"} <= row.keys()
    # Step 1 updates from the reference weights, so its KL is zero; step 2 has moved (lr 1e-3).
    assert abs(rows[0]["kl"]) < 1e-6
    assert rows[1]["kl"] > 1e-6
    # Evaluation rows: before training at step 0, after training at the last step.
    assert any(r["step"] == 0 and "eval/in/acc50" in r for r in read_metrics(out))
    assert any(r["step"] == 2 and "eval_after/ood/acc50" in r for r in read_metrics(out))


def test_grpo_loads_policy_and_reference(grpo_run, tiny_dir):
    _, _, loads = grpo_run
    assert loads == [str(tiny_dir), str(tiny_dir)]  # policy, then the frozen reference (beta > 0)


def test_grpo_changes_the_weights(grpo_run, tiny_dir):
    out, _, _ = grpo_run
    start = load_file(tiny_dir / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    assert start.keys() == final.keys()
    changed = [k for k in start if not torch.equal(start[k], final[k])]
    assert changed, "no parameter moved after 2 GRPO steps"
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("model.") for k in changed)
    # final/ is a loadable checkpoint with its processor.
    assert (out / "final" / "config.json").exists() and (out / "final" / "tokenizer.json").exists()


def test_grpo_summary_and_checkpoint(grpo_run):
    out, summary, _ = grpo_run
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for when in ("before", "after"):
        assert set(saved[when]) == {"in", "ood"}
        for split in ("in", "ood"):
            metrics = saved[when][split]
            assert metrics["n"] == 8
            for key in ("acc50", "mean_iou", "format_rate"):
                assert 0.0 <= metrics[key] <= 1.0
    ckpt = out / "checkpoint-2"
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json", "config.json"):
        assert (ckpt / name).exists(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    assert optimizer_steps(ckpt) == 2  # one optimizer step per rollout step (mu = 1)
    assert load_config(out / "config.yaml").train.steps == 2  # resolved config saved with the run


def test_grpo_resume_continues_and_matches_an_uninterrupted_run(grpo_run, tiny_dir, reward_file, tmp_path):
    out, _, _ = grpo_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)  # leave the shared run untouched
    extra = ["train.steps=3", "train.eval_after=false"]
    _, loads = run_counting_loads(
        train, grpo_config(tiny_dir, reward_file, resumed, *extra, "train.resume=auto")
    )
    assert loads == [str(resumed / "checkpoint-2"), str(tiny_dir)]  # policy from the checkpoint, reference from the base
    rows = train_rows(resumed)
    assert [r["step"] for r in rows] == [1, 2, 3]  # no duplicates, nothing re-run
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert not any(r["step"] == 0 and "eval/in/acc50" in r for r in read_metrics(resumed)[3:])  # no second eval-before
    assert json.loads((resumed / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3
    assert optimizer_steps(resumed / "checkpoint-3") == 3  # optimizer state carried over

    # The same 3 steps in one go: same rollouts, same update, same weights.
    straight = tmp_path / "straight"
    train(grpo_config(tiny_dir, reward_file, straight, *extra, "train.eval_before=false"))
    (expected,) = [r for r in train_rows(straight) if r["step"] == 3]
    for key in ("reward", "reward_std", "completion_length", "loss", "kl", "grad_norm"):
        assert rows[2][key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    a = load_file(resumed / "final" / "model.safetensors")
    b = load_file(straight / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_grpo_beta0_loads_no_reference_and_freezes_vision(tiny_dir, reward_file, tmp_path):
    cfg = grpo_config(
        tiny_dir, reward_file, tmp_path, "algo.beta=0", "model.freeze_vision=true", "model.freeze_projector=true", "train.steps=1",
        "train.eval_before=false", "train.eval_after=false",
    )  # fmt: skip
    _, loads = run_counting_loads(train, cfg)
    assert loads == [str(tiny_dir)]  # the policy only
    (row,) = train_rows(tmp_path)
    assert math.isfinite(row["loss"]) and "kl" not in row
    start = load_file(tiny_dir / "model.safetensors")
    final = load_file(tmp_path / "final" / "model.safetensors")
    assert all(torch.equal(start[k], final[k]) for k in start if k.startswith("visual."))
    assert any(not torch.equal(start[k], final[k]) for k in start if k.startswith("model."))


def test_grpo_num_iterations_2_updates_twice_per_rollout(tiny_dir, reward_file, tmp_path):
    cfg = grpo_config(
        tiny_dir, reward_file, tmp_path, "algo.num_iterations=2", "train.steps=1",
        "train.eval_before=false", "train.eval_after=false",
    )  # fmt: skip
    train(cfg)
    (row,) = train_rows(tmp_path)
    assert math.isfinite(row["loss"]) and math.isfinite(row["kl"])
    assert row["time/old"] > 0  # old log-probs are computed when mu > 1
    assert optimizer_steps(tmp_path / "checkpoint-1") == 2  # mu optimizer steps for one rollout


def test_micro_batches_are_contiguous_runs():
    assert micro_batches(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    # A filtered-out group (rows 4-7) splits a chunk: rows_of slices start:stop, so no chunk may span a gap.
    assert micro_batches([0, 1, 2, 3, 8, 9, 10, 11], 12) == [[0, 1, 2, 3], [8, 9, 10, 11]]


GAP_REWARD = (
    "def gap_reward(completions, **kw):\n"
    "    # rows 4-7 (the second of three groups) all score 0: zero std, dropped by filter_zero_std\n"
    "    return [0.0 if 4 <= i < 8 else float(len(c)) for i, c in enumerate(completions)]\n"
)


def test_grpo_filter_zero_std_drops_the_flat_group(tiny_dir, tmp_path):
    reward = tmp_path / "gap.py"
    reward.write_text(GAP_REWARD)
    cfg = grpo_config(
        tiny_dir, reward, tmp_path / "run", f"reward.funcs=[{reward}:gap_reward]", "algo.filter_zero_std=true",
        "train.prompts_per_step=3", "train.micro_batch_size=12", "train.steps=1",
        "train.eval_before=false", "train.eval_after=false",
    )  # fmt: skip
    train(cfg)
    (row,) = train_rows(tmp_path / "run")
    assert row["zero_std_groups"] == pytest.approx(1 / 3)
    assert math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert optimizer_steps(tmp_path / "run" / "checkpoint-1") == 1


def test_sft_loss_is_finite_and_decreases(tiny_dir, tmp_path):
    # Two training samples and 2 per batch: every step sees the same batch.
    cfg = load_config(
        None,
        [
            f"model.path={tiny_dir}",
            "data.num_train=2",
            "data.num_eval=0",
            "train.prompts_per_step=2",
            "train.micro_batch_size=2",
            "train.steps=5",
            "train.lr=1e-3",
            "train.progress=false",
            "train.eval_after=false",
            f"train.output_dir={tmp_path}",
        ],
    )
    _, loads = run_counting_loads(sft, cfg)
    assert loads == [str(tiny_dir)]
    losses = [r["loss"] for r in train_rows(tmp_path)]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    # A random init knows nothing: its mean NLL per answer token is at least that of a uniform
    # guess, ln(vocab size) (~6.3), give or take the spread its random logits add (< 1.5 here).
    vocab = len(json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["vocab"])
    assert math.log(vocab) - 0.5 < losses[0] < math.log(vocab) + 1.5
    assert losses[-1] < losses[0] - 1.0
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert json.loads((tmp_path / "checkpoint-5" / "trainer_state.json").read_text())["step"] == 5


def test_cli_rejects_bad_config_before_loading_anything(monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("training started despite an invalid config")

    monkeypatch.setattr(trainer_module, "train", must_not_run)
    monkeypatch.setattr(loading_module, "load_adapter", must_not_run)
    with pytest.raises(SystemExit) as exc:
        main(["train", "rollout.group_size=1"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == "vlmr1 train: error: rollout.group_size must be >= 2: group advantages need at least two samples\n"


@pytest.mark.parametrize(
    "override",
    ["algo.beta=0.0", "reward.weights=[2.0, 0.5, 0.1]", "rollout.temperature=0.9", "rollout.group_size=4",
     "train.log_completions=1", "train.log_completions_groups=0", "train.shared_prompt=false"],
)
def test_sft_rejects_settings_it_would_ignore(override, tmp_path):
    from vlmr1.config import ConfigError, load_config
    from vlmr1.sft import sft

    cfg = load_config(None, [override, f"train.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[0]):
        sft(cfg)
    assert not (tmp_path / "config.yaml").exists()  # rejected before the run started


def test_model_rewards_use_the_variant_the_adapter_names(tiny_dir, reward_file, tmp_path, monkeypatch):
    # The adapter names a variant for the configured reward (here: a constant 0 in place of the
    # length reward). With reward.model_rewards on, the variant scores the rollouts, but it is
    # logged under the configured name; with it off the configured reward is used.
    variant = tmp_path / "variant.py"
    variant.write_text("def zero(completions, **kw):\n    return [0.0] * len(completions)\n")
    spec = f"{reward_file}:length_reward"
    from vlmr1.models.qwen_vl import QwenVLAdapter

    monkeypatch.setattr(QwenVLAdapter, "reward_overrides", {spec: f"{variant}:zero"})
    for on in (True, False):
        out = tmp_path / f"on{on}"
        train(grpo_config(tiny_dir, reward_file, out, "train.steps=1", "train.eval_before=false", "train.eval_after=false", f"reward.model_rewards={str(on).lower()}"))
        (row,) = train_rows(out)
        assert (row["rewards/length_reward"] == 0.0) == on


def _nan_loss_on(calls_to_poison: set[int], monkeypatch):
    """Make the policy loss NaN on the given (0-based) calls; other calls are untouched."""
    import dataclasses

    from vlmr1.rl import algos

    real, calls = algos.policy_loss, []

    def poisoned(*args, **kwargs):
        res = real(*args, **kwargs)
        calls.append(len(calls))
        return dataclasses.replace(res, loss=res.loss * math.nan) if calls[-1] in calls_to_poison else res

    monkeypatch.setattr(algos, "policy_loss", poisoned)


def test_nonfinite_loss_skips_the_step_and_counts_it(tiny_dir, reward_file, tmp_path, monkeypatch):
    # 3 steps of two micro-batches (8 rows, micro_batch_size 4): policy_loss calls 2 and 3 are
    # step 2, whose loss becomes NaN. That update is skipped (weights after step 2 equal those
    # after step 1, not NaN), counted, and training goes on to step 3.
    _nan_loss_on({3}, monkeypatch)
    out = tmp_path / "run"
    cfg = grpo_config(tiny_dir, reward_file, out, "train.steps=3", "train.save_every=1", "train.eval_before=false", "train.eval_after=false")
    train(cfg)
    rows = train_rows(out)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    w1, w2, w3 = (load_file(out / f"checkpoint-{k}" / "model.safetensors") for k in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert all(torch.isfinite(v).all() for v in w3.values()) and any(not torch.equal(w2[k], w3[k]) for k in w2)
    assert optimizer_steps(out / "checkpoint-3") == 2.0  # AdamW stepped twice, not three times


def test_too_many_nonfinite_steps_stop_with_a_checkpoint(tiny_dir, reward_file, tmp_path, monkeypatch):
    from vlmr1.optimizer import NonFiniteError

    _nan_loss_on(set(range(100)), monkeypatch)  # every step NaN
    out = tmp_path / "run"
    cfg = grpo_config(tiny_dir, reward_file, out, "train.steps=5", "train.max_nonfinite_steps=1", "train.eval_before=false")
    with pytest.raises(NonFiniteError, match=r"2 optimizer steps in a row .* step 2.*max_nonfinite_steps=1"):
        train(cfg)
    ckpt = out / "checkpoint-2"
    start, kept = load_file(tiny_dir / "model.safetensors"), load_file(ckpt / "model.safetensors")
    assert all(torch.equal(start[k], kept[k]) for k in start)  # no NaN reached the weights
    assert json.loads((ckpt / "trainer_state.json").read_text())["skipped_steps"] == 2


def test_keep_last_deletes_old_checkpoints(tiny_dir, reward_file, tmp_path):
    out = tmp_path / "run"
    cfg = grpo_config(tiny_dir, reward_file, out, "train.steps=3", "train.save_every=1", "train.keep_last=2", "train.eval_before=false", "train.eval_after=false")
    train(cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_gpu_out_of_memory_names_the_settings_to_lower(tiny_dir, reward_file, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    engine = HFEngine()
    engine.generate = oom
    cfg = grpo_config(tiny_dir, reward_file, tmp_path / "run", "train.eval_before=false")
    with pytest.raises(RuntimeError, match=r"GPU out of memory \(CUDA out of memory.*train.micro_batch_size.*max_completion_length"):
        train(cfg, engine=engine)


def test_shared_prompt_training_matches_the_repeated_prompt_path(tiny_dir, reward_file, tmp_path):
    # Same seed, same samples: encoding each prompt once per group changes only fp32 rounding.
    runs = {}
    for shared in (True, False):
        out = tmp_path / f"shared{shared}"
        train(grpo_config(tiny_dir, reward_file, out, f"train.shared_prompt={str(shared).lower()}", "train.eval_before=false", "train.eval_after=false"))
        runs[shared] = (train_rows(out), load_file(out / "final" / "model.safetensors"))
    (rows_a, w_a), (rows_b, w_b) = runs[True], runs[False]
    for a, b in zip(rows_a, rows_b, strict=True):
        assert a["reward"] == b["reward"]  # identical rollouts
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-7)
    # Gradients of the two paths agree to fp32 rounding (tests/test_shared_prompt.py, 2e-6 relative
    # norm), but AdamW divides each element by its own RMS, so elements with tiny gradients carry
    # that rounding into their update: measured 9e-5 after two steps at lr 1e-3. A real error (a
    # wrong position or mask) changes the loss and KL above, and moves weights by ~lr.
    assert max((w_a[k] - w_b[k]).abs().max().item() for k in w_a) <= 2e-4
