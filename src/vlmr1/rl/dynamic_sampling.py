"""Dynamic sampling as DAPO defines it (arXiv 2503.14476, sec. 3.2): groups whose rewards have no
spread carry no advantage, so they are dropped and more prompts are drawn and rolled out until the
step has its P informative groups per process, or ``rounds`` extra rounds are spent.

Exact under data parallelism and after a resume:
- Every round draws ``train.prompts_per_step`` prompts on every process, so a round is W * P
  prompts in a global order (round, then rank, then prompt) that does not depend on how the
  batch is split: round 0 is the step's usual batch, extra round k comes from a second data order
  (its own seed) at position step * rounds + k - 1, each a fixed function of (seed, step, k).
- After each round every process gathers every process's informative-group flags, so all of them
  see the same global count and stop after the same round. The step keeps the first W * P
  informative groups in the global order (``keep_first``), wherever they were drawn: one process
  of two trains on exactly the groups that one process alone would, and the update weighs each
  process's rows by its share of the global batch (``update.policy_update``).
- Extra rounds sample with their own seed per (seed, step, rank, round), so a resumed step draws
  the same completions.

Departures: extra rounds may draw a prompt already in the step (DAPO samples with replacement
across batches too). When the budget runs out the step trains on the informative groups it has;
a process left with none keeps one flat group of its first round, outside the update, so that it
still joins the gradient all-reduce. The kept groups' prompts are encoded again as one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batch import Batch
from ..rewards import RewardOutput
from .algos import zero_std_groups
from .rollout import Rollout


class Draw(NamedTuple):
    """One round: the prompts drawn, their rollout and its rewards."""

    batch: Batch
    rollout: Rollout
    rewards: RewardOutput


def keep_first(informative: torch.Tensor, target: int) -> torch.Tensor:
    """bool [M]: the first ``target`` True entries of ``informative`` [M] (in its order), nothing else."""
    return informative.bool() & (informative.long().cumsum(0) <= target)


def refill_seed(seed: int, step: int, rank: int, round_: int) -> int:
    """The sampling seed of extra round ``round_`` (>= 1) of ``step`` on ``rank``: distinct per tuple."""
    return int(np.random.SeedSequence([seed, step, rank, round_]).generate_state(1)[0])


def refill(
    first: Draw, draw: Callable[[int], Draw], accelerator, rounds: int, group_size: int, adapter
) -> tuple[Draw, dict[str, float]]:
    """Round 0 is ``first``; ``draw(k)`` rolls out extra round k. Returns the step's groups and what was drawn."""
    world, rank, dev = accelerator.num_processes, accelerator.process_index, accelerator.device
    parts, flags = [first], []
    target = len(first.batch.samples) * world  # W * P groups
    while True:
        local = ~zero_std_groups(parts[-1].rewards.total, group_size)  # [P]
        flags.append(accelerator.gather(local.long().to(dev)).cpu().bool())  # [W * P], rank-major: the same on every rank
        if int(torch.cat(flags).sum()) >= target or len(parts) > rounds:
            break
        parts.append(draw(len(parts)))
    found = torch.cat(flags)  # [R * W * P]
    keep = keep_first(found, target).view(len(parts), world, -1)[:, rank]  # [R, P] this rank's kept groups
    groups = [torch.nonzero(k).flatten().tolist() for k in keep]
    if not any(groups):
        groups[0] = [0]  # a flat group (round 0's informative ones are always kept), outside the update
    stats = {
        "dynamic_sampling/rounds": float(len(parts) - 1),  # extra rounds drawn this step
        "dynamic_sampling/prompts_drawn": float(found.numel()),  # over all processes, round 0 included
        "dynamic_sampling/informative_groups": float(found.sum()),  # drawn with reward spread, over all processes
        "dynamic_sampling/kept_groups": float(min(int(found.sum()), target)),
    }
    if len(parts) == 1 and groups[0] == list(range(len(first.batch.samples))):
        return first, stats
    return merge(adapter, parts, groups, group_size, dev), stats


def merge(adapter, parts: list[Draw], groups: list[list[int]], group_size: int, device) -> Draw:
    """The groups ``groups[k]`` of each round ``parts[k]`` as one draw (prompts encoded again, completions re-padded)."""
    G = group_size
    pick = [(p, g) for p, g in zip(parts, groups) if g]
    samples = [p.batch.samples[i] for p, g in pick for i in g]
    problems = [p.batch.problems[i] for p, g in pick for i in g]
    images = [p.batch.images[i] for p, g in pick for i in g]
    columns = {k: [p.batch.columns[k][i] for p, g in pick for i in g] for k in parts[0].batch.columns}
    rows = [[i * G + j for i in g for j in range(G)] for _, g in pick]
    width = max(p.rollout.completion_ids.shape[1] for p, _ in pick)

    def cat(get, pad):  # rows of each round, right-padded to the widest round
        return torch.cat([F.pad(get(p)[r], (0, width - get(p).shape[1]), value=pad) for (p, _), r in zip(pick, rows)])

    rollout = Rollout(
        prompts=adapter.encode_prompts(problems, images).to(device),
        completion_ids=cat(lambda p: p.rollout.completion_ids, adapter.pad_token_id),
        completion_mask=cat(lambda p: p.rollout.completion_mask, 0),
        truncated=torch.cat([p.rollout.truncated[r] for (p, _), r in zip(pick, rows)]),
        texts=[p.rollout.texts[i] for (p, _), r in zip(pick, rows) for i in r],
        sampling=parts[0].rollout.sampling,
        group_size=G,
    )
    rewards = RewardOutput(
        per_func=torch.cat([p.rewards.per_func[r] for (p, _), r in zip(pick, rows)]),
        total=torch.cat([p.rewards.total[r] for (p, _), r in zip(pick, rows)]),
        names=parts[0].rewards.names,
    )
    return Draw(Batch(samples, problems, images, columns), rollout, rewards)
