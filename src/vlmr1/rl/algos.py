"""GRPO-family loss and advantage math: pure functions of tensors.

No config objects and no distributed calls here; the trainer picks a variant by
passing a named argument and supplies any global counts itself.

Shapes: N = P * G completions (P prompts, G completions per prompt, each group
of G consecutive), L = padded completion length.

Variants and where they come from:
- Advantages (`group_advantages`, `scale=`):
  "group": A = (r - group mean) / (group std + eps), GRPO (DeepSeekMath,
  arXiv 2402.03300). The std is torch's default unbiased (N-1) estimate, as in
  TRL and VLM-R1. "batch": keep the group mean but divide by the std over the
  whole batch, which does not blow up nearly-uniform groups. "none": no std
  scaling, Dr. GRPO (arXiv 2503.20783), which shows the std divisor up-weights
  too-easy and too-hard prompts.
- KL estimators (`kl_penalty`), from J. Schulman, "Approximating KL
  Divergence" (2020, joschu.net/blog/kl-approx.html), samples from pi,
  d = ref_logp - logp: k1 = -d; k2 = d^2 / 2; k3 = exp(d) - d - 1 (>= 0; the one
  GRPO uses). As *values*, k1 and k3 are unbiased estimates of KL(pi || ref) and k2 is
  biased. As *losses* (added per token, gradient taken through logp) they give, in
  expectation over tokens from pi: k1 nothing (E_pi[grad logp] = 0, so a k1 penalty only
  adds noise); k2 the reverse-KL gradient grad KL(pi || ref); k3 the forward-KL gradient
  grad KL(ref || pi) (E_pi[-(ref/pi) grad logp] = -E_ref[grad logp]), DeepSeekMath's choice.
  `kl_bias_correction` (DeepSeek-V3.2, arXiv 2512.02556; TRL's `use_bias_correction_kl`,
  default True there, False here) multiplies the per-token estimate by the token ratio
  pi / pi_old with its gradient, so E_pi_old[ratio * k] = E_pi[k] as a function of the
  parameters: with k1 or k3 the gradient is then the reverse-KL gradient, and it differs from
  plain k3's even on-policy (ratio 1 in value, not in gradient).
- Clipping (`policy_loss`): PPO clip with separate eps_low / eps_high; eps_high
  > eps_low is DAPO's "clip-higher" (arXiv 2503.14476). GRPO uses eps_low =
  eps_high. CISPO clips its importance weight with the same bounds.
- Loss aggregation (`aggregate`): "grpo": mean over each sequence's tokens, then
  over sequences (DeepSeekMath eq. 3), which gives the tokens of short answers
  more weight. "bnpo": token mean over the local batch. "dapo": token mean over
  the *global* batch, DAPO's token-level loss; the trainer passes the valid-token
  count over all ranks and micro-batches so local losses sum to the global mean.
  "dr_grpo": sum / (N * max_completion_length), Dr. GRPO's constant divisor,
  free of any length bias.
- Importance level (`policy_loss`, `importance_level=`): "token" is PPO/GRPO;
  "sequence" is GSPO (arXiv 2507.18071), see `policy_loss`.
- Surrogate (`policy_loss`, `surrogate=`): "clip" (PPO/GRPO, with INTELLECT-2's `delta`),
  "cispo" (MiniMax-M1) or "sapo" (SAPO); see `surrogates`.
- Token and sequence masks on the policy term (`policy_keep`, `off_policy_threshold`):
  DeepSeek-V3.2's off-policy sequence masking and the 80/20 rule's high-entropy tokens; see
  `masks` and `entropy`. The KL term and the aggregation's divisors still use `mask`, as in TRL.

Departures from the papers, and why:
- eps is added to the std (DeepSeekMath writes none) so a zero-std group gives
  advantage 0 instead of NaN.
- The KL term can be combined with any aggregation and clip (DAPO and Dr. GRPO
  drop it); it is added per token before aggregation, as in DeepSeekMath eq. 3.
- "grpo" keeps a sequence with no valid tokens in the mean with loss 0 rather
  than dropping it, so the divisor is always the number of sequences.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .masks import off_policy_sequence_mask
from .surrogates import Surrogate, surrogate_loss

AdvantageScale = Literal["group", "batch", "none"]
KLEstimator = Literal["k1", "k2", "k3"]
LossAggregation = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ImportanceLevel = Literal["token", "sequence"]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is nonzero; 0 where nothing is valid."""
    valid = mask.bool()
    # where, not x * mask: a masked inf/NaN (e.g. exp overflow on padding) must not leak
    masked = torch.where(valid, x, torch.zeros_like(x))  # shape of x
    total, count = (masked.sum(), valid.sum()) if dim is None else (masked.sum(dim), valid.sum(dim))
    return total / count.clamp(min=1).to(x.dtype)


