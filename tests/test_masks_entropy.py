"""Hand-computed checks of the loss masks (vlmr1.rl.masks) and the entropy pieces (vlmr1.rl.entropy).

Agreement with TRL 1.16 (its formulas, re-derived here; benchmarks/loss_vs_trl.py runs its code):
get_off_policy_mask keeps a row where A >= 0 or sum((old - logp) * mask) / clamp(sum(mask), 1) <= threshold;
mask_truncated_completions zeroes the completion mask of rows whose last token is neither EOS nor pad;
get_high_entropy_mask keeps valid tokens with entropy >= torch.quantile(valid entropies, 1 - quantile).
"""

import math

import torch

from vlmr1.rl.algos import completion_mask, policy_loss
from vlmr1.rl.entropy import (
    HIGH_ENTROPY,
    entropy_stats,
    high_entropy_mask,
    token_entropy,
)
from vlmr1.rl.logprobs import selective_log_softmax
from vlmr1.rl.masks import off_policy_sequence_mask, truncation_mask


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- truncation


def test_truncation_mask_drops_rows_without_eos():
    eos, L = 2, 4
    ids = torch.tensor(
        [
            [5, 5, 5, 5],  # no EOS: cut at the limit            -> dropped
            [5, 2, 0, 0],  # EOS at 1                            -> kept [1, 1, 0, 0]
            [2, 0, 0, 0],  # EOS first (an empty answer)         -> kept [1, 0, 0, 0]
            [5, 5, 5, 2],  # EOS exactly at the limit: complete  -> kept [1, 1, 1, 1]
        ]
    )
    mask = completion_mask(ids, [eos])
    truncated = ~torch.isin(ids, torch.tensor([eos])).any(1)  # as rollout.finish_rollout records it
    assert truncated.tolist() == [True, False, False, False]
    out = truncation_mask(mask, truncated)
    assert out.dtype == mask.dtype
    assert torch.equal(out, torch.tensor([[0] * L, [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]))


def test_truncated_rows_stay_in_the_grpo_mean_and_leave_the_dapo_token_count():
    # ratio 1, A = [1, -2, 3]; lengths [3, 1, 2], row 0 truncated -> loss mask lengths [0, 1, 2]
    # grpo: row means [0 (empty), 2, -3] over 3 rows = -1/3 (TRL's mean over rows also keeps the emptied row)
    # dapo with the masked global count 3: sum (0 + 2 - 6) / 3 = -4/3
    logp = torch.zeros(3, 3)
    mask = truncation_mask(torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]), torch.tensor([True, False, False]))
    adv = torch.tensor([1.0, -2.0, 3.0])
    close(policy_loss(logp, logp, adv, mask).loss, -1 / 3)
    close(policy_loss(logp, logp, adv, mask, aggregation="dapo", global_num_tokens=mask.sum().item()).loss, -4 / 3)


def test_truncation_mask_all_or_nothing_truncated():
    mask = torch.tensor([[1, 1], [1, 0]])
    assert torch.equal(truncation_mask(mask, torch.tensor([False, False])), mask)
    assert torch.equal(truncation_mask(mask, torch.tensor([True, True])), torch.zeros(2, 2, dtype=mask.dtype))


# ---------------------------------------------------------------- off-policy sequence mask


def test_off_policy_mask_table():
    # threshold 0.5; per-token old - logp and masks; mean over valid tokens
    diff = torch.tensor(
        [
            [0.6, 0.6, 0.6],  # A = -1, mean 0.6 > 0.5               -> dropped
            [0.4, 0.4, 9.0],  # A = -1, EOS after 2 (9.0 masked): mean 0.4 -> kept
            [0.2, 0.8, 5.0],  # A = -1, EOS after 2: mean 0.5 = threshold -> kept (<=)
            [3.0, 3.0, 3.0],  # A = +2, mean 3.0: positive advantage  -> kept
            [0.0, 0.0, 0.0],  # A = -1, no valid token: mean 0        -> kept
            [2.0, 0.0, 0.0],  # A = 0 counts as non-negative          -> kept
        ]
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]])
    adv = torch.tensor([-1.0, -1.0, -1.0, 2.0, -1.0, 0.0])
    logp = torch.zeros(6, 3)
    keep = off_policy_sequence_mask(adv, logp, logp + diff, mask, 0.5)
    assert keep.tolist() == [False, True, True, True, True, True]


