"""The policy update of a GRPO step: log-prob passes over a rollout, and mu optimizer updates on it.

Every log-prob pass divides the logits by the temperature the rollout records
(``rollout.sampling``), so ratios and KL refer to the distribution the completions came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..config import AlgoConfig
from ..distributed import micro_batch
from . import algos, rollout_correction
from .entropy import entropy_stats, high_entropy_mask
from .logprobs import completion_logprobs
from .rollout import Rollout, prompt_rows
from .shared_prompt import shared_prompt_logprobs


def micro_batches(rows: list[int], size: int) -> list[list[int]]:
    """Chunks of at most ``size`` rows, each a contiguous run (filtered groups leave gaps)."""
    runs: list[list[int]] = []
    for i in rows:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < size:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def chunk_logprobs(model, adapter, rollout: Rollout, shared: bool, rows: list[int], with_entropy: bool = False):
    """Log-probs [n, Lc] of a contiguous run of rollout rows (and their entropies [n, Lc] with ``with_entropy``).

    ``shared``: each prompt of the run is encoded once and its completions attend to the shared
    cache (``shared_prompt``: exact, up to G x less prompt work); otherwise each row's prompt is
    run in full.
    """
    start, stop = rows[0], rows[-1] + 1
    ids, mask = rollout.completion_ids[start:stop], rollout.completion_mask[start:stop]
    temperature = rollout.sampling.temperature
    if shared:
        G = rollout.group_size
        first, last = start // G, (stop - 1) // G + 1
        counts = [min(stop, (i + 1) * G) - max(start, i * G) for i in range(first, last)]  # a run may cut a group
        prompts = adapter.slice_prompts(rollout.prompts, first, last)
        return shared_prompt_logprobs(model, adapter, prompts, ids, mask, counts, temperature, adapter.suppressed_token_ids, with_entropy)
    inputs = adapter.sequence_inputs(prompt_rows(adapter, rollout, start, stop), ids, mask)
    return completion_logprobs(model, inputs, ids, temperature, adapter.suppressed_token_ids, with_entropy)


@torch.no_grad()
def frozen_logprobs(model, adapter, rollout: Rollout, shared: bool, size: int) -> torch.Tensor:
    """Log-probs [N, Lc] without gradients (old policy for mu > 1, or the reference model)."""
    rows = micro_batches(list(range(len(rollout.texts))), size)
    return torch.cat([chunk_logprobs(model, adapter, rollout, shared, run) for run in rows])


class RowTensors(NamedTuple):
    """A step's per-row tensors for some rows (a micro-batch)."""

    advantages: torch.Tensor  # [n]
    old_logp: torch.Tensor | None  # [n, Lc], None when mu = 1 (the current log-probs, detached, stand in)
    ref_logp: torch.Tensor | None  # [n, Lc], None when beta = 0
    mask: torch.Tensor  # [n, Lc] loss mask
    sampler_logp: torch.Tensor | None = None  # [n, Lc] the sampler's own log-probs (vLLM); None: the sampler is the policy


@dataclass
class StepBatch:
    """What a GRPO step trains on: the rollout and the tensors computed from it (row i*G+j is
    prompt i's j-th completion, N = P * G)."""

    rollout: Rollout
    advantages: torch.Tensor  # [N]
    rows: list[int]  # rows in the update: all, or those of groups with reward spread (algo.filter_zero_std)
    old_logp: torch.Tensor | None = None  # [N, Lc] (mu > 1)
    ref_logp: torch.Tensor | None = None  # [N, Lc] (beta > 0)
    loss_mask: torch.Tensor | None = None  # [N, Lc] tokens in the loss; None: the completion mask

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.completion_mask if self.loss_mask is None else self.loss_mask

    def select(self, rows: list[int]) -> RowTensors:
        index = torch.tensor(rows)

        def pick(t):
            return None if t is None else t[index]

        return RowTensors(self.advantages[index], pick(self.old_logp), pick(self.ref_logp), self.mask[index], pick(self.rollout.sampler_logp))


