"""Hand-computed checks of the GRPO-family math in vlmr1.rl.algos.

Every expected number is worked out in the comments next to it.
"""

import math

import pytest
import torch

from vlmr1.rl.algos import (
    aggregate,
    completion_mask,
    group_advantages,
    kl_penalty,
    masked_mean,
    policy_loss,
    zero_std_groups,
)

ATOL = 1e-6
E = math.e


def close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------- masked_mean


def test_masked_mean_all_and_per_row():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # valid: 1, 2 | 4 -> (1 + 2 + 4) / 3 = 7/3
    close(masked_mean(x, mask), 7 / 3)
    # per row: (1 + 2) / 2 = 1.5 ; 4 / 1 = 4
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])


def test_masked_mean_empty_mask_is_zero_and_ignores_inf_on_padding():
    x = torch.tensor([[1.0, float("inf")], [float("nan"), 2.0]])
    # nothing valid -> 0, not NaN
    close(masked_mean(x, torch.zeros(2, 2)), 0.0)
    # the inf and NaN sit on masked positions: (1 + 2) / 2 = 1.5
    close(masked_mean(x, torch.tensor([[1, 0], [0, 1]])), 1.5)


# ---------------------------------------------------------------- completion_mask


def test_completion_mask_eos_first_middle_absent():
    eos = 2
    ids = torch.tensor(
        [
            [2, 5, 5, 5],  # EOS first: keep only it            -> [1, 0, 0, 0]
            [5, 2, 5, 2],  # EOS at 1, a later EOS is masked    -> [1, 1, 0, 0]
            [5, 5, 5, 5],  # no EOS (length limit): keep all    -> [1, 1, 1, 1]
            [5, 5, 5, 2],  # EOS last                           -> [1, 1, 1, 1]
        ]
    )
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    mask = completion_mask(ids, [eos])
    assert mask.dtype == torch.long
    assert torch.equal(mask, expected)


def test_completion_mask_multiple_eos_ids():
    ids = torch.tensor(
        [
            [5, 7, 2, 5],  # 7 is the first EOS -> [1, 1, 0, 0]
            [5, 5, 2, 7],  # 2 is the first EOS -> [1, 1, 1, 0]
            [5, 5, 5, 5],  # neither            -> [1, 1, 1, 1]
        ]
    )
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(completion_mask(ids, [2, 7]), expected)


def test_completion_mask_pad_token():
    # pad 0 differs from EOS 2: a truncated completion right-padded with 0 masks the pads
    ids = torch.tensor([[5, 5, 0, 0], [5, 2, 0, 0]])
    assert torch.equal(completion_mask(ids, [2], pad_token_id=0), torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]]))
    # pad == EOS: the first one is the EOS and counts, the rest come after it
    ids = torch.tensor([[5, 2, 2, 2]])
    assert torch.equal(completion_mask(ids, [2], pad_token_id=2), torch.tensor([[1, 1, 0, 0]]))


# ---------------------------------------------------------------- group_advantages


REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])  # P = 2 groups of G = 4


def test_group_advantages_group_scale_with_zero_std_group():
    # group 0: mean 0.5, deviations [0.5, -0.5, 0.5, -0.5];
    #   unbiased var = 4 * 0.25 / (4 - 1) = 1/3, std = sqrt(1/3) = 0.57735
    #   adv = +-0.5 / (0.57735 + 1e-4) = +-0.865875
    # group 1: all rewards 2 -> deviations 0, std 0 -> adv 0 / (0 + 1e-4) = 0 (no NaN)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    adv = group_advantages(REWARDS, group_size=4, scale="group")
    assert adv.shape == (8,)
    close(adv, [a, -a, a, -a, 0, 0, 0, 0])
    assert not torch.isnan(adv).any()


