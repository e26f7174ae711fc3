"""Token entropy of the policy at completion positions: pure functions of tensors.

``token_entropy`` is computed from the logits the update already has (temperature applied and
suppressed tokens removed, the distribution the completions were drawn from), without gradient.
``high_entropy_mask`` is the token selection of "Beyond the 80/20 Rule" (Wang et al., arXiv
2506.01939; TRL ``top_entropy_quantile``): only the top ``quantile`` share of tokens by entropy
(the "forking" tokens) keep their policy gradient; the paper recommends 0.2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# A token counts as high-entropy (the logged ``entropy_high_fraction``) above ln 2 nats: the
# policy is less certain there than a fair coin flip between two tokens.
HIGH_ENTROPY = math.log(2)


@torch.no_grad()
def token_entropy(logits: Tensor) -> Tensor:
    """Entropy in nats [...] of softmax(logits [..., V]) over the last axis, in fp32.

    -inf logits (suppressed tokens) have probability 0 and add nothing (entr(0) = 0).
    """
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(-1)


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """bool [N, L]: valid tokens whose entropy is >= the (1 - quantile) quantile of the valid tokens' entropies.

    quantile 1 keeps every valid token; 0 keeps those tied with the largest entropy. Nothing
    valid: nothing kept. The quantile interpolates linearly (torch.quantile), as TRL does.
    """
    valid = mask.bool()
    values = entropy[valid].float()  # [T]
    if values.numel() == 0:
        return torch.zeros_like(valid)
    threshold = torch.quantile(values, 1 - quantile)
    return (entropy >= threshold) & valid


def entropy_stats(entropy: Tensor, mask: Tensor) -> tuple[float, float, int]:
    """(sum of entropies, number above HIGH_ENTROPY, valid tokens) over ``mask``; summed over micro-batches and ranks for the logged means."""
    valid = mask.bool()
    values = entropy[valid]
    return values.sum().item(), (values > HIGH_ENTROPY).sum().item(), int(valid.sum().item())