def group_advantages(
    rewards: Tensor, group_size: int, scale: AdvantageScale = "group", eps: float = 1e-4
) -> Tensor:
    """Group-relative advantages, returned as [N].

    rewards: [N], N = P * group_size, each group of `group_size` consecutive.
    A zero-std group gets advantage 0 under every scaling (its deviations are 0).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (got {group_size}): with one completion per prompt every advantage is 0")
    if rewards.ndim != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be 1-D with length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}")
    rewards = rewards if rewards.is_floating_point() else rewards.float()  # [N]
    grouped = rewards.view(-1, group_size)  # [P, G]
    adv = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    if scale == "group":
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std, [P, 1]
    elif scale == "batch":
        adv = adv / (rewards.std() + eps)  # unbiased std over all N rewards, scalar
    elif scale != "none":
        raise ValueError(f"unknown advantage scale {scale!r}; expected 'group', 'batch' or 'none'")
    return adv.reshape(-1)  # [N]


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """bool [P]: groups whose rewards are all equal, so they carry no learning signal."""
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be 1-D with length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)  # [P, G]
    return grouped.amax(dim=1) == grouped.amin(dim=1)  # [P]


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi, [N, L]."""
    log_ratio = ref_logp - logp  # [N, L], log(ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1', 'k2' or 'k3'")


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: LossAggregation,
    max_completion_length: int | None = None,
    global_num_tokens: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [N, L] under `mask` [N, L] to a scalar (see module docstring)."""
    valid = mask.bool()  # [N, L]
    masked = torch.where(valid, per_token, torch.zeros_like(per_token))  # [N, L]
    if mode == "grpo":
        seq_len = valid.sum(dim=-1).clamp(min=1).to(per_token.dtype)  # [N]
        return (masked.sum(dim=-1) / seq_len).mean()
    if mode == "bnpo":
        return masked.sum() / valid.sum().clamp(min=1).to(per_token.dtype)
    if mode == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("aggregation 'dr_grpo' requires max_completion_length")
        return masked.sum() / (per_token.shape[0] * max_completion_length)
    if mode == "dapo":
        if global_num_tokens is None:
            raise ValueError("aggregation 'dapo' requires global_num_tokens (valid tokens over all ranks and micro-batches)")
        return masked.sum() / max(float(global_num_tokens), 1.0)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected 'grpo', 'bnpo', 'dr_grpo' or 'dapo'")


@dataclass
class PolicyLossOutput:
    loss: Tensor  # [], what to backpropagate: aggregated clip term + beta * KL
    policy_loss: Tensor  # [], aggregated clip term only
    kl: Tensor | None  # [], masked token mean of the KL estimate, detached; None without ref_logp
    clip_fraction: Tensor  # [], masked token mean of tokens where a bound of the surrogate was active, detached
    ratio_mean: Tensor  # [], masked token mean of the importance ratio, detached
    off_policy_masked: Tensor | None = None  # [], share of rows dropped by off-policy masking; None when off


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    aggregation: LossAggregation = "grpo",
    max_completion_length: int | None = None,
    global_num_tokens: float | None = None,
    importance_level: ImportanceLevel = "token",
    surrogate: Surrogate = "clip",
    delta: float | None = None,
    sapo_tau_pos: float = 1.0,
    sapo_tau_neg: float = 1.05,
    kl_bias_correction: bool = False,
    off_policy_threshold: float | None = None,
    policy_keep: Tensor | None = None,
) -> PolicyLossOutput:
    """Surrogate policy loss with optional KL penalty.

    logp, old_logp, ref_logp, mask, policy_keep: [N, L]; advantages: [N].
    per-token loss = keep * surrogate(ratio, A) + beta * kl, with "clip"'s surrogate
    -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A) (see `surrogates` for the others),
    keep = policy_keep (e.g. the high-entropy tokens) times the off-policy sequence mask
    (`masks.off_policy_sequence_mask`, when off_policy_threshold is set), and kl the per-token
    estimate, times the token ratio with `kl_bias_correction`.

    With old_logp = logp.detach() (one update per generation, mu = 1) the ratio is 1,
    nothing is clipped, and the gradient is the plain policy gradient -A * grad(logp)
    (under every surrogate).

    importance_level="sequence" is GSPO (arXiv 2507.18071): the sequence ratio is
    s_i = exp(masked mean over tokens of (logp - old_logp)), broadcast to every token.
    The gradient flows as in GSPO-token, s_i,t = sg[s_i] * pi_t / sg[pi_t]: the value is
    s_i and each token's gradient is s_i * grad(logp_t). With the "grpo" aggregation
    this equals the GSPO sequence-level gradient; the clip then acts per sequence.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 requires ref_logp")
    if advantages.ndim != 1 or advantages.shape[0] != logp.shape[0]:
        raise ValueError(f"advantages must be [N]={logp.shape[0]}, got shape {tuple(advantages.shape)}")
    old_logp = old_logp.detach()  # the behaviour policy is a constant; a live graph here would zero the ratio gradient

    if importance_level == "token":
        log_ratio = logp - old_logp  # [N, L]
    elif importance_level == "sequence":
        seq_log_ratio = masked_mean(logp - old_logp, mask, dim=-1).detach()  # [N], log s_i
        log_ratio = seq_log_ratio.unsqueeze(-1) + logp - logp.detach()  # [N, L], value log s_i, grad of logp_t
    else:
        raise ValueError(f"unknown importance_level {importance_level!r}; expected 'token' or 'sequence'")

    ratio = torch.exp(log_ratio)  # [N, L]
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # [N, 1]
    clip_term, clipped = surrogate_loss(
        surrogate, ratio, logp, adv, eps_low=eps_low, eps_high=eps_high, delta=delta, sapo_tau_pos=sapo_tau_pos, sapo_tau_neg=sapo_tau_neg
    )  # [N, L], [N, L]
    masked_rows = None
    if off_policy_threshold is not None:
        keep_rows = off_policy_sequence_mask(advantages, logp, old_logp, mask, off_policy_threshold)  # [N]
        masked_rows = (~keep_rows).to(logp.dtype).mean().detach()
        clip_term = clip_term * keep_rows.to(logp.dtype).unsqueeze(-1)
    if policy_keep is not None:
        clip_term = clip_term * policy_keep.to(logp.dtype)

    agg = dict(mode=aggregation, max_completion_length=max_completion_length, global_num_tokens=global_num_tokens)
    policy = aggregate(clip_term, mask, **agg)
    kl_mean = None
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp.detach(), kl_estimator)  # [N, L]
        if kl_bias_correction:
            kl = kl * torch.exp(logp - old_logp)  # the token ratio, gradient included (also under GSPO)
        kl_mean = masked_mean(kl, mask).detach()
        loss = aggregate(clip_term + beta * kl, mask, **agg) if beta != 0 else policy
    else:
        loss = policy

    return PolicyLossOutput(
        loss=loss,
        policy_loss=policy,
        kl=kl_mean,
        clip_fraction=masked_mean(clipped.to(logp.dtype), mask).detach(),
        ratio_mean=masked_mean(ratio, mask).detach(),
        off_policy_masked=masked_rows,
    )


def completion_mask(completion_ids: Tensor, eos_token_ids: Sequence[int], pad_token_id: int | None = None) -> Tensor:
    """long [N, L]: 1 up to and including the first EOS (any of eos_token_ids), 0 after it.

    If pad_token_id is given and is not an EOS id, pad positions are also 0: a completion
    cut at the length limit has no EOS but may be right-padded to the batch length.
    """
    eos = torch.tensor(list(eos_token_ids), device=completion_ids.device, dtype=completion_ids.dtype)
    is_eos = torch.isin(completion_ids, eos).long()  # [N, L]
    eos_before = is_eos.cumsum(dim=-1) - is_eos  # [N, L], EOS tokens strictly before each position
    mask = eos_before == 0  # [N, L]
    if pad_token_id is not None and pad_token_id not in eos_token_ids:
        mask &= completion_ids != pad_token_id
    return mask.long()
