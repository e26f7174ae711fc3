"""Hand-computed checks of the CISPO, SAPO and two-sided-clip surrogates and of KL bias correction
(vlmr1.rl.surrogates, vlmr1.rl.algos.policy_loss). Every expected number is worked out beside it.

Agreement with TRL 1.16: the formulas below are TRL's ``GRPOTrainer._compute_loss`` written out
(cispo: -clamp(coef_1, max=epsilon_high).detach() * A * logp; sapo: -sigmoid(tau (coef_1 - 1)) 4 / tau * A
with tau_pos where A > 0; delta: coef_1 = clamp(coef_1, max=delta) before the min; bias correction:
per_token_kl * coef_1). benchmarks/loss_vs_trl.py also runs TRL's own method on these tensors.
"""

import math

import pytest
import torch

from vlmr1.rl.algos import kl_penalty, policy_loss

E = math.e


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


RATIOS = torch.tensor([0.5, 1.0, 1.5])
OLD = torch.zeros(2, 3)


def logp_of(ratios):
    return ratios.log().repeat(2, 1).requires_grad_()  # old = 0, so ratio = exp(logp)


# ---------------------------------------------------------------- CISPO


def test_cispo_clipped_tokens_keep_their_gradient():
    # eps 0.2 / 0.28: weights clamp([0.5, 1, 1.5], 0.8, 1.28) = [0.8, 1, 1.28], detached
    # row 0 (A = +1, 3 tokens): loss -w * logp = [-0.8 ln 0.5, 0, -1.28 ln 1.5] = [0.554518, 0, -0.518995], mean 0.011841
    # row 1 (A = -1, EOS after 2 tokens, mask [1, 1, 0]): [-0.554518, 0], mean -0.277259
    # grpo: (0.011841 - 0.277259) / 2 = -0.132709
    logp = logp_of(RATIOS)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = policy_loss(logp, OLD, torch.tensor([1.0, -1.0]), mask, eps_low=0.2, eps_high=0.28, surrogate="cispo")
    row0 = (-0.8 * math.log(0.5) - 1.28 * math.log(1.5)) / 3
    row1 = (0.8 * math.log(0.5)) / 2
    close(out.loss, (row0 + row1) / 2)
    # gradient -w A / (len N): row 0 [-0.8, -1, -1.28] / 6; row 1 [0.8, 1] / 4, the masked token 0
    # (the PPO clip would give 0 at ratio 1.5 in row 0 and at ratio 0.5 in row 1)
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, [[-0.8 / 6, -1 / 6, -1.28 / 6], [0.8 / 4, 1 / 4, 0.0]])
    # weight clamped: ratios 0.5 and 1.5 in row 0, 0.5 in row 1 -> 3 of 5 valid tokens
    close(out.clip_fraction, 3 / 5)


def test_cispo_upper_cap_only_with_eps_low_1():
    # MiniMax-M1 / TRL: cap at 1 + eps_high = 5 (TRL epsilon_high=5), no lower bound (eps_low = 1: clamp at 0)
    # ratios [0.1, 10]: weights [0.1, 5]; A = 2, one row: loss = -2 (0.1 ln 0.1 + 5 ln 10) / 2
    #   = -(0.1 * -2.302585 + 5 * 2.302585) = -(-0.230259 + 11.512925) = -11.282667
    logp = torch.tensor([[0.1, 10.0]]).log().requires_grad_()
    out = policy_loss(logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2), eps_low=1.0, eps_high=4.0, surrogate="cispo")
    close(out.loss, -(0.1 * math.log(0.1) + 5 * math.log(10)))
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, [[-2 * 0.1 / 2, -2 * 5 / 2]])  # -w A / 2 tokens
    close(out.clip_fraction, 0.5)  # only the 10 was capped


