"""Per-token policy surrogates of the GRPO family: pure functions of tensors.

Each takes the importance ratio r [N, L] (with its gradient), the policy log-probs [N, L] and the
advantages [N, 1], and returns the per-token loss [N, L] and where a bound was active [N, L].
``algos.policy_loss`` picks one by name (``surrogate=``) and aggregates it.

- "clip": PPO's clipped surrogate, -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A), as GRPO
  (DeepSeekMath, arXiv 2402.03300) uses it; eps_high > eps_low is DAPO's clip-higher. ``delta``
  adds INTELLECT-2's two-sided clip (arXiv 2505.07291): the unclipped branch is capped at
  min(r, delta) A, which bounds the loss of a negative-advantage token whose ratio ran away
  (the PPO clip leaves r A unbounded there).
- "cispo": CISPO (MiniMax-M1, arXiv 2506.13585): -sg(clamp(r, 1 - eps_low, 1 + eps_high)) A logp.
  The clipped importance weight is a constant (stop-gradient), so every token keeps a gradient
  w A grad(logp), where the PPO clip zeroes the gradient of clipped tokens. MiniMax-M1 caps
  from above only; eps_low = 1 gives that (the lower bound 0 never binds).
- "sapo": SAPO (Qwen, "Soft Adaptive Policy Optimization", arXiv 2511.20347): the hard clip is
  replaced by a smooth gate, -sigmoid(tau (r - 1)) 4 / tau A, with tau = tau_pos where A > 0 and
  tau_neg elsewhere. Its gradient is 4 sigmoid(x)(1 - sigmoid(x)) r A grad(logp) with x = tau (r - 1):
  exactly the policy gradient at r = 1, fading smoothly as r leaves 1 (faster for larger tau).
  No bound is ever active, so nothing counts as clipped.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Surrogate = Literal["clip", "cispo", "sapo"]


def clip_surrogate(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, delta: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO clip (with INTELLECT-2's ``delta`` cap on the unclipped branch when given)."""
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)  # [N, L]
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)  # [N, L]
    loss = -torch.min(unclipped * adv, clipped_ratio * adv)  # [N, L]
    # A bound is active (zero gradient) where the clamped branch is the smaller one, or delta caps
    active = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    if delta is not None:
        active |= (ratio > delta) & (adv < 0)
    return loss, active


def cispo_surrogate(ratio: Tensor, logp: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """CISPO: a clipped, detached importance weight times A times the log-prob."""
    weight = torch.clamp(ratio, 1 - eps_low, 1 + eps_high).detach()  # [N, L]
    active = (ratio < 1 - eps_low) | (ratio > 1 + eps_high)  # the weight was clamped (the gradient still flows)
    return -weight * adv * logp, active


def sapo_surrogate(ratio: Tensor, adv: Tensor, tau_pos: float, tau_neg: float) -> tuple[Tensor, Tensor]:
    """SAPO's soft gate in place of the clip."""
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))  # [N, 1]
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau  # [N, L]
    return -gate * adv, torch.zeros_like(ratio, dtype=torch.bool)


def surrogate_loss(
    surrogate: Surrogate,
    ratio: Tensor,
    logp: Tensor,
    adv: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    delta: float | None,
    sapo_tau_pos: float,
    sapo_tau_neg: float,
) -> tuple[Tensor, Tensor]:
    """The named surrogate's per-token loss [N, L] and active-bound mask [N, L]."""
    if surrogate == "clip":
        return clip_surrogate(ratio, adv, eps_low, eps_high, delta)
    if delta is not None:
        raise ValueError(f"delta (the two-sided clip) applies to the 'clip' surrogate, not {surrogate!r}")
    if surrogate == "cispo":
        return cispo_surrogate(ratio, logp, adv, eps_low, eps_high)
    if surrogate == "sapo":
        return sapo_surrogate(ratio, adv, sapo_tau_pos, sapo_tau_neg)
    raise ValueError(f"unknown surrogate {surrogate!r}; expected 'clip', 'cispo' or 'sapo'")
