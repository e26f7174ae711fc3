"""vlmr1's loss variants against TRL 1.16's own ``GRPOTrainer._compute_loss`` on identical tensors.

    pip install 'vlmr1[bench]'     # trl==1.16.0, benchmark only: vlmr1 itself never imports TRL
    python benchmarks/loss_vs_trl.py

TRL's method runs unmodified on a stand-in ``self`` that holds the settings it reads, with the
log-prob source patched to return the given per-token log-probs (a leaf tensor, so both
gradients can be compared) and entropies; one process, no gradient accumulation. Each case
prints the largest difference in loss value and in gradient; all must be below 1e-9 (float64),
but for SAPO at its default temperatures: TRL builds tau with ``torch.where`` on Python floats,
a float32 tensor, so its 1.05 is 1.04999995 and results differ by ~5e-8 on float64 inputs (the
SAPO case with temperatures exact in float32 agrees to 0).

Cases: KL with and without bias correction (TRL's use_bias_correction_kl vs algo.kl_bias_correction),
CISPO (TRL epsilon_high = cap, dapo normalisation vs surrogate=cispo, eps_low=1, eps_high=cap-1,
aggregation=dapo), SAPO, the two-sided clip delta, off-policy sequence masking, top-entropy-quantile
masking, and TRL's truncated-completion rule against the rollout's ``truncated`` flag.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from vlmr1.rl.algos import completion_mask, policy_loss
from vlmr1.rl.entropy import high_entropy_mask
from vlmr1.rl.masks import truncation_mask

N, L = 6, 5


class OneProcess:
    num_processes = 1
    sync_gradients = True

    def gather(self, t):
        return t

    def reduce(self, t, reduction="sum"):
        return t

    def pad_across_processes(self, t, dim=0, pad_index=0):
        return t


def tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    logp = (torch.randn(N, L, generator=g, dtype=torch.float64) * 0.5 - 1.5).requires_grad_()
    old = logp.detach() + torch.randn(N, L, generator=g, dtype=torch.float64) * 0.4
    ref = logp.detach() + torch.randn(N, L, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    # EOS at different places, one row with a single token, one truncated (all valid)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    entropy = torch.rand(N, L, generator=g, dtype=torch.float64) * 2
    return logp, old, ref, adv, mask, entropy


def trl_loss(logp, old, ref, adv, mask, entropy, **settings):
    """TRL 1.16's ``_compute_loss`` on these tensors; ``settings`` override GRPOConfig-like values."""
    from trl import GRPOTrainer

    s = {"loss_type": "grpo", "beta": 0.04, "epsilon_low": 0.2, "epsilon_high": 0.2, "delta": None, "use_bias_correction_kl": False,
         "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05, "off_policy_mask_threshold": None, "top_entropy_quantile": 1.0}
    s.update(settings)
    stub = SimpleNamespace(
        accelerator=OneProcess(), model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        importance_sampling_level="token", use_vllm=False, vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": __import__("collections").defaultdict(list)},
        max_completion_length=L, loss_type=s["loss_type"], beta=s["beta"], epsilon_low=s["epsilon_low"], epsilon_high=s["epsilon_high"],
        off_policy_mask_threshold=s["off_policy_mask_threshold"], top_entropy_quantile=s["top_entropy_quantile"],
        args=SimpleNamespace(delta=s["delta"], use_bias_correction_kl=s["use_bias_correction_kl"], steps_per_generation=1,
                             sapo_temperature_pos=s["sapo_temperature_pos"], sapo_temperature_neg=s["sapo_temperature_neg"]),
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropy, None),
    )
    stub.get_high_entropy_mask = functools.partial(GRPOTrainer.get_high_entropy_mask, stub)
    inputs = {
        "prompt_ids": torch.zeros(N, 1, dtype=torch.long), "prompt_mask": torch.ones(N, 1, dtype=torch.long),
        "completion_ids": torch.ones(N, L, dtype=torch.long), "completion_mask": mask, "advantages": adv,
        "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum(),
    }
    return GRPOTrainer._compute_loss(stub, None, inputs)