def test_cispo_on_policy_is_the_policy_gradient_and_empty_rows_count_zero():
    # ratio 1 -> w = 1 -> gradient -A / (len N); row 1 has no valid token: loss 0, gradient 0, still in N = 3
    # A = [1, -2, 0.5], lengths [2, 0, 1]: row 0 -1/(2*3) = -1/6, row 2 -0.5/(1*3) = -1/6
    g = torch.Generator().manual_seed(3)
    logp = (torch.randn(3, 2, generator=g) - 1).requires_grad_()
    mask = torch.tensor([[1, 1], [0, 0], [1, 0]])
    out = policy_loss(logp, logp.detach(), torch.tensor([1.0, -2.0, 0.5]), mask, surrogate="cispo")
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, [[-1 / 6, -1 / 6], [0.0, 0.0], [-1 / 6, 0.0]])
    # value: -A logp per token: row 0 -(l00 + l01) / 2, row 2 -0.5 l20, row 1 0; mean over 3 rows
    l = logp.detach()
    close(out.loss, (-(l[0, 0] + l[0, 1]) / 2 - 0.5 * l[2, 0]) / 3)


def test_cispo_dapo_aggregation_divides_by_global_tokens():
    # TRL's cispo normalises by the global token count: ratios [0.5, 1, 1.5] (A = +1) with eps 0.2 / 0.28
    # sum of -w logp = 0.554518 + 0 - 0.518995 = 0.035523; global tokens 10 -> 0.0035523
    logp = torch.tensor([[0.5, 1.0, 1.5]]).log()
    out = policy_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), eps_high=0.28, surrogate="cispo", aggregation="dapo", global_num_tokens=10)
    close(out.loss, (-0.8 * math.log(0.5) - 1.28 * math.log(1.5)) / 10)


# ---------------------------------------------------------------- SAPO


def test_sapo_gate_values_and_gradients():
    # tau_pos 1, tau_neg 1.05. Per token loss -sigmoid(tau (r - 1)) * 4 / tau * A; gradient
    # d/dlogp = -4 sigmoid(x) (1 - sigmoid(x)) r A with x = tau (r - 1).
    # row 0, A = +1, r = [1, e^0.5 = 1.648721]: x = [0, 0.648721], sigmoid = [0.5, 0.656731]
    #   loss [-2, -2.626925]; grad [-1, -4 * 0.656731 * 0.343269 * 1.648721 = -1.486734]
    # row 1, A = -1, r = [1, e^-0.5 = 0.606531] (EOS at 2), tau 1.05: x = [0, -0.413143], sigmoid = [0.5, 0.398159]
    #   loss [+2 / 1.05 = 1.904762, 4 * 0.398159 / 1.05 = 1.516796]; grad [+1, 4 * 0.398159 * 0.601841 * 0.606531 = 0.581373]
    log_r = torch.tensor([[0.0, 0.5, 3.0], [0.0, -0.5, 1.0]])
    logp = log_r.clone().requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    out = policy_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask, surrogate="sapo", aggregation="bnpo")
    s0, s1 = sigmoid(math.exp(0.5) - 1), sigmoid(1.05 * (math.exp(-0.5) - 1))
    losses = [-2.0, -4 * s0, 2 / 1.05, 4 * s1 / 1.05]
    close(out.loss, sum(losses) / 4)
    (grad,) = torch.autograd.grad(out.loss, logp)
    g0, g1 = -4 * s0 * (1 - s0) * math.exp(0.5), 4 * s1 * (1 - s1) * math.exp(-0.5)
    close(grad, [[-1 / 4, g0 / 4, 0.0], [1 / 4, g1 / 4, 0.0]])
    close(out.clip_fraction, 0.0)  # no hard bound


