"""Supervised fine-tuning: cross-entropy on answer tokens only, same data, adapters and checkpoints as GRPO."""

from __future__ import annotations

import functools
import math

import torch
from tqdm.auto import tqdm

from .checkpoints import load_trainer_state, resolve_resume, save_checkpoint
from .config import Config, ConfigError
from .data.batch import make_batch
from .data.order import DataOrder
from .distributed import micro_batch
from .embedded import hold_to_context, prepare_data, resolve_model_path
from .evaluate import flat_metrics, run_evals
from .metrics import Timers
from .models.loading import load_model
from .optimizer import NonFiniteError, NonFiniteGuard, build_optimizer, optimizer_step
from .rl.algos import completion_mask, masked_mean
from .rl.logprobs import completion_logprobs
from .run import explain_oom, finish_run, make_accelerator, make_run_dir, seed_everything, start_log


def sft_loss(model, adapter, batch) -> torch.Tensor:
    """Mean negative log-likelihood per answer token (answer + EOS), prompt tokens excluded."""
    prompts = adapter.encode_prompts(batch.problems, batch.images)
    targets = adapter.encode_completions(batch.columns["solution"])  # [B, Lc]
    mask = completion_mask(targets, adapter.eos_token_ids)  # [B, Lc]
    logp = completion_logprobs(model, adapter.sequence_inputs(prompts, targets, mask), targets)  # [B, Lc]
    return -masked_mean(logp, mask)


def check_sft_config(cfg: Config) -> None:
    """SFT has no rollouts, advantages or rewards: reject settings it would otherwise ignore."""
    default = Config()
    if cfg.algo != default.algo:
        raise ConfigError("algo.* settings have no effect in sft; remove them from the sft config")
    for name, value in vars(cfg.reward).items():
        if name != "eval_format" and value != getattr(default.reward, name):  # eval_format: the eval's format rate
            raise ConfigError(f"reward.{name} has no effect in sft; remove it from the sft config")
    for name in ("shared_prompt", "log_completions", "log_completions_groups"):  # GRPO rollouts only
        if getattr(cfg.train, name) != getattr(default.train, name):
            raise ConfigError(f"train.{name} has no effect in sft (no rollouts); remove it from the sft config")
    used = {"max_completion_length"} | ({"temperature"} if cfg.train.eval_samples else set())  # the eval's generation
    for name, value in vars(cfg.rollout).items():
        if name not in used and value != getattr(default.rollout, name):
            raise ConfigError(f"rollout.{name} has no effect in sft (greedy evaluation); remove it")


def sft(cfg: Config) -> dict:
    """Supervised fine-tuning as configured; returns the summary (before/after evaluation)."""
    check_sft_config(cfg)
    with explain_oom(["train.micro_batch_size", "model.max_pixels (image tokens per prompt)", "model.dtype=bfloat16"]):
        return _sft(cfg)


def _sft(cfg: Config) -> dict:
    out = make_run_dir(cfg, "sft")
    accelerator = make_accelerator(cfg, out)
    main, t = accelerator.is_main_process, cfg.train
    seed_everything(t.seed)
    with accelerator.local_main_process_first():
        data = prepare_data(cfg, out, write=accelerator.is_local_main_process)
    resume = resolve_resume(cfg, out)
    adapter = load_model(cfg, resume or resolve_model_path(cfg.model.path, out), fresh_lora=resume is None)
    hold_to_context(cfg, adapter, data, cfg.rollout.max_completion_length)
    optimizer, scheduler = build_optimizer([p for p in adapter.model.parameters() if p.requires_grad], t)
    model, optimizer = accelerator.prepare(adapter.model, optimizer)
    state = load_trainer_state(resume, optimizer, scheduler) if resume is not None else {"step": 0}
    start = state["step"]
    guard = NonFiniteGuard(t.max_nonfinite_steps, out, state.get("skipped_steps", 0))
    step_optimizer = functools.partial(optimizer_step, accelerator, model, optimizer, scheduler, t.max_grad_norm, guard)
    logger, summary = start_log(cfg, out, accelerator, start, model, adapter, data)
    order = DataOrder(len(data.train), t.seed, t.prompts_per_step, accelerator.num_processes, accelerator.process_index)
    timers = Timers()
    micro = t.micro_batch_size
    bar = tqdm(total=t.steps, initial=start, desc="sft", disable=not (main and t.progress))
    model.train()
    for step in range(start, t.steps):
        with timers("step"):
            with timers("data"):
                batch_samples = [data.train[i] for i in order.indices(step)]
            total = 0.0
            with timers("update"):
                for k in range(0, len(batch_samples), micro):
                    chunk = batch_samples[k : k + micro]
                    with micro_batch(accelerator, model, last=k + micro >= len(batch_samples)):
                        loss = sft_loss(model, adapter, make_batch(chunk, cfg.data.task)) * len(chunk) / len(batch_samples)
                        accelerator.backward(loss)
                    total += loss.item()
                try:
                    grad_norm = step_optimizer(math.isfinite(total), step + 1)
                except NonFiniteError:
                    if main:
                        save_checkpoint(out, step + 1, adapter, optimizer, scheduler, {"skipped_steps": guard.skipped})
                    raise
            log = (step + 1) % t.log_every == 0
            row = {"loss": total, "grad_norm": grad_norm} if log else {}
            if t.eval_every and (step + 1) % t.eval_every == 0 and main:
                with timers("eval"):
                    row.update(flat_metrics(run_evals(cfg, model, adapter, data, out, f"step{step + 1}")))
        # Log, then save (as in GRPO): time/save is the write after the previous line.
        if log:
            row.update(skipped_steps=guard.skipped, lr=scheduler.get_last_lr()[0], **timers.pop())
        if row:
            logger.log(step + 1, row)
        if main and t.save_every and (step + 1) % t.save_every == 0:
            with timers("save"):
                save_checkpoint(out, step + 1, adapter, optimizer, scheduler, {"skipped_steps": guard.skipped}, t.keep_last)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        finish_run(cfg, out, adapter, model, optimizer, scheduler, data, logger, summary, {"skipped_steps": guard.skipped})
    logger.close()
    return summary