@dataclass
class UpdateStats:
    """This rank's numbers from the mu updates of one step (logged as means by ``step_metrics``)."""

    loss: list[float] = field(default_factory=list)  # per micro-batch, weighted as backpropagated
    policy_loss: list[float] = field(default_factory=list)  # the same without the KL term
    kl: list[float] = field(default_factory=list)  # per micro-batch token mean (beta > 0)
    clip_fraction: list[float] = field(default_factory=list)  # per micro-batch token mean
    ratio: list[float] = field(default_factory=list)  # per micro-batch token mean of the importance ratio
    grad_norm: list[float] = field(default_factory=list)  # per optimizer step, before clipping
    off_policy_masked: list[float] = field(default_factory=list)  # per micro-batch share of rows dropped (algo.off_policy_mask_threshold)
    mismatch: list[float] = field(default_factory=list)  # first pass (mismatch_stats): token KL sum, tokens, largest sequence KL, IS weight sum, rows masked, rows
    entropy: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # sums over loss tokens: entropy, tokens above HIGH_ENTROPY, tokens
    row_logp: dict[int, float] = field(default_factory=dict)  # row -> mean per-token log-prob (first pass; row_stats)
    row_kl: dict[int, float] = field(default_factory=dict)  # row -> mean per-token KL estimate (first pass; row_stats, beta > 0)


def loss_options(a: AlgoConfig) -> dict:
    """``algos.policy_loss``'s variant arguments, as the algo config sets them."""
    return {
        "eps_low": a.eps_low, "eps_high": a.eps_high, "beta": a.beta, "kl_estimator": a.kl_estimator,
        "aggregation": a.loss_aggregation, "importance_level": a.importance_level, "surrogate": a.surrogate,
        "delta": a.delta, "sapo_tau_pos": a.sapo_temperature_pos, "sapo_tau_neg": a.sapo_temperature_neg,
        "kl_bias_correction": a.kl_bias_correction, "off_policy_threshold": a.off_policy_mask_threshold,
    }