def test_group_advantages_batch_scale():
    # deviations from the group means: [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0]
    # batch std over all 8 rewards: mean = (1+0+1+0+2+2+2+2)/8 = 10/8 = 1.25;
    #   deviations [-0.25, -1.25, -0.25, -1.25, 0.75 x4], squares 2*0.0625 + 2*1.5625 + 4*0.5625 = 5.5
    #   unbiased var = 5.5/7 = 0.785714, std = 0.886405 -> adv = +-0.5 / (0.886405 + 1e-4) = +-0.564009
    a = 0.5 / (math.sqrt(5.5 / 7) + 1e-4)
    close(group_advantages(REWARDS, group_size=4, scale="batch"), [a, -a, a, -a, 0, 0, 0, 0])


def test_group_advantages_no_scale_is_dr_grpo():
    # only the group mean is removed: [1-0.5, 0-0.5, ...], [2-2, ...]
    close(group_advantages(REWARDS, group_size=4, scale="none"), [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0])


def test_group_advantages_rejects_bad_sizes():
    with pytest.raises(ValueError):
        group_advantages(REWARDS, group_size=3)  # 8 % 3 != 0
    with pytest.raises(ValueError):
        group_advantages(REWARDS, group_size=1)  # one completion per prompt
    with pytest.raises(ValueError):
        group_advantages(REWARDS, group_size=4, scale="rank")  # type: ignore[arg-type]


def test_zero_std_groups():
    # group 0 = [1, 0, 1, 0] varies; group 1 = [2, 2, 2, 2] is constant
    assert torch.equal(zero_std_groups(REWARDS, 4), torch.tensor([False, True]))
    # groups of 2: [1, 0] [1, 0] [2, 2] [2, 2]
    assert torch.equal(zero_std_groups(REWARDS, 2), torch.tensor([False, False, True, True]))


# ---------------------------------------------------------------- kl_penalty


def test_kl_estimators_at_known_values():
    logp = torch.tensor([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, 1.0, -1.0]])
    # logp - ref = [0, -1, 1]
    close(kl_penalty(logp, ref, "k1"), [[0.0, -1.0, 1.0]])
    # 0.5 * [0, 1, 1]
    close(kl_penalty(logp, ref, "k2"), [[0.0, 0.5, 0.5]])
    # d = ref - logp = [0, 1, -1]; exp(d) - d - 1 = [1-0-1, e-1-1, 1/e+1-1] = [0, e-2, 1/e]
    close(kl_penalty(logp, ref, "k3"), [[0.0, E - 2, 1 / E]])
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_k3_is_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=g) * 3
    ref = torch.randn(64, 32, generator=g) * 3
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()


def test_k1_and_k3_expectations_equal_exact_kl():
    # Over a 3-token vocabulary with pi = [0.2, 0.3, 0.5], ref = [0.4, 0.4, 0.2],
    # the pi-weighted mean of k1 and of k3 is exactly KL(pi || ref) (both are unbiased):
    # KL = 0.2 ln(0.5) + 0.3 ln(0.75) + 0.5 ln(2.5) = -0.138629 - 0.086305 + 0.458145 = 0.233211
    # (E_pi[k3] = E_pi[ref/pi] - E_pi[ln(ref/pi)] - 1 = 1 + KL - 1)
    pi = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    ref = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    kl = 0.2 * math.log(0.5) + 0.3 * math.log(0.75) + 0.5 * math.log(2.5)
    for est in ("k1", "k3"):
        expectation = (pi * kl_penalty(pi.log(), ref.log(), est)).sum()
        close(expectation, kl, atol=1e-12)
    # k2 is biased: E_pi[0.5 ln(pi/ref)^2] = 0.5 (0.2 ln2^2 + 0.3 ln(4/3)^2 + 0.5 ln(2.5)^2) != KL
    k2 = (pi * kl_penalty(pi.log(), ref.log(), "k2")).sum()
    close(k2, 0.5 * (0.2 * math.log(2) ** 2 + 0.3 * math.log(4 / 3) ** 2 + 0.5 * math.log(2.5) ** 2), atol=1e-12)
    assert abs(k2.item() - kl) > 1e-3


