"""Which tokens and sequences enter the policy loss: pure functions of tensors.

- ``truncation_mask``: DAPO's overlong filtering (arXiv 2503.14476, TRL
  ``mask_truncated_completions``): a completion cut by the length limit has no answer to be
  judged by, so its tokens leave the loss; its reward still counts in its group's advantages.
- ``off_policy_sequence_mask``: DeepSeek-V3.2's off-policy sequence masking (arXiv 2512.02556,
  eq. 9; TRL ``off_policy_mask_threshold``): a sequence with negative advantage whose mean
  per-token log(pi_old / pi) exceeds delta is dropped; learning from one's own far-off mistakes
  is what destabilises training. Positive-advantage sequences are always kept.
"""

from __future__ import annotations

from torch import Tensor


def truncation_mask(mask: Tensor, truncated: Tensor) -> Tensor:
    """``mask`` [N, L] with the rows of truncated completions (``truncated`` bool [N]) zeroed."""
    return mask * (~truncated.bool()).unsqueeze(-1).to(mask.dtype)


def off_policy_sequence_mask(advantages: Tensor, logp: Tensor, old_logp: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """bool [N]: True where a sequence is kept: A >= 0, or its masked mean of old_logp - logp <= threshold.

    advantages [N]; logp, old_logp, mask [N, L]. A row with no valid token has mean 0 (kept).
    """
    valid = mask.bool()
    log_ratio = (old_logp - logp).detach().masked_fill(~valid, 0.0)  # [N, L], log(pi_old / pi)
    mean = log_ratio.sum(-1) / valid.sum(-1).clamp(min=1).to(log_ratio.dtype)  # [N]
    return (advantages >= 0) | (mean <= threshold)
