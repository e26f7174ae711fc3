"""One process of a GRPO run whose completions are fixed functions of the prompt.

Run by test_distributed.py, once alone and twice as a 2-process gloo group. Sampling draws
differ with the batch split, so the equivalence check replaces generation with completions
that depend only on a prompt's content and the completion's place in its group: both runs then
train on exactly the same data, and any difference comes from the distributed code path.

Usage: python dist_worker.py GROUP_SIZE JSON_LIST_OF_OVERRIDES
"""

import dataclasses
import json
import sys

import torch

from vlmr1.config import load_config
from vlmr1.rl.engines import HFEngine
from vlmr1.rl.rollout import finish_rollout
from vlmr1.rl.trainer import train

WORDS = " red green blue circle square left right"


def fixed_generate(group_size: int):
    def generate(model, adapter, prompts, sampling):
        words = adapter.tokenizer(WORDS, add_special_tokens=False)["input_ids"]
        eos, pad = adapter.eos_token_ids[0], adapter.pad_token_id
        rows = []
        for r in range(len(prompts)):
            key = int((prompts.input_ids[r] * prompts.attention_mask[r]).sum())  # the prompt's content
            j = r % group_size  # the completion's place in its group (rows are grouped G at a time)
            length = 1 + (key + 3 * j) % (sampling.max_new_tokens - 1)
            rows.append([words[(key * 7 + j * 3 + k) % len(words)] for k in range(length)] + [eos])
        width = sampling.max_new_tokens
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=prompts.input_ids.device)
        return finish_rollout(adapter, prompts, ids, sampling)  # masks after the EOS and decodes, as every sampler

    return generate


class FixedEngine(HFEngine):
    """The HF engine's interface with fixed completions in place of sampling."""

    def __init__(self, group_size: int):
        super().__init__()
        self.fixed = fixed_generate(group_size)

    def generate(self, model, adapter, prompts, group_size, sampling, **_):
        # Fixed rows for the G-times repeated prompts; like every engine, the rollout keeps each prompt once.
        rollout = self.fixed(model, adapter, adapter.repeat_prompts(prompts, group_size), sampling)
        return dataclasses.replace(rollout, prompts=prompts, group_size=group_size)


if __name__ == "__main__":
    torch.set_num_threads(1)
    group_size, overrides = int(sys.argv[1]), json.loads(sys.argv[2])
    train(load_config(None, overrides), engine=FixedEngine(group_size))
