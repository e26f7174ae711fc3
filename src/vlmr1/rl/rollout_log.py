"""rollouts.jsonl: what the model wrote during training, with every reward and its advantage.

One JSON line per logged completion: ``step``, ``group`` (the prompt's index in the step, over
all ranks), ``index`` (j of G), ``sample_id``, ``problem``, ``images``, ``solution``,
``reward_method``, the image and model-input sizes (to draw boxes), ``completion``, ``length``
(tokens), ``truncated`` (cut at the length limit, no EOS), ``rewards`` (name -> value, None where
not applicable), ``reward`` (the weighted total), ``advantage``, ``zero_std`` (the group had no
reward spread, so no signal), and where the step computed them ``logp`` (the policy's mean
per-token log-prob) and ``kl`` (the mean per-token KL estimate against the reference).

Logged steps: the first and every ``train.log_completions``-th, ``train.log_completions_groups``
groups of each (spread over the ranks, gathered to rank 0). A step's lines are one ``os.write`` on
an append-only file, so a kill leaves whole steps (a partial last line, should one ever appear, is
dropped on resume); on resume the lines after the checkpoint's step are cut, like metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report reads FILE; it must not pay for torch, accelerate or transformers
    import torch

    from ..data.batch import Batch
    from ..rewards import RewardOutput
    from .rollout import Rollout

FILE = "rollouts.jsonl"


def is_logged_step(step: int, every: int) -> bool:
    """Step numbers count from 1: the first step and every ``every``-th are logged (0: none)."""
    return every > 0 and (step == 1 or step % every == 0)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def rollout_rows(
    step: int,
    batch: Batch,
    rollout: Rollout,
    frames: list,
    rewards: RewardOutput,
    advantages: torch.Tensor,
    zero_std: torch.Tensor,
    groups: list[int],
    first_group: int,
    row_logp: dict[int, float] | None = None,
    row_kl: dict[int, float] | None = None,
) -> list[dict]:
    """The lines of this rank's prompts ``groups`` (indices into its P prompts), all G completions each.

    ``first_group`` numbers this rank's prompts within the step (rank * P); ``frames`` is each
    prompt's box frame (``box_frames``: the model input's pixels, or 1000 x 1000), as the rewards had it."""
    G = rollout.group_size
    lengths = rollout.completion_mask.sum(1).tolist()
    truncated = rollout.truncated.tolist()
    names = [n.rsplit(":", 1)[-1] for n in rewards.names]  # path/file.py:function logs as its function
    per_func, total, adv = rewards.per_func.tolist(), rewards.total.tolist(), advantages.tolist()
    rows = []
    for g in groups:
        s = batch.samples[g]
        for j in range(G):
            i = g * G + j
            row = {
                "step": step,
                "group": first_group + g,
                "index": j,
                "sample_id": s.id,
                "problem": batch.problems[g],
                "images": s.images,
                "solution": s.solution,
                "reward_method": s.reward_method,
                "image_size": batch.columns["image_size"][g],
                "input_size": frames[g],
                "completion": rollout.texts[i],
                "length": int(lengths[i]),
                "truncated": bool(truncated[i]),
                "rewards": {n: _num(v) for n, v in zip(names, per_func[i])},
                "reward": total[i],
                "advantage": adv[i],
                "zero_std": bool(zero_std[g]),
            }
            if row_logp is not None and i in row_logp:
                row["logp"] = row_logp[i]
            if row_kl is not None and i in row_kl:
                row["kl"] = row_kl[i]
            rows.append(row)
    return rows


def pick_groups(n_prompts: int, wanted: int, world: int, rank: int) -> list[int]:
    """This rank's share of ``wanted`` groups (0: all), its first prompts; the ranks' shares add up to ``wanted``."""
    if wanted == 0:
        return list(range(n_prompts))
    share = wanted // world + (1 if rank < wanted % world else 0)
    return list(range(min(share, n_prompts)))


class RolloutLog:
    """Appends logged steps to ``out/rollouts.jsonl`` (rank 0) and shows them in TensorBoard's text tab.

    ``every`` and ``groups`` are train.log_completions and train.log_completions_groups."""

    def __init__(self, out: Path, every: int, groups: int, main: bool, tensorboard=None):
        self.path, self.every, self.groups, self.tb, self.main = out / FILE, every, groups, tensorboard, main
        self.enabled = main and every > 0  # the file's writer; every rank takes part in the gather

    def wants(self, step: int) -> bool:
        return is_logged_step(step, self.every)

    def log(self, accelerator, step: int, batch: Batch, rollout: Rollout, frames, rewards: RewardOutput, advantages, zero_std, stats) -> None:
        """Every rank: its share of the step's groups, gathered to rank 0, which writes them.
        ``frames``: per prompt, the frame its boxes are answered in (``box_frames``)."""
        P, rank = len(batch.samples), accelerator.process_index
        groups = pick_groups(P, self.groups, accelerator.num_processes, rank)
        rows = rollout_rows(step, batch, rollout, frames, rewards, advantages, zero_std, groups, rank * P, stats.row_logp, stats.row_kl)
        from accelerate.utils import gather_object

        self.write(step, gather_object(rows))

    def write(self, step: int, rows: list[dict]) -> None:
        if not self.enabled or not rows:
            return
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)  # one write: a kill leaves the step's lines whole or absent
        finally:
            os.close(fd)
        if self.tb is not None:
            self.tb.add_text("rollouts", markdown_table(rows), step)

    def truncate_after(self, step: int) -> None:
        """On resume, keep the whole lines of steps up to the checkpoint's (also when logging is now off)."""
        if not (self.main and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)


def _cell(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    """A step's lines as the Markdown table TensorBoard's text plugin renders."""
    names = list(rows[0]["rewards"]) if rows else []
    head = ["group", "j", "completion", *names, "reward", "advantage", "tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        values = ["-" if r["rewards"][n] is None else f"{r['rewards'][n]:.3f}" for n in names]
        cut = " (cut)" if r["truncated"] else ""
        cells = [str(r["group"]), str(r["index"]), _cell(r["completion"]), *values, f"{r['reward']:.3f}", f"{r['advantage']:+.3f}", f"{r['length']}{cut}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
