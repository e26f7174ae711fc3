"""The optimizer: AdamW with its lr schedule, one clipped step at a time, and the non-finite guard."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import TrainConfig


def build_optimizer(params, t: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on ``params`` and its schedule: linear warm-up, then constant, cosine or linear decay."""
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        if t.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if t.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts skipped (non-finite) optimizer steps and stops the run after too many in a row.

    ``out`` is the run folder: the trainer saves ``checkpoint-<step>`` there before the error
    reaches the user, and the message names it.
    """

    def __init__(self, limit: int, out: Path, skipped: int = 0):
        self.limit, self.out, self.skipped, self.in_row = limit, out, skipped, 0

    def record(self, stepped: bool, step: int) -> None:
        """Count one optimizer step of training step ``step``; raises NonFiniteError past the limit."""
        if stepped:
            self.in_row = 0
            return
        self.in_row += 1
        self.skipped += 1
        if self.in_row > self.limit:
            raise NonFiniteError(
                f"{self.in_row} optimizer steps in a row had a non-finite (NaN/inf) loss or gradient, the last at "
                f"step {step}; stopping (train.max_nonfinite_steps={self.limit}). Each was skipped, so "
                f"{self.out / f'checkpoint-{step}'} holds the last finite weights. Lower train.lr, keep "
                "train.max_grad_norm > 0, use model.dtype=bfloat16 rather than float16, and check the rewards "
                "for extreme values before resuming."
            )


def optimizer_step(
    accelerator, model, optimizer, scheduler, max_grad_norm: float, guard: NonFiniteGuard, loss_finite: bool, step: int
) -> float:
    """Clip (0 = no clipping), step, advance the schedule, clear gradients; returns the pre-clip norm.

    A non-finite loss on any rank or a non-finite gradient norm skips the update (and the
    schedule), so one bad batch cannot write NaN into the weights; every rank takes the same
    decision. The guard counts the skip and raises once too many came in a row.
    """
    norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf))
    bad = torch.tensor(float(not (loss_finite and math.isfinite(norm))), device=accelerator.device)
    ok = accelerator.reduce(bad, "sum").item() == 0
    if ok:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    guard.record(ok, step)
    return norm
