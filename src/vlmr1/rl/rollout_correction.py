"""Rollout correction: the sampler is not the trainer.

With vLLM (or any sampler with its own kernels or dtype) the completions are drawn from a
distribution pi_s a little different from the trainer's pi_t at the same weights. The policy
gradient assumes samples from pi_t, so the mismatch biases it; with 16-bit samplers on large
models the bias is known to destabilise training (Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"). Here, all as pure functions of [N, L] tensors:

- ``mismatch_kl``: the per-sequence KL(pi_s || pi_t), estimated from the sampled tokens with
  Schulman's k3, r = log pi_t - log pi_s, k3 = exp(r) - 1 - r >= 0 (unbiased under pi_s). Logged.
- ``importance_weights``: truncated importance sampling (TIS), the weight pi_t / pi_s capped at C,
  per token (``token``: w_t = min(exp(r_t), C)) or per sequence (``sequence``:
  w = min(exp(sum_t r_t), C), broadcast). TRL's vllm_importance_sampling_* "truncate" modes and
  verl's rollout_is work the same way; the weight is a constant that multiplies the policy term.
- ``mismatch_keep``: drop whole sequences whose mismatch KL exceeds a threshold (their tokens
  leave the policy term), as verl's rollout rejection sampling and TRL's "mask" modes do with
  the weight itself.

``pi_t`` is the trainer's log-prob at rollout time: the old policy's (mu > 1) or the current
one's, detached, at the first pass (mu = 1), so the weights are constants of the update.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

ISLevel = Literal["none", "token", "sequence"]


def mismatch_kl(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """[N]: mean over each sequence's tokens of k3 = exp(r) - 1 - r, r = trainer - sampler."""
    r = (trainer_logp - sampler_logp).float()
    k3 = torch.expm1(r) - r  # [N, L]
    m = mask.float()
    return (k3 * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def importance_weights(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, level: ISLevel, cap: float) -> Tensor:
    """[N, L] truncated importance weights min(pi_t / pi_s, cap); 1 everywhere for level "none".
    Computed in log space, so a sequence ratio too large for a float is just the cap."""
    if level == "none":
        return torch.ones_like(trainer_logp, dtype=torch.float32)
    r = (trainer_logp - sampler_logp).float() * mask.float()  # [N, L], 0 off the mask
    log_cap = math.log(cap)
    if level == "token":
        return torch.exp(r.clamp(max=log_cap))
    if level == "sequence":
        return torch.exp(r.sum(-1, keepdim=True).clamp(max=log_cap)).expand_as(r)
    raise ValueError(f"unknown rollout importance level {level!r}; expected none, token or sequence")


def mismatch_keep(seq_kl: Tensor, threshold: float | None) -> Tensor:
    """[N] bool: the sequences whose mismatch KL is at most ``threshold`` (all, for None)."""
    if threshold is None:
        return torch.ones_like(seq_kl, dtype=torch.bool)
    return seq_kl <= threshold


class Correction(NamedTuple):
    weights: Tensor  # [N, L] what multiplies the policy term: the IS weight, 0 on masked sequences
    seq_kl: Tensor  # [N] mismatch KL per sequence
    keep: Tensor  # [N] bool, sequences left in


def correct(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, level: ISLevel, cap: float, threshold: float | None) -> Correction:
    """The policy-term weights of a micro-batch, and what they were made from (all detached)."""
    trainer_logp, sampler_logp = trainer_logp.detach(), sampler_logp.detach()
    seq_kl = mismatch_kl(trainer_logp, sampler_logp, mask)
    keep = mismatch_keep(seq_kl, threshold)
    weights = importance_weights(trainer_logp, sampler_logp, mask, level, cap) * keep.float().unsqueeze(-1)
    return Correction(weights, seq_kl, keep)
