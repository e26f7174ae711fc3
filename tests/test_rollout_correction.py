"""Rollout correction (sampler != trainer): hand-computed values."""

import math

import torch

from vlmr1.rl import rollout_correction as rc

# Two sequences of 3 tokens; the second has 2 valid tokens.
TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
SAMPLER = torch.tensor([[-1.0, -2.5, -0.5], [-2.0, -1.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
# r = trainer - sampler: [[0, 0.5, 0], [1, 0, (masked)]]


def test_mismatch_kl_is_the_k3_mean_per_sequence():
    # k3(r) = e^r - 1 - r: k3(0) = 0, k3(0.5) = e^0.5 - 1.5, k3(1) = e - 2
    kl = rc.mismatch_kl(TRAINER, SAMPLER, MASK)
    assert torch.allclose(kl, torch.tensor([(math.exp(0.5) - 1.5) / 3, (math.e - 2) / 2]))


def test_token_weights_are_truncated_ratios():
    w = rc.importance_weights(TRAINER, SAMPLER, MASK, "token", cap=2.0)
    # e^0.5 = 1.6487 stays, e^1 = 2.718 is capped at 2; masked positions get ratio e^0 = 1 (ignored by the mask)
    assert torch.allclose(w, torch.tensor([[1.0, math.exp(0.5), 1.0], [2.0, 1.0, 1.0]]))


def test_sequence_weights_use_the_summed_log_ratio():
    w = rc.importance_weights(TRAINER, SAMPLER, MASK, "sequence", cap=2.0)
    # sequence 1: e^(0 + 0.5 + 0) = 1.6487; sequence 2: e^(1 + 0) = 2.718 -> cap 2
    assert torch.allclose(w, torch.tensor([[math.exp(0.5)] * 3, [2.0] * 3]))
    big = rc.importance_weights(torch.zeros(1, 2), torch.full((1, 2), -1000.0), torch.ones(1, 2), "sequence", cap=3.0)
    assert torch.equal(big, torch.full((1, 2), 3.0))  # e^2000 overflows; computed in log space it is the cap


def test_none_gives_unit_weights_and_masking_drops_sequences():
    fix = rc.correct(TRAINER, SAMPLER, MASK, "none", 2.0, threshold=0.3)
    # KLs: 0.0496 and 0.359: only the second exceeds 0.3
    assert fix.keep.tolist() == [True, False]
    assert torch.equal(fix.weights, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert rc.mismatch_keep(torch.tensor([0.1, 5.0]), None).all()