def test_off_policy_mask_in_policy_loss_drops_the_policy_term_only():
    # two rows, A = [-1, -1], ratio 1 / e^-1: row 0 log(old / pi) = [1, 1] (mean 1 > 0.5: dropped), row 1 [0, 0]
    # row 0 policy term: -min(e^-1 * -1, 0.8 * -1) = 0.8 -> masked to 0; row 1 ratio 1: loss 1
    # KL (beta 1, ref = logp: k3 = 0 on row 1; row 0 ref - logp = 0 too) -> loss = (0 + 1) / 2 = 0.5
    logp = torch.zeros(2, 2, requires_grad=True)
    old = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    ref = torch.tensor([[0.5, 0.5], [0.0, 0.0]])  # row 0: k3 = e^0.5 - 0.5 - 1 = 0.148721 per token, kept
    out = policy_loss(logp, old, torch.tensor([-1.0, -1.0]), torch.ones(2, 2), ref_logp=ref, beta=1.0, off_policy_threshold=0.5)
    k3 = math.exp(0.5) - 1.5
    close(out.loss, (k3 + 1.0) / 2)
    close(out.policy_loss, 0.5)
    close(out.off_policy_masked, 0.5)
    # gradient: row 0 only its KL, (1 - e^0.5) / (2 tokens * 2 rows); row 1 -A * r / 4 = 0.25
    close(torch.autograd.grad(out.loss, logp)[0], [[(1 - math.exp(0.5)) / 4] * 2, [0.25, 0.25]])


# ---------------------------------------------------------------- entropy


def test_token_entropy_values():
    # uniform over 2 -> ln 2 = 0.693147; uniform over 4 -> ln 4 = 1.386294
    # [0, -inf, 0]: the suppressed token has probability 0 -> ln 2 (no NaN from 0 * -inf)
    # [0, ln 3]: p = [1/4, 3/4] -> -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
    # [30, 0]: p ~ [1, 9.4e-14] -> ~0
    inf = float("inf")
    logits = torch.tensor([[0.0, 0.0, -inf, -inf], [0.0, 0.0, 0.0, 0.0], [0.0, -inf, 0.0, -inf], [0.0, math.log(3), -inf, -inf], [30.0, 0.0, -inf, -inf]])
    h = token_entropy(logits)
    close(h, [math.log(2), math.log(4), math.log(2), 0.562335, 0.0], atol=1e-5)
    assert not h.requires_grad


def test_selective_log_softmax_entropy_matches_and_leaves_logp_unchanged():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 7, generator=g)
    ids = torch.randint(0, 7, (3, 5), generator=g)
    suppress = torch.tensor([6])
    plain = selective_log_softmax(logits, ids, chunk=2, suppress=suppress)
    logp, h = selective_log_softmax(logits, ids, chunk=2, suppress=suppress, with_entropy=True)
    assert torch.equal(plain, logp)
    close(h, token_entropy(logits.index_fill(-1, suppress, float("-inf"))))


ENT = torch.tensor([[0.1, 0.5, 0.9, 2.0], [0.3, 0.7, 5.0, 9.0]])
ENT_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1: EOS after 2, the large values are padding


def test_high_entropy_mask_quantiles():
    # valid entropies sorted: [0.1, 0.3, 0.5, 0.7, 0.9, 2.0] (T = 6; torch.quantile interpolates at q (T - 1))
    # quantile 0.5 keeps >= q(0.5): position 2.5 -> (0.5 + 0.7) / 2 = 0.6 -> 0.9, 2.0 | 0.7
    assert high_entropy_mask(ENT, ENT_MASK, 0.5).long().tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    # quantile 0.2 keeps >= q(0.8): position 4 -> 0.9 -> 0.9, 2.0
    assert high_entropy_mask(ENT, ENT_MASK, 0.2).long().tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    # quantile 1 keeps >= min: every valid token (never the padded 5.0 and 9.0)
    assert torch.equal(high_entropy_mask(ENT, ENT_MASK, 1.0), ENT_MASK.bool())
    # quantile 0 keeps >= max = 2.0 only
    assert high_entropy_mask(ENT, ENT_MASK, 0.0).long().tolist() == [[0, 0, 0, 1], [0, 0, 0, 0]]
    # nothing valid: nothing kept
    assert not high_entropy_mask(ENT, torch.zeros(2, 4), 0.5).any()


def test_entropy_mask_in_policy_loss_keeps_denominators():
    # ratio 1, A = 1: per-token -1; keep the 3 tokens of quantile 0.5 (above) -> policy sum -3
    # grpo divisors are the full lengths [4, 2]: (-2/4 + -1/2) / 2 = -0.5 (TRL: (loss * entropy_mask * mask).sum(-1) / mask.sum(-1))
    logp = torch.zeros(2, 4)
    keep = high_entropy_mask(ENT, ENT_MASK, 0.5)
    close(policy_loss(logp, logp, torch.ones(2), ENT_MASK, policy_keep=keep).loss, -0.5)


def test_entropy_stats():
    # valid [0.1, 0.5, 0.9, 2.0, 0.3, 0.7]: sum 4.5; above ln 2 = 0.693147: 0.9, 2.0, 0.7 -> 3; 6 tokens
    assert HIGH_ENTROPY == math.log(2)
    total, high, n = entropy_stats(ENT, ENT_MASK)
    assert (round(total, 6), high, n) == (4.5, 3, 6)
    assert entropy_stats(ENT, torch.zeros(2, 4)) == (0.0, 0, 0)