CASES = {
    # name: (TRL settings, vlmr1 policy_loss arguments)
    "k3, no bias correction": ({}, {}),
    "k3 x ratio (use_bias_correction_kl)": ({"use_bias_correction_kl": True}, {"kl_bias_correction": True}),
    "cispo, cap 5, dapo": ({"loss_type": "cispo", "epsilon_high": 5.0}, {"surrogate": "cispo", "eps_low": 1.0, "eps_high": 4.0, "aggregation": "dapo"}),
    "cispo, cap 1.28": ({"loss_type": "cispo", "epsilon_high": 1.28}, {"surrogate": "cispo", "eps_low": 1.0, "eps_high": 0.28, "aggregation": "dapo"}),
    "sapo (TRL's tau in float32: 1e-6)": ({"loss_type": "sapo"}, {"surrogate": "sapo"}),
    "sapo, tau 2 / 0.5": ({"loss_type": "sapo", "sapo_temperature_pos": 2.0, "sapo_temperature_neg": 0.5}, {"surrogate": "sapo", "sapo_tau_pos": 2.0, "sapo_tau_neg": 0.5}),
    "two-sided clip, delta 1.3": ({"delta": 1.3}, {"delta": 1.3}),
    "off-policy mask 0.05": ({"off_policy_mask_threshold": 0.05}, {"off_policy_threshold": 0.05}),
    "off-policy mask 0.05, bias-corrected KL, bnpo": ({"off_policy_mask_threshold": 0.05, "use_bias_correction_kl": True, "loss_type": "bnpo"},
                                                       {"off_policy_threshold": 0.05, "kl_bias_correction": True, "aggregation": "bnpo"}),
    "top entropy quantile 0.2": ({"top_entropy_quantile": 0.2}, {"entropy_quantile": 0.2}),
}


def compare(seed: int = 0) -> float:
    worst = 0.0
    for name, (trl_settings, ours) in CASES.items():
        logp, old, ref, adv, mask, entropy = tensors(seed)
        expected = trl_loss(logp, old, ref, adv, mask, entropy, **trl_settings)
        (g_trl,) = torch.autograd.grad(expected, logp)
        ours = dict(ours)
        quantile = ours.pop("entropy_quantile", None)
        keep = high_entropy_mask(entropy, mask, quantile) if quantile is not None else None
        got = policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, global_num_tokens=mask.sum().item(), policy_keep=keep, **ours).loss
        (g_ours,) = torch.autograd.grad(got, logp)
        dv, dg = abs(got.item() - expected.item()), (g_ours - g_trl).abs().max().item()
        worst = max(worst, *(x * 1e-3 if "1e-6" in name else x for x in (dv, dg)))  # that case: 1e-6
        print(f"{name:<48} loss {expected.item():+.6f}  |value diff| {dv:.1e}  max |grad diff| {dg:.1e}")
    # mask_truncated_completions: TRL marks a row truncated when its last token is neither EOS nor pad,
    # on the completion ids as sampled; vlmr1's rollout marks rows with no EOS.
    eos, pad = 2, 0
    rows = [[5, 5, 5, 5], [5, 2], [2], [5, 5, 5, 2], [7, 7, 7, 7]]  # as sampled, unpadded (TRL's list)
    trl_truncated = torch.tensor([ids[-1] not in (eos, pad) for ids in rows])
    padded = torch.tensor([r + [pad] * (4 - len(r)) for r in rows])
    ours_truncated = ~torch.isin(padded, torch.tensor([eos])).any(1)
    mask = completion_mask(padded, [eos])
    trl_mask = mask * (~trl_truncated).unsqueeze(1).long()
    same = torch.equal(trl_truncated, ours_truncated) and torch.equal(truncation_mask(mask, ours_truncated), trl_mask)
    print(f"{'mask_truncated_completions rule':<48} {'same rows and mask' if same else 'DIFFERENT'}")
    return worst if same else float("inf")


if __name__ == "__main__":
    worst = max(compare(seed) for seed in range(3))
    print(f"largest difference over 3 seeds: {worst:.1e}")
    raise SystemExit(0 if worst < 1e-9 else 1)
