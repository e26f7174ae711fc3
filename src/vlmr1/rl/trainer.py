"""The GRPO training loop: rollout -> rewards -> advantages -> old/ref log-probs -> mu updates -> log -> save.

Built on accelerate, so the same function runs on CPU, one GPU or many. Each rank samples its
own prompts and all G completions of each, so groups are scored and normalised together.
The loss math lives in ``algos`` (pure functions); this file only moves tensors between stages.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import Config
from ..embedded import prepare_data, resolve_model_path
from ..evaluate import flat_metrics, run_evals
from ..models.adapter import box_frames
from ..models.finetune import is_peft
from ..rewards import compute_rewards, resolve_rewards
from ..runtime import (
    DataOrder,
    MetricsLogger,
    NonFiniteError,
    NonFiniteGuard,
    Timers,
    build_optimizer,
    explain_oom,
    finish_run,
    full_parameters,
    load_model,
    load_trainer_state,
    make_batch,
    make_run_dir,
    micro_batch,
    optimizer_step,
    resolve_resume,
    save_checkpoint,
    save_config,
    seed_everything,
)
from . import algos
from .engines import HFEngine, vllm_engine
from .logprobs import completion_logprobs
from .rollout import Rollout, Sampling, generate, generate_shared, prompt_rows
from .shared_prompt import shared_prompt_logprobs


def micro_batches(rows: list[int], size: int) -> list[list[int]]:
    """Chunks of at most ``size`` rows, each a contiguous run (filtered groups leave gaps)."""
    runs: list[list[int]] = []
    for i in rows:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < size:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def chunk_logprobs(model, adapter, rollout: Rollout, shared: bool, rows: list[int], temperature: float):
    """Log-probs [n, Lc], completion ids and mask for a contiguous run of rollout rows.

    ``shared``: each prompt of the run is encoded once and its completions attend to the shared
    cache (``shared_prompt``: exact, up to G x less prompt work); otherwise each row's prompt is
    run in full.
    """
    start, stop = rows[0], rows[-1] + 1
    ids, mask = rollout.completion_ids[start:stop], rollout.completion_mask[start:stop]
    if shared:
        G = rollout.group_size
        first, last = start // G, (stop - 1) // G + 1
        counts = [min(stop, (i + 1) * G) - max(start, i * G) for i in range(first, last)]  # a run may cut a group
        prompts = adapter.slice_prompts(rollout.prompts, first, last)
        logp = shared_prompt_logprobs(model, adapter, prompts, ids, mask, counts, temperature, adapter.suppressed_token_ids)
    else:
        inputs = adapter.sequence_inputs(prompt_rows(adapter, rollout, start, stop), ids, mask)
        logp = completion_logprobs(model, inputs, ids, temperature, adapter.suppressed_token_ids)
    return logp, ids, mask


@torch.no_grad()
def frozen_logprobs(model, adapter, rollout: Rollout, shared: bool, size: int, temperature: float) -> torch.Tensor:
    """Log-probs [N, Lc] without gradients (old policy for mu > 1, or the reference model)."""
    rows = micro_batches(list(range(len(rollout.texts))), size)
    return torch.cat([chunk_logprobs(model, adapter, rollout, shared, run, temperature)[0] for run in rows])


# What lowers GPU memory in a GRPO step, most effective first.
OOM_SETTINGS = [
    "train.micro_batch_size (sequences per forward/backward)",
    "rollout.max_completion_length",
    "train.prompts_per_step or rollout.group_size (sequences generated at once)",
    "model.max_pixels (image tokens per prompt)",
    "algo.beta=0 (no reference model in memory)",
    "model.dtype=bfloat16",
]


def train(cfg: Config) -> dict:
    """GRPO as configured; returns the summary (before/after evaluation, train seconds)."""
    with explain_oom(OOM_SETTINGS):
        return _train(cfg)


def _train(cfg: Config) -> dict:
    out = make_run_dir(cfg, "grpo")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    r, a, t = cfg.rollout, cfg.algo, cfg.train
    G = r.group_size
    seed_everything(t.seed)
    # Generated data is written once per machine (local main), then read by every rank.
    with accelerator.local_main_process_first():
        data = prepare_data(cfg, out, write=accelerator.is_local_main_process)
    resume = resolve_resume(cfg, out)
    base_path = resolve_model_path(cfg.model.path, out)
    # Gradient checkpointing drops the KV cache the shared-prompt path is built on.
    shared_prompt = t.shared_prompt and not cfg.model.gradient_checkpointing
    # What samples the rollouts: HF generate on the policy (default), or vLLM (GPU only). The HF
    # engine is handed this module's generate functions, which tests replace.
    if r.engine == "vllm":
        engine = vllm_engine(cfg, accelerator, resume or base_path, data.train)
    else:
        engine = HFEngine(generate, generate_shared, shared_prompt)
    policy = load_model(cfg, resume or base_path, fresh_lora=resume is None)
    reward_funcs = resolve_rewards(cfg.reward.funcs, policy.reward_overrides if cfg.reward.model_rewards else None)
    # beta = 0 loads no reference model. The reference is always the starting checkpoint,
    # also after a resume, and it is the same class as the policy. With LoRA it is the policy
    # itself with its adapters switched off: no second copy of the weights.
    lora = is_peft(policy.model)
    ref_model = load_model(cfg, base_path, trainable=False).model if a.beta > 0 and not lora else None
    optimizer, scheduler = build_optimizer([p for p in policy.model.parameters() if p.requires_grad], t)
    model, optimizer = accelerator.prepare(policy.model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if ref_model is not None:
        ref_model.to(accelerator.device)
    state = load_trainer_state(resume, optimizer, scheduler) if resume else {"step": 0}
    start = state["step"]
    guard = NonFiniteGuard(t.max_nonfinite_steps, state.get("skipped_steps", 0))
    if main:
        save_config(cfg, out)
        print(f"vlmr1 train: run folder {out}")
    logger = MetricsLogger(out, enabled=main)
    logger.truncate_after(start)
    summary: dict = {}
    if t.eval_before and start == 0 and main and data.evals:
        summary["before"] = run_evals(cfg, unwrapped, policy, data, out, "before")
        logger.log(0, flat_metrics(summary["before"]))
    if t.shared_prompt and not shared_prompt and main:
        print("train.shared_prompt: off, because model.gradient_checkpointing drops the prompt's KV cache")
    sampling = Sampling(r.max_completion_length, True, r.temperature, r.top_p, r.top_k, r.repetition_penalty)
    order = DataOrder(len(data.train), t.seed, t.prompts_per_step, world, rank)
    timers = Timers()
    bar = tqdm(total=t.steps, initial=start, desc="grpo", disable=not (main and t.progress))
    wall = time.perf_counter()
    for step in range(start, t.steps):
        # 1. Rollout: P prompts, each repeated G times, one sampled completion per row.
        with timers("gen"):
            batch = make_batch([data.train[i] for i in order.indices(step)], cfg.data.task)
            unique = policy.encode_prompts(batch.problems, batch.images).to(accelerator.device)
            gen_seed = t.seed * 1_000_003 + step * 1_009 + rank
            torch.manual_seed(gen_seed)  # same samples after a resume
            engine.wake()
            with full_parameters(accelerator, model):
                rollout = engine.generate(unwrapped, policy, unique, G, sampling, problems=batch.problems, images=batch.images, seed=gen_seed)
            engine.sleep()  # memory back to training (vLLM sleep mode)
        # 2. Rewards: every reward's column kept for logging, weighted sum for the advantage.
        with timers("reward"):
            columns = {k: [v for v in vals for _ in range(G)] for k, vals in batch.columns.items()}
            # The frame the boxes are answered in, per prompt, for each of its G completions.
            columns["input_size"] = [f for f in box_frames(policy, rollout.prompts) for _ in range(G)]
            # Token counts, for length-shaped rewards (characters would favour short tokens).
            columns["completion_length"] = rollout.completion_mask.sum(1).tolist()
            columns["max_completion_length"] = [r.max_completion_length] * len(rollout.texts)
            rewards = compute_rewards(reward_funcs, cfg.reward.weights, rollout.texts, columns)
        # 3. Advantages per group of G; optionally drop groups with no signal.
        advantages = algos.group_advantages(rewards.total, G, a.advantage_scale).to(accelerator.device)  # [N]
        zero_std = algos.zero_std_groups(rewards.total, G)  # [P]
        keep = ~zero_std.repeat_interleave(G) if a.filter_zero_std else torch.ones(len(rollout.texts), dtype=torch.bool)
        rows = [i for i in range(len(rollout.texts)) if keep[i]]
        # 4. Frozen log-probs: the old policy (only needed when mu > 1) and the reference.
        with timers("old"):
            old_logp = frozen_logprobs(model, policy, rollout, shared_prompt, t.micro_batch_size, r.temperature) if a.num_iterations > 1 else None
        with timers("ref"):
            ref_logp = None
            if a.beta > 0:
                with unwrapped.disable_adapter() if lora else nullcontext():
                    ref_logp = frozen_logprobs(unwrapped if lora else ref_model, policy, rollout, shared_prompt, t.micro_batch_size, r.temperature)
        mask = rollout.completion_mask
        # Losses are means over the GLOBAL batch: rows (grpo) or valid tokens (dapo) of every rank.
        # DDP averages gradients over ranks, so each rank's share is scaled back up by the world size.
        counts = torch.tensor([float(len(rows)), mask[rows].sum().item() if rows else 0.0], device=accelerator.device)
        global_rows, global_tokens = accelerator.reduce(counts, "sum").tolist()
        # A rank whose groups were all filtered out still joins DDP's gradient all-reduce, with a
        # zero-weighted row; otherwise the other ranks would wait for it forever.
        update_rows, share = (rows, 1.0) if rows else ([0], 0.0)
        stats: dict[str, list[float]] = {"loss": [], "kl": [], "clip_fraction": [], "grad_norm": []}
        # 5. mu optimizer updates over the rollout, micro-batched with gradient accumulation.
        with timers("update"):
            for _ in range(a.num_iterations if global_rows else 0):
                chunks = micro_batches(update_rows, t.micro_batch_size)
                finite = True
                for k, chunk in enumerate(chunks):
                    with micro_batch(accelerator, model, last=k == len(chunks) - 1):
                        logp, ids, m = chunk_logprobs(model, policy, rollout, shared_prompt, chunk, r.temperature)  # [n, Lc]
                        sel = torch.tensor(chunk)
                        res = algos.policy_loss(
                            logp,
                            logp.detach() if old_logp is None else old_logp[sel],
                            advantages[sel],
                            m,
                            eps_low=a.eps_low,
                            eps_high=a.eps_high,
                            ref_logp=None if ref_logp is None else ref_logp[sel],
                            beta=a.beta,
                            kl_estimator=a.kl_estimator,
                            aggregation=a.loss_aggregation,
                            max_completion_length=r.max_completion_length,
                            global_num_tokens=global_tokens / world,
                            importance_level=a.importance_level,
                        )
                        weight = share * (1.0 if a.loss_aggregation == "dapo" else len(chunk) * world / global_rows)
                        accelerator.backward(res.loss * weight)
                    stats["loss"].append(res.loss.item() * weight)
                    finite = finite and math.isfinite(stats["loss"][-1])
                    stats["clip_fraction"].append(res.clip_fraction.item())
                    if res.kl is not None:
                        stats["kl"].append(res.kl.item())
                norm, stepped = optimizer_step(accelerator, model, optimizer, scheduler, t.max_grad_norm, finite)
                stats["grad_norm"].append(norm)
                if guard.record(stepped):
                    ckpt = out / f"checkpoint-{step + 1}"
                    if main:
                        save_checkpoint(out, step + 1, policy, optimizer, scheduler, {"skipped_steps": guard.skipped})
                    raise NonFiniteError(guard.message(step + 1, ckpt))
        with timers("sync"):  # the rollout engine samples from the updated policy next step
            engine.sync_weights(unwrapped)
        # 6. Log and save.
        if (step + 1) % t.log_every == 0:
            # Every rank joins: logged numbers describe the global batch, not rank 0's share.
            dev = accelerator.device
            totals = accelerator.gather(rewards.total.to(dev))  # [N * world]
            per_func = accelerator.gather(rewards.per_func.to(dev))  # [N * world, n_rewards]
            lengths = accelerator.gather(mask.sum(1).float().to(dev))
            local = {k: sum(v) / len(v) for k, v in stats.items() if v and k != "loss"}
            local["loss"] = sum(stats["loss"]) / max(1, a.num_iterations)
            names = sorted(local)  # same keys on every rank: same stats were filled
            means = accelerator.reduce(torch.tensor([local[k] for k in names], device=dev), "mean").tolist()
            metrics = {
                "reward": totals.mean().item(),
                "reward_std": totals.std().item(),
                # A reward given as path/file.py:function is logged under its function name.
                **{f"rewards/{k.rsplit(':', 1)[-1]}": v.item() for k, v in zip(rewards.names, per_func.nanmean(0))},
                "completion_length": lengths.mean().item(),
                "zero_std_groups": accelerator.gather(zero_std.float().to(dev)).mean().item(),
                "skipped_steps": guard.skipped,
                "lr": scheduler.get_last_lr()[0],
                **dict(zip(names, means)),
                **timers.pop(),
            }
            logger.log(step + 1, metrics)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}")
        if t.eval_every and (step + 1) % t.eval_every == 0 and main and data.evals:
            logger.log(step + 1, flat_metrics(run_evals(cfg, unwrapped, policy, data, out, f"step{step + 1}")))
        if main and t.save_every and (step + 1) % t.save_every == 0:
            save_checkpoint(out, step + 1, policy, optimizer, scheduler, {"skipped_steps": guard.skipped}, t.keep_last)
        bar.update(1)
    bar.close()
    accelerator.wait_for_everyone()
    summary["train_seconds"] = time.perf_counter() - wall
    if main:
        finish_run(cfg, out, policy, unwrapped, optimizer, scheduler, data, logger, summary, {"skipped_steps": guard.skipped})
    logger.close()
    return summary