def policy_update(
    model,
    adapter,
    accelerator,
    batch: StepBatch,
    a: AlgoConfig,
    *,
    micro_batch_size: int,
    shared: bool,
    step_optimizer: Callable[[bool], float],
    row_stats: bool = False,
) -> UpdateStats:
    """``a.num_iterations`` (mu) optimizer updates on the rollout, micro-batched with gradient
    accumulation; ``step_optimizer(loss_finite)`` clips, steps and returns the gradient norm (it
    raises NonFiniteError when too many steps in a row were skipped as non-finite).
    ``row_stats`` also keeps each updated row's mean log-prob and KL (for rollouts.jsonl).

    Every aggregation is a mean over the GLOBAL batch (all ranks, all micro-batches), whatever
    the split. Let W be the world size, R the kept rows and T their valid tokens summed over all
    ranks, and n a micro-batch's rows. DDP averages gradients over the W ranks, so a rank's
    micro-batch losses are weighted to make (1/W) * sum over ranks and micro-batches of
    weight * grad(loss_mb) equal the gradient of the global loss:

    - grpo (mean over rows of per-row means): loss_mb is the mean over its n rows, and the global
      loss is the sum over rows / R; so weight = n * W / R. The same weight makes bnpo a row-weighted
      mean of micro-batch token means and dr_grpo (sum / (n * Lmax) per micro-batch) exactly the
      global sum / (R * Lmax).
    - dapo (token mean over the global batch): ``policy_loss`` divides by T / W, so weight = 1:
      (1/W) * sum of token losses * W / T = sum / T.
    - A rank whose groups were all filtered out (R counts none of its rows) still joins DDP's
      gradient all-reduce with one zero-weighted row; otherwise the other ranks would wait for it
      forever. When no rank has rows (R = 0) no update is made at all. A rank with fewer
      micro-batches than another (filtered groups, dynamic sampling) runs zero-weighted ones to
      match, so every rank makes the same forwards and the same last, synchronising, backward.
    """
    stats = UpdateStats()
    mask = batch.mask
    rows = batch.rows
    counts = torch.tensor([float(len(rows)), mask[rows].sum().item() if rows else 0.0], device=accelerator.device)
    global_rows, global_tokens = accelerator.reduce(counts, "sum").tolist()
    if not global_rows:
        return stats
    world = accelerator.num_processes
    options = loss_options(a)
    update_rows, share = (rows, 1.0) if rows else ([0], 0.0)
    chunks = micro_batches(update_rows, micro_batch_size)
    # Every rank runs as many forwards as the rank with the most micro-batches (DDP syncs buffers
    # in every forward): the extra ones are zero-weighted and left out of the stats.
    most = int(accelerator.gather(torch.tensor([len(chunks)], device=accelerator.device)).max())
    padded = [(c, False) for c in chunks] + [([update_rows[0]], True)] * (most - len(chunks))
    for p in range(a.num_iterations):
        finite = True
        for k, (chunk, pad) in enumerate(padded):
            with micro_batch(accelerator, model, last=k == len(padded) - 1):
                logp, entropy = chunk_logprobs(model, adapter, batch.rollout, shared, chunk, with_entropy=True)  # [n, Lc] each
                sel = batch.select(chunk)
                keep = high_entropy_mask(entropy, sel.mask, a.top_entropy_quantile) if a.top_entropy_quantile < 1 else None
                behaviour = logp.detach() if sel.old_logp is None else sel.old_logp  # the trainer's log-probs at rollout time
                if sel.sampler_logp is not None:  # rollout correction: the sampler was not the trainer
                    fix = rollout_correction.correct(behaviour, sel.sampler_logp, sel.mask, a.rollout_is, a.rollout_is_cap, a.rollout_mask_threshold)
                    keep = fix.weights if keep is None else keep.float() * fix.weights
                res = algos.policy_loss(
                    logp,
                    behaviour,
                    sel.advantages,
                    sel.mask,
                    ref_logp=sel.ref_logp,
                    max_completion_length=batch.rollout.sampling.max_new_tokens,
                    global_num_tokens=global_tokens / world,
                    policy_keep=keep,
                    **options,
                )
                weight = (not pad) * share * (1.0 if a.loss_aggregation == "dapo" else len(chunk) * world / global_rows)
                accelerator.backward(res.loss * weight)
            if pad:
                continue
            stats.loss.append(res.loss.item() * weight)
            stats.policy_loss.append(res.policy_loss.item() * weight)
            finite = finite and math.isfinite(stats.loss[-1])
            stats.clip_fraction.append(res.clip_fraction.item())
            stats.ratio.append(res.ratio_mean.item())
            if res.kl is not None:
                stats.kl.append(res.kl.item())
            if res.off_policy_masked is not None:
                stats.off_policy_masked.append(res.off_policy_masked.item())
            if share:
                stats.entropy = [x + y for x, y in zip(stats.entropy, entropy_stats(entropy, sel.mask))]
            if share and p == 0 and sel.sampler_logp is not None:
                stats.mismatch = combine_mismatch(stats.mismatch, mismatch_stats(fix, sel.mask))
            if row_stats and p == 0 and share:
                completion = batch.rollout.completion_mask[chunk]  # the whole completion, also where the loss masks it
                stats.row_logp.update(zip(chunk, algos.masked_mean(logp.detach(), completion, dim=-1).tolist()))
                if sel.ref_logp is not None:
                    kl = algos.kl_penalty(logp.detach(), sel.ref_logp, a.kl_estimator)  # [n, Lc]
                    stats.row_kl.update(zip(chunk, algos.masked_mean(kl, completion, dim=-1).tolist()))
        stats.grad_norm.append(step_optimizer(finite))
    return stats


def mismatch_stats(fix: rollout_correction.Correction, mask: torch.Tensor) -> list[float]:
    """A micro-batch's part of ``UpdateStats.mismatch``: token-weighted sum of the sequence KLs,
    tokens, largest sequence KL, sum of the IS weights over tokens, sequences masked, sequences."""
    tokens = mask.sum(-1).float()  # [n]
    return [
        (fix.seq_kl * tokens).sum().item(), tokens.sum().item(), fix.seq_kl.max().item(),
        (fix.weights * mask.float()).sum().item(), (~fix.keep).sum().item(), float(len(tokens)),
    ]


def combine_mismatch(a: list[float], b: list[float]) -> list[float]:
    """Two ``mismatch_stats``: sums, but the largest KL is a max."""
    if not a:
        return b
    out = [x + y for x, y in zip(a, b)]
    out[2] = max(a[2], b[2])
    return out