def test_sapo_gate_closes_far_off_policy_and_at_ratio_one_is_the_policy_gradient():
    # r = e^3 = 20.085537, A = +1, tau 1: x = 19.085537, sigmoid(x) = 1 - 5.15e-9
    #   gradient 4 * 5.15e-9 * 20.09 = 4.1e-7: practically closed, where the PPO clip is exactly 0
    logp = torch.tensor([[3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2), surrogate="sapo")
    (grad,) = torch.autograd.grad(out.loss, logp)
    s = sigmoid(math.exp(3) - 1)
    close(grad, [[-4 * s * (1 - s) * math.exp(3) / 2, -1 / 2]], atol=1e-12)
    assert abs(grad[0, 0].item()) < 1e-6


def test_sapo_larger_tau_closes_faster():
    # r = 1.5, A = +1: gradient 4 s (1 - s) * 1.5 with s = sigmoid(tau * 0.5)
    #   tau 1: s = 0.622459, grad 1.5 * 4 * 0.622459 * 0.377541 = 6 * 0.235004 = 1.410022
    #   tau 4: s = 0.880797, grad 1.5 * 4 * 0.880797 * 0.119203 = 6 * 0.104994 = 0.629962
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    grads = []
    for tau in (1.0, 4.0):
        out = policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), surrogate="sapo", sapo_tau_pos=tau)
        grads.append(torch.autograd.grad(out.loss, logp)[0].item())
    assert grads[0] == pytest.approx(-1.410022, abs=1e-5)
    assert grads[1] == pytest.approx(-0.629962, abs=1e-5)


# ---------------------------------------------------------------- two-sided clip (delta)


def test_delta_caps_negative_advantage_tokens():
    # A = -1, eps 0.2, delta 1.5; ratios [0.5, 1.3, 2.0]
    #   0.5: -min(-0.5, -0.8) = 0.8 (low clip, no gradient)
    #   1.3: -min(-1.3, -1.2) = 1.3 (unclipped: gradient +1.3)
    #   2.0: -min(-min(2, 1.5), -1.2) = 1.5 (delta cap, no gradient); without delta: 2.0 with gradient 2.0
    # grpo over one row: (0.8 + 1.3 + 1.5) / 3 = 1.2 ; without delta (0.8 + 1.3 + 2.0) / 3 = 1.366667
    logp = torch.tensor([[0.5, 1.3, 2.0]]).log().requires_grad_()
    adv, mask = torch.tensor([-1.0]), torch.ones(1, 3)
    out = policy_loss(logp, torch.zeros(1, 3), adv, mask, delta=1.5)
    close(out.loss, 3.6 / 3)
    close(out.clip_fraction, 2 / 3)
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, [[0.0, 1.3 / 3, 0.0]])
    plain = policy_loss(logp, torch.zeros(1, 3), adv, mask)
    close(plain.loss, 4.1 / 3)
    close(torch.autograd.grad(plain.loss, logp)[0], [[0.0, 1.3 / 3, 2.0 / 3]])


def test_delta_changes_nothing_for_positive_advantages_or_masked_tokens():
    # A = +1: the clamped branch (<= 1.2) is already the min above 1.2, so delta 1.5 never binds:
    # ratios [0.5, 1.3, 2.0] -> -min([0.5, 1.3, 1.5], [0.8, 1.2, 1.2]) = [-0.5, -1.2, -1.2], same as plain
    # second row A = -1 with ratio 2.0 behind its EOS (mask [1, 0, 0]): only ratio 0.5 counts: 0.8
    logp = torch.tensor([[0.5, 1.3, 2.0], [0.5, 2.0, 2.0]]).log()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    out = policy_loss(logp, torch.zeros(2, 3), adv, mask, delta=1.5)
    close(out.loss, (-2.9 / 3 + 0.8) / 2)
    close(out.loss, policy_loss(logp, torch.zeros(2, 3), adv, mask).loss)
    with pytest.raises(ValueError):
        policy_loss(logp, torch.zeros(2, 3), adv, mask, delta=1.5, surrogate="sapo")


# ---------------------------------------------------------------- KL bias correction