# ---------------------------------------------------------------- aggregate

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])  # lengths 3 and 1; valid values 1, 2, 3 | 4


def test_aggregate_grpo_and_bnpo_differ():
    # grpo: sequence means (1+2+3)/3 = 2 and 4/1 = 4, then (2 + 4) / 2 = 3
    close(aggregate(PER_TOKEN, MASK, "grpo"), 3.0)
    # bnpo: (1 + 2 + 3 + 4) / 4 tokens = 2.5 (the short sequence weighs less)
    close(aggregate(PER_TOKEN, MASK, "bnpo"), 2.5)


def test_aggregate_dr_grpo_and_dapo():
    # dr_grpo: sum 10 / (2 sequences * max_completion_length 4) = 1.25
    close(aggregate(PER_TOKEN, MASK, "dr_grpo", max_completion_length=4), 1.25)
    # dapo: sum 10 / global tokens 8 (say, another rank holds 4 more) = 1.25
    close(aggregate(PER_TOKEN, MASK, "dapo", global_num_tokens=8), 1.25)
    # dapo with the local count as the global count is bnpo: 10 / 4 = 2.5
    close(aggregate(PER_TOKEN, MASK, "dapo", global_num_tokens=4), 2.5)


def test_aggregate_grpo_empty_sequence_counts_as_zero():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    # sequence means 2 and 0 / clamp(0, 1) = 0 -> (2 + 0) / 2 = 1
    close(aggregate(PER_TOKEN, mask, "grpo"), 1.0)


def test_aggregate_requires_its_arguments():
    with pytest.raises(ValueError):
        aggregate(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError):
        aggregate(PER_TOKEN, MASK, "dapo")
    with pytest.raises(ValueError):
        aggregate(PER_TOKEN, MASK, "seq_mean")  # type: ignore[arg-type]


def test_dapo_micro_batches_sum_to_whole_batch_bnpo():
    # split PER_TOKEN into its two rows, global count 4:
    #   micro-batch 1: (1 + 2 + 3) / 4 = 1.5 ; micro-batch 2: 4 / 4 = 1.0 ; sum 2.5 = bnpo of the whole
    # (the mean of per-micro-batch bnpo would be (2 + 4) / 2 = 3, the wrong answer)
    parts = [aggregate(PER_TOKEN[i : i + 1], MASK[i : i + 1], "dapo", global_num_tokens=4) for i in range(2)]
    close(parts[0], 1.5)
    close(parts[1], 1.0)
    close(parts[0] + parts[1], aggregate(PER_TOKEN, MASK, "bnpo"))


def test_dapo_micro_batch_gradients_match_whole_batch_bnpo():
    g = torch.Generator().manual_seed(1)
    logp = (torch.randn(4, 5, generator=g) - 1).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(4, 5, generator=g)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])  # 12 tokens
    whole = policy_loss(logp, old, adv, mask, aggregation="bnpo").loss
    (grad_whole,) = torch.autograd.grad(whole, logp)
    total = sum(
        policy_loss(logp[s], old[s], adv[s], mask[s], aggregation="dapo", global_num_tokens=12).loss
        for s in (slice(0, 2), slice(2, 4))
    )
    (grad_split,) = torch.autograd.grad(total, logp)
    close(total, whole.detach())
    close(grad_split, grad_whole)


# ---------------------------------------------------------------- policy_loss


