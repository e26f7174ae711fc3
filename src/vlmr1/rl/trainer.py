"""The GRPO training loop: rollout -> rewards -> advantages -> old/ref log-probs -> update -> sync -> log -> save.

Built on accelerate, so the same function runs on CPU, one GPU or many. Each rank samples its
own prompts and all G completions of each, so groups are scored and normalised together.
The loss math lives in ``algos`` (pure functions) and the update in ``update``; this file only
moves tensors between the stages, each timed (``time/<stage>`` in metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from ..checkpoints import load_trainer_state, resolve_resume, save_checkpoint
from ..config import Config
from ..data.batch import Batch, make_batch
from ..data.order import DataOrder
from ..distributed import full_parameters, gather_rows
from ..embedded import hold_to_context, prepare_data, resolve_model_path
from ..evaluate import flat_metrics, run_evals
from ..metrics import Timers
from ..models.adapter import box_frames
from ..models.finetune import is_peft
from ..models.loading import load_model
from ..optimizer import NonFiniteError, NonFiniteGuard, build_optimizer, optimizer_step
from ..rewards import RewardOutput, compute_rewards, resolve_rewards
from ..run import explain_oom, finish_run, make_accelerator, make_run_dir, seed_everything, start_log
from . import algos, dynamic_sampling, masks, noisy_rollout
from .dynamic_sampling import Draw
from .engines import HFEngine, RolloutEngine
from .rollout import Rollout, Sampling
from .rollout_log import RolloutLog
from .update import StepBatch, UpdateStats, frozen_logprobs, policy_update
from .vllm_engine import vllm_engine

REFILL_SEED = 1_000_000_007  # offset of the data order that dynamic sampling's extra rounds draw from

# What lowers GPU memory in a GRPO step, most effective first.
OOM_SETTINGS = [
    "train.micro_batch_size (sequences per forward/backward)",
    "rollout.max_completion_length",
    "train.prompts_per_step or rollout.group_size (sequences generated at once)",
    "model.max_pixels (image tokens per prompt)",
    "algo.beta=0 (no reference model in memory)",
    "model.dtype=bfloat16",
]


def train(cfg: Config, engine: RolloutEngine | None = None) -> dict:
    """GRPO as configured; returns the summary (before/after evaluation, train seconds).

    ``engine`` samples the rollouts; None builds the one ``rollout.engine`` names (HF generate
    on the policy, or vLLM)."""
    with explain_oom(OOM_SETTINGS):
        return _train(cfg, engine)


def _train(cfg: Config, engine: RolloutEngine | None) -> dict:
    out = make_run_dir(cfg, "grpo")
    accelerator = make_accelerator(cfg, out)
    main, rank, dev = accelerator.is_main_process, accelerator.process_index, accelerator.device
    r, a, t = cfg.rollout, cfg.algo, cfg.train
    G = r.group_size
    seed_everything(t.seed)
    # Generated data is written once per machine (local main), then read by every rank.
    with accelerator.local_main_process_first():
        data = prepare_data(cfg, out, write=accelerator.is_local_main_process, scored_by=cfg.reward.funcs)
    resume = resolve_resume(cfg, out)
    base_path = resolve_model_path(cfg.model.path, out)
    # Gradient checkpointing drops the KV cache the shared-prompt path is built on.
    shared_prompt = t.shared_prompt and not cfg.model.gradient_checkpointing
    if engine is None and r.engine == "vllm":
        engine = vllm_engine(cfg, accelerator, resume or base_path, data.train)
    engine = engine or HFEngine(shared_prompt)
    adapter = load_model(cfg, resume or base_path, fresh_lora=resume is None)
    hold_to_context(cfg, adapter, data, cfg.rollout.max_completion_length)
    reward_funcs = resolve_rewards(cfg.reward.funcs, adapter.reward_overrides if cfg.reward.model_rewards else None)
    lora = is_peft(adapter.model)
    ref_model = reference_model(cfg, base_path, adapter.model, dev)
    optimizer, scheduler = build_optimizer([p for p in adapter.model.parameters() if p.requires_grad], t)
    model, optimizer = accelerator.prepare(adapter.model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    state = load_trainer_state(resume, optimizer, scheduler) if resume else {"step": 0}
    start = state["step"]
    guard = NonFiniteGuard(t.max_nonfinite_steps, out, state.get("skipped_steps", 0))
    step_optimizer = functools.partial(optimizer_step, accelerator, model, optimizer, scheduler, t.max_grad_norm, guard)
    if main:
        print(f"vlmr1 train: run folder {out}")
        if t.shared_prompt and not shared_prompt:
            print("train.shared_prompt: off, because model.gradient_checkpointing drops the prompt's KV cache")
    logger, summary = start_log(cfg, out, accelerator, start, unwrapped, adapter, data)
    rollout_log = RolloutLog(out, t.log_completions, t.log_completions_groups, main, logger.tb)
    rollout_log.truncate_after(start)
    sampling = Sampling.from_config(r)
    order = DataOrder(len(data.train), t.seed, t.prompts_per_step, accelerator.num_processes, rank)
    refill_order = DataOrder(len(data.train), t.seed + REFILL_SEED, t.prompts_per_step, accelerator.num_processes, rank)
    timers, tokens = Timers(), 0.0  # completion tokens sampled on this rank since the last metrics line

    def draw(indices: list[int], gen_seed: int) -> Draw:
        with timers("gen"):
            batch = make_batch([data.train[i] for i in indices], cfg.data.task)
            prompts = adapter.encode_prompts(batch.problems, batch.images).to(dev)
            # NoisyRollout (rollout.noise_std): sample from noised images, log-probs on the clean ones
            images = noisy_rollout.noised(batch.images, r.noise_std, gen_seed) if r.noise_std else batch.images
            seen = adapter.encode_prompts(batch.problems, images).to(dev) if r.noise_std else prompts
            torch.manual_seed(gen_seed)
            engine.wake()
            with full_parameters(accelerator, model):
                rollout = engine.generate(unwrapped, adapter, seen, G, sampling, problems=batch.problems, images=images, seed=gen_seed)
            engine.sleep()  # memory back to training (vLLM sleep mode)
            rollout = dataclasses.replace(rollout, prompts=prompts) if r.noise_std else rollout
        with timers("reward"):
            rewards = compute_rewards(reward_funcs, cfg.reward.weights, rollout.texts, reward_columns(batch, adapter, rollout))
        return Draw(batch, rollout, rewards)

    def draw_refill(step: int, k: int) -> Draw:  # extra round k >= 1 of dynamic sampling
        return draw(refill_order.indices(step * a.dynamic_sampling_rounds + k - 1), dynamic_sampling.refill_seed(t.seed, step, rank, k))

    bar = tqdm(total=t.steps, initial=start, desc="grpo", disable=not (main and t.progress))
    wall = time.perf_counter()
    for step in range(start, t.steps):
        with timers("step"):
            # 1-2. Rollout and rewards: G sampled completions for each of this rank's P prompts, every
            # reward's column kept for logging, weighted sum for the advantage. Dynamic sampling
            # (algo.dynamic_sampling_rounds) draws more rounds until the step has P informative groups.
            gen_seed = t.seed * 1_000_003 + step * 1_009 + rank  # same samples after a resume
            batch, rollout, rewards = draw(order.indices(step), gen_seed)
            drawn = {}
            if a.dynamic_sampling_rounds:
                more = functools.partial(draw_refill, step)
                (batch, rollout, rewards), drawn = dynamic_sampling.refill(Draw(batch, rollout, rewards), more, accelerator, a.dynamic_sampling_rounds, G, adapter)
            # 3. Advantages per group of G; optionally drop groups with no signal.
            with timers("adv"):
                advantages = algos.group_advantages(rewards.total, G, a.advantage_scale).to(dev)  # [N]
                zero_std = algos.zero_std_groups(rewards.total, G)  # [P]
                rows = [i for i in range(len(rollout.texts)) if not (a.filter_zero_std and zero_std[i // G])]
            # 4. Frozen log-probs: the old policy (only needed when mu > 1) and the reference.
            with timers("old"):
                old_logp = frozen_logprobs(model, adapter, rollout, shared_prompt, t.micro_batch_size) if a.num_iterations > 1 else None
            with timers("ref"), unwrapped.disable_adapter() if lora else nullcontext():
                ref_logp = frozen_logprobs(ref_model, adapter, rollout, shared_prompt, t.micro_batch_size) if ref_model is not None else None
            # 5. mu optimizer updates over the rollout.
            log_rollouts = rollout_log.wants(step + 1)
            with timers("update"):
                try:
                    stats = policy_update(
                        model, adapter, accelerator, StepBatch(rollout, advantages, rows, old_logp, ref_logp, loss_mask(rollout, a)), a,
                        micro_batch_size=t.micro_batch_size, shared=shared_prompt,
                        step_optimizer=functools.partial(step_optimizer, step=step + 1), row_stats=log_rollouts,
                    )
                except NonFiniteError:
                    if main:
                        save_checkpoint(out, step + 1, adapter, optimizer, scheduler, {"skipped_steps": guard.skipped})
                    raise
            # 6. Sync: the rollout engine samples from the updated policy next step.
            with timers("sync"):
                sync_gap = engine.sync_weights(unwrapped)  # vLLM: the probe's log-prob gap, every rollout.sync_check_every pushes
            # 7. Rollout lines, metrics (every rank joins: they describe the global batch) and evaluation.
            if log_rollouts:
                with timers("rollouts"):
                    rollout_log.log(accelerator, step + 1, batch, rollout, box_frames(adapter, rollout.prompts), rewards, advantages, zero_std, stats)
            tokens += rollout.completion_mask.sum().item()
            log = (step + 1) % t.log_every == 0
            row = {**step_metrics(accelerator, rewards, rollout, zero_std, stats, a.num_iterations), **drawn} if log else {}
            if log and sync_gap is not None:
                row["vllm_sync_gap"] = sync_gap
            if t.eval_every and (step + 1) % t.eval_every == 0 and main and data.evals:
                with timers("eval"):
                    row.update(flat_metrics(run_evals(cfg, unwrapped, adapter, data, out, f"step{step + 1}")))
        # 8. Log, then save: a checkpoint of the loop never holds a step whose line is missing (the
        # non-finite stop's checkpoint has its error instead). So time/save is the write after the
        # previous line, and time/step all of this step up to its line.
        if log:
            row.update(skipped_steps=guard.skipped, lr=scheduler.get_last_lr()[0], **throughput_and_times(accelerator, tokens, timers))
            tokens = 0.0
            bar.set_postfix(reward=f"{row['reward']:.3f}")
        if row:
            logger.log(step + 1, row)
        if main and t.save_every and (step + 1) % t.save_every == 0:
            with timers("save"):
                save_checkpoint(out, step + 1, adapter, optimizer, scheduler, {"skipped_steps": guard.skipped}, t.keep_last)
        bar.update(1)
    bar.close()
    accelerator.wait_for_everyone()
    summary["train_seconds"] = time.perf_counter() - wall
    if main:
        finish_run(cfg, out, adapter, unwrapped, optimizer, scheduler, data, logger, summary, {"skipped_steps": guard.skipped})
    logger.close()
    return summary


def reference_model(cfg: Config, base_path, policy, device):
    """The KL reference, on ``device``: None when beta = 0 (nothing is loaded).

    The reference is always the starting checkpoint, also after a resume, and the same class as
    the policy. With LoRA it is the policy itself, run with its adapters switched off: no second
    copy of the weights."""
    if cfg.algo.beta == 0:
        return None
    return policy if is_peft(policy) else load_model(cfg, base_path, trainable=False).model.to(device)


def loss_mask(rollout: Rollout, a) -> torch.Tensor | None:
    """The tokens in the loss: None (the completion mask), or without truncated completions (algo.mask_truncated_completions)."""
    return masks.truncation_mask(rollout.completion_mask, rollout.truncated) if a.mask_truncated_completions else None


def reward_columns(batch: Batch, adapter, rollout: Rollout) -> dict[str, list]:
    """The dataset columns of each of the N = P * G completions, plus what rewards need of the rollout."""
    G, N = rollout.group_size, len(rollout.texts)
    columns = {k: [v for v in vals for _ in range(G)] for k, vals in batch.columns.items()}
    # The frame the boxes are answered in, per prompt, for each of its G completions.
    columns["input_size"] = [f for f in box_frames(adapter, rollout.prompts) for _ in range(G)]
    # Token counts, for length-shaped rewards (characters would favour short tokens).
    columns["completion_length"] = rollout.completion_mask.sum(1).tolist()
    columns["max_completion_length"] = [rollout.sampling.max_new_tokens] * N
    return columns


def throughput_and_times(accelerator, tokens: float, timers) -> dict[str, float]:
    """The stage times since the last line, and ``tokens_per_second``: completion tokens sampled
    by all ranks (``tokens`` is this rank's) per second of step time, evaluation left out. Every rank calls it."""
    global_tokens = accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum").item()
    times = timers.pop()
    return {"tokens_per_second": global_tokens / (times["time/step"] - times.get("time/eval", 0.0)), **times}


def step_metrics(accelerator, rewards: RewardOutput, rollout: Rollout, zero_std: torch.Tensor, stats: UpdateStats, mu: int) -> dict[str, float]:
    """One metrics line of a step: rewards and lengths over the global batch, update numbers as
    means over ranks. Every rank must call it (it gathers)."""
    dev = accelerator.device
    totals = gather_rows(accelerator, rewards.total.to(dev))  # [N * world]
    per_func = gather_rows(accelerator, rewards.per_func.to(dev))  # [N * world, n_rewards]
    lengths = gather_rows(accelerator, rollout.completion_mask.sum(1).float().to(dev))  # [N * world]
    truncated = gather_rows(accelerator, rollout.truncated.float().to(dev))  # [N * world]
    lists = (("kl", stats.kl), ("clip_fraction", stats.clip_fraction), ("ratio", stats.ratio), ("grad_norm", stats.grad_norm), ("off_policy_masked", stats.off_policy_masked))
    local = {k: sum(v) / len(v) for k, v in lists if v}
    # Losses are summed over micro-batches (each weighted to its share of the global batch), averaged over passes.
    local["loss"] = sum(stats.loss) / max(1, mu)
    local["policy_loss"] = sum(stats.policy_loss) / max(1, mu)
    names = sorted(local)  # same keys on every rank: the same lists were filled
    means = accelerator.reduce(torch.tensor([local[k] for k in names], device=dev), "mean").tolist()
    # Entropy over every loss token of every rank and pass (sums, then one division)
    entropy, high, count = accelerator.reduce(torch.tensor(stats.entropy, device=dev), "sum").tolist()
    mismatch = mismatch_metrics(accelerator, stats.mismatch) if rollout.sampler_logp is not None else {}
    return {
        "reward": totals.mean().item(),
        "reward_std": totals.std().item(),
        # A reward given as path/file.py:function is logged under its function name.
        **{f"rewards/{k.rsplit(':', 1)[-1]}": v.item() for k, v in zip(rewards.names, per_func.nanmean(0))},
        "completion_length": lengths.mean().item(),
        "truncated_fraction": truncated.mean().item(),  # completions cut at the length limit
        "zero_std_groups": gather_rows(accelerator, zero_std.float().to(dev)).mean().item(),
        **dict(zip(names, means)),
        "entropy": entropy / max(count, 1.0),  # mean policy entropy (nats) at completion tokens in the loss
        "entropy_high_fraction": high / max(count, 1.0),  # share of those tokens above ln 2 nats (entropy.HIGH_ENTROPY)
        **mismatch,
    }


def mismatch_metrics(accelerator, parts: list[float]) -> dict[str, float]:
    """Sampler/trainer mismatch over the global batch (``update.mismatch_stats``); every rank calls it."""
    dev = accelerator.device
    kl_sum, tokens, kl_max, weight_sum, masked, rows = parts or [0.0] * 6
    kl_sum, tokens, weight_sum, masked, rows = accelerator.reduce(torch.tensor([kl_sum, tokens, weight_sum, masked, rows], device=dev), "sum").tolist()
    kl_max = accelerator.gather(torch.tensor([kl_max], device=dev)).max().item()
    return {
        "mismatch_kl": kl_sum / max(tokens, 1.0),  # token mean of KL(sampler || trainer), k3 per sequence
        "mismatch_kl_max": kl_max,  # the largest sequence's
        "rollout_is_weight": weight_sum / max(tokens, 1.0),  # mean weight on the policy term (1: none; 0 on masked sequences)
        "rollout_masked": masked / max(rows, 1.0),  # share of sequences left out (algo.rollout_mask_threshold)
    }