def test_kl_bias_correction_on_policy_gradient_is_logp_minus_ref():
    # on-policy (ratio 1 in value): d = ref - logp = [0, 1, -1], k3 = [0, e - 2, 1/e] either way.
    # plain k3: d k3 / d logp = 1 - e^d = [0, 1 - e, 1 - 1/e] = [0, -1.718282, 0.632121]
    # corrected k3 * r: (1 - e^d) * 1 + k3 * 1 = -d = logp - ref = [0, -1, 1]  (k2's gradient)
    # one row, A = 0, beta = 1, grpo over 3 tokens: gradients / 3
    logp = torch.zeros(1, 3, requires_grad=True)
    ref = torch.tensor([[0.0, 1.0, -1.0]])
    args = {"ref_logp": ref, "beta": 1.0}
    plain = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 3), **args)
    fixed = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 3), kl_bias_correction=True, **args)
    close(plain.loss, (E - 2 + 1 / E) / 3)
    close(fixed.loss, (E - 2 + 1 / E) / 3)  # same value on-policy
    close(torch.autograd.grad(plain.loss, logp)[0], [[0.0, (1 - E) / 3, (1 - 1 / E) / 3]])
    close(torch.autograd.grad(fixed.loss, logp)[0], [[0.0, -1 / 3, 1 / 3]])


def test_kl_bias_correction_off_policy_value_and_gradient():
    # old = logp - [0, 0.5, -0.5], ratio r = [1, e^0.5, e^-0.5]; ref - logp = [1, 1, -1]
    # k3 = [e - 2, e - 2, 1/e] = [0.718282, 0.718282, 0.367879]; r k3 = [0.718282, 1.184251, 0.223130]
    # gradient r (1 - e^d) + r k3 = -r d = [-1, -e^0.5, e^-0.5] (with EOS after token 2: the third masked)
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.tensor([[0.0, -0.5, 0.5]])
    ref = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = policy_loss(logp, old, torch.zeros(1), mask, ref_logp=ref, beta=1.0, kl_bias_correction=True)
    close(out.loss, ((E - 2) + math.exp(0.5) * (E - 2)) / 2)
    close(out.kl, ((E - 2) + math.exp(0.5) * (E - 2)) / 2)
    close(torch.autograd.grad(out.loss, logp)[0], [[-1 / 2, -math.exp(0.5) / 2, 0.0]])


def test_which_kl_each_estimator_descends_in_expectation():
    # A 3-token policy pi = softmax(theta); tokens drawn from pi_old. The expected loss gradient
    # sum_y pi_old(y) grad[k(y)] (sampling distribution fixed) against exact KL gradients:
    #   on-policy (pi_old = pi): k1 -> 0; k2 -> grad KL(pi || ref); k3 -> grad KL(ref || pi)
    #   off-policy, bias-corrected (r = pi / pi_old): k3 * r -> grad KL(pi || ref), as k1 * r
    ref = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    theta0 = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)

    def expected_grad(est, old_theta=None, correct=False):
        theta = theta0.clone().requires_grad_()
        logp = torch.log_softmax(theta, 0)
        old = logp.detach() if old_theta is None else torch.log_softmax(old_theta, 0)
        k = kl_penalty(logp, ref.log(), est) * (torch.exp(logp - old) if correct else 1)
        return torch.autograd.grad((old.exp() * k).sum(), theta)[0]

    def exact(forward):
        theta = theta0.clone().requires_grad_()
        pi = torch.softmax(theta, 0)
        kl = (ref * (ref.log() - pi.log())).sum() if forward else (pi * (pi.log() - ref.log())).sum()
        return torch.autograd.grad(kl, theta)[0]

    close(expected_grad("k1"), [0.0, 0.0, 0.0], atol=1e-12)
    close(expected_grad("k2"), exact(forward=False), atol=1e-12)
    close(expected_grad("k3"), exact(forward=True), atol=1e-12)
    assert (exact(forward=True) - exact(forward=False)).abs().max() > 1e-2  # the two really differ here
    other = torch.tensor([-0.4, 0.1, 0.2], dtype=torch.float64)
    for est in ("k1", "k3"):
        close(expected_grad(est, other, correct=True), exact(forward=False), atol=1e-12)