def test_clip_asymmetric_positive_and_negative_advantage():
    # eps_low = 0.2, eps_high = 0.28 (DAPO clip-higher): ratio is clamped to [0.8, 1.28]
    ratios = torch.tensor([0.5, 1.0, 1.5])
    old = torch.zeros(2, 3)
    logp = ratios.log().repeat(2, 1).requires_grad_()  # ratio = exp(logp - 0) = [0.5, 1, 1.5] per row
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3)
    out = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # A = +1: ratio*A = [0.5, 1, 1.5], clamped*A = [0.8, 1, 1.28]; min = [0.5, 1, 1.28]
    #   -> per-token loss [-0.5, -1, -1.28], mean -2.78/3 = -0.926667; token 3 is clipped (1.5 > 1.28, A > 0)
    # A = -1: ratio*A = [-0.5, -1, -1.5], clamped*A = [-0.8, -1, -1.28]; min = [-0.8, -1, -1.5]
    #   -> per-token loss [0.8, 1, 1.5], mean 3.3/3 = 1.1; token 1 is clipped (0.5 < 0.8, A < 0)
    # grpo: (-0.926667 + 1.1) / 2 = 0.0866667
    close(out.loss, (-2.78 / 3 + 1.1) / 2)
    close(out.policy_loss, (-2.78 / 3 + 1.1) / 2)
    assert out.kl is None
    close(out.clip_fraction, 2 / 6)  # 2 clipped of 6 tokens
    close(out.ratio_mean, (0.5 + 1 + 1.5) * 2 / 6)  # = 1.0
    # gradient: d(-ratio*A)/dlogp = -ratio*A on unclipped tokens, 0 on clipped ones, / 3 tokens / 2 seqs
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, [[-0.5 / 6, -1.0 / 6, 0.0], [0.0, 1.0 / 6, 1.5 / 6]])


def test_clip_symmetric_clips_high_at_1_2():
    # same first row with eps_high = 0.2: ratio 1.5 is clipped to 1.2 instead of 1.28
    # per-token loss [-0.5, -1, -1.2] -> mean -2.7/3 = -0.9
    logp = torch.tensor([[0.5, 1.0, 1.5]]).log()
    out = policy_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3))
    close(out.loss, -0.9)


def test_gradient_at_ratio_one_is_plain_policy_gradient():
    # old_logp = logp.detach() -> ratio 1 everywhere, nothing clipped.
    # loss = mean_i (1/len_i) sum_t -A_i * ratio_it  =>  dloss/dlogp_it = -A_i / (len_i * N) on valid tokens
    # A = [1, -2], lengths [3, 2], N = 2: row 0 -> -1/(3*2) = -1/6 ; row 1 -> 2/(2*2) = 0.5
    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(2, 4, generator=g) - 2).requires_grad_()
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = policy_loss(logp, logp.detach(), adv, mask)
    close(out.ratio_mean, 1.0)
    close(out.clip_fraction, 0.0)
    # loss value: each row's token mean of -A_i * 1 is -A_i, so (-1 + 2) / 2 = 0.5
    close(out.loss, 0.5)
    expected = [[-1 / 6, -1 / 6, -1 / 6, 0.0], [0.5, 0.5, 0.0, 0.0]]
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, expected)
    # old_logp is treated as a constant even if the caller forgets to detach it
    (grad,) = torch.autograd.grad(policy_loss(logp, logp, adv, mask).loss, logp)
    close(grad, expected)


def test_kl_penalty_is_added_per_token():
    # one sequence, ratio 1, A = 1, beta = 0.1, ref - logp = [0, 1, -1]
    # k3 = [0, e-2, 1/e] ; per-token loss = -1 + 0.1 * k3
    # grpo: -1 + 0.1 * (e - 2 + 1/e) / 3 = -1 + 0.1 * 1.086161 / 3 = -0.963795
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[0.0, 1.0, -1.0]])
    out = policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 3), ref_logp=ref, beta=0.1)
    kl_mean = (E - 2 + 1 / E) / 3
    close(out.loss, -1 + 0.1 * kl_mean)
    close(out.policy_loss, -1.0)
    close(out.kl, kl_mean)
    # with k1 instead: k1 = [0, -1, 1], mean 0 -> loss = -1
    out = policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 3), ref_logp=ref, beta=0.1, kl_estimator="k1")
    close(out.loss, -1.0)
    close(out.kl, 0.0)


