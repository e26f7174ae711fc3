"""Supervised fine-tuning: cross-entropy on answer tokens only, same data, adapters and checkpoints as GRPO."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .embedded import prepare_data, resolve_model_path
from .evaluate import flat_metrics, run_evals
from .rl.algos import completion_mask, masked_mean
from .rl.logprobs import completion_logprobs
from .runtime import (
    DataOrder,
    MetricsLogger,
    NonFiniteError,
    NonFiniteGuard,
    Timers,
    build_optimizer,
    explain_oom,
    finish_run,
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
    used = {"max_completion_length"}  # the eval's generation length
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
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    seed_everything(cfg.train.seed)
    with accelerator.local_main_process_first():
        data = prepare_data(cfg, out, write=accelerator.is_local_main_process)
    resume = resolve_resume(cfg, out)
    adapter = load_model(cfg, resume or resolve_model_path(cfg.model.path, out), fresh_lora=resume is None)
    optimizer, scheduler = build_optimizer([p for p in adapter.model.parameters() if p.requires_grad], cfg.train)
    model, optimizer = accelerator.prepare(adapter.model, optimizer)
    state = load_trainer_state(resume, optimizer, scheduler) if resume is not None else {"step": 0}
    start = state["step"]
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps, state.get("skipped_steps", 0))
    if main:
        save_config(cfg, out)
    logger = MetricsLogger(out, enabled=main)
    logger.truncate_after(start)
    summary: dict = {}
    if cfg.train.eval_before and start == 0 and main and data.evals:
        summary["before"] = run_evals(cfg, model, adapter, data, out, "before")
        logger.log(0, flat_metrics(summary["before"]))
    order = DataOrder(len(data.train), cfg.train.seed, cfg.train.prompts_per_step, accelerator.num_processes, accelerator.process_index)
    timers = Timers()
    micro = cfg.train.micro_batch_size
    bar = tqdm(total=cfg.train.steps, initial=start, desc="sft", disable=not (main and cfg.train.progress))
    model.train()
    for step in range(start, cfg.train.steps):
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
            grad_norm, stepped = optimizer_step(accelerator, model, optimizer, scheduler, cfg.train.max_grad_norm, math.isfinite(total))
        if guard.record(stepped):
            if main:
                save_checkpoint(out, step + 1, adapter, optimizer, scheduler, {"skipped_steps": guard.skipped})
            raise NonFiniteError(guard.message(step + 1, out / f"checkpoint-{step + 1}"))
        if (step + 1) % cfg.train.log_every == 0:
            metrics = {"loss": total, "grad_norm": grad_norm, "skipped_steps": guard.skipped, "lr": scheduler.get_last_lr()[0]}
            logger.log(step + 1, {**metrics, **timers.pop()})
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and main:
            logger.log(step + 1, flat_metrics(run_evals(cfg, model, adapter, data, out, f"step{step + 1}")))
        if main and cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
            save_checkpoint(out, step + 1, adapter, optimizer, scheduler, {"skipped_steps": guard.skipped}, cfg.train.keep_last)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        finish_run(cfg, out, adapter, model, optimizer, scheduler, data, logger, summary, {"skipped_steps": guard.skipped})
    logger.close()
    return summary