def test_kl_is_logged_but_not_added_when_beta_is_zero():
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[0.0, 1.0, -1.0]])
    out = policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 3), ref_logp=ref, beta=0.0)
    close(out.loss, -1.0)
    close(out.kl, (E - 2 + 1 / E) / 3)


def test_beta_without_ref_raises():
    logp = torch.zeros(1, 3)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 3), beta=0.04)


def test_policy_loss_dr_grpo_and_dapo_aggregation():
    # ratio 1, A = [1, -2], lengths [3, 1] -> per-token loss -A: row 0 [-1,-1,-1], row 1 [2]
    # sum = -3 + 2 = -1 ; dr_grpo: -1 / (2 * 4) = -0.125 ; dapo (global 10 tokens): -1 / 10 = -0.1
    # bnpo: -1 / 4 = -0.25 ; grpo: (-1 + 2) / 2 = 0.5
    logp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(policy_loss(logp, logp, adv, mask, aggregation="dr_grpo", max_completion_length=4).loss, -0.125)
    close(policy_loss(logp, logp, adv, mask, aggregation="dapo", global_num_tokens=10).loss, -0.1)
    close(policy_loss(logp, logp, adv, mask, aggregation="bnpo").loss, -0.25)
    close(policy_loss(logp, logp, adv, mask, aggregation="grpo").loss, 0.5)


def test_sequence_level_importance_gspo():
    # row 0: log-ratios [0.1, 0.2, 0.6], all valid -> mean 0.3, s_0 = e^0.3 = 1.349859
    # row 1: log-ratios [0.3, -0.1, 5.0], last masked -> mean 0.1, s_1 = e^0.1 = 1.105171
    # A = [1, 1], eps 0.2: s_0 > 1.2 is clipped -> per-token loss -1.2 (no gradient);
    #   s_1 in [0.8, 1.2] -> per-token loss -1.105171
    # grpo: (-1.2 - 1.105171) / 2 = -1.152585
    log_ratio = torch.tensor([[0.1, 0.2, 0.6], [0.3, -0.1, 5.0]])
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.5, -0.5, -2.5]])
    logp = (old + log_ratio).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = policy_loss(logp, old, torch.tensor([1.0, 1.0]), mask, importance_level="sequence")
    s0, s1 = math.exp(0.3), math.exp(0.1)
    close(out.loss, (-1.2 - s1) / 2)
    close(out.clip_fraction, 3 / 5)  # the 3 tokens of row 0 of 5 valid tokens
    close(out.ratio_mean, (3 * s0 + 2 * s1) / 5)
    # GSPO-token gradient: d(-sg[s_1] * pi_t / sg[pi_t]) / dlogp_t = -s_1, / 2 tokens / 2 seqs = -s_1 / 4
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, [[0.0, 0.0, 0.0], [-s1 / 4, -s1 / 4, 0.0]])
    # token level on the same inputs differs:
    #   row 0 ratios e^0.1 = 1.105, e^0.2 = 1.221 -> 1.2, e^0.6 = 1.822 -> 1.2: mean -(1.105171 + 2.4) / 3
    #   row 1 ratios e^0.3 = 1.350 -> 1.2, e^-0.1 = 0.905 (unclipped, A > 0): mean -(1.2 + 0.904837) / 2
    tok = policy_loss(logp, old, torch.tensor([1.0, 1.0]), mask)
    row0 = -(math.exp(0.1) + 1.2 + 1.2) / 3
    row1 = -(1.2 + math.exp(-0.1)) / 2
    close(tok.loss, (row0 + row1) / 2)


def test_policy_loss_rejects_bad_arguments():
    logp = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.ones(2, 3), mask)  # advantages must be [N]
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.ones(2), mask, importance_level="segment")  # type: ignore[arg-type]
