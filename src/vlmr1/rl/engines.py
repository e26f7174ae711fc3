"""Rollout engines: what samples the G completions of each prompt in a GRPO step.

The trainer talks to an engine through four calls, once per step:
``wake()`` -> ``generate(...)`` -> ``sleep()`` -> (optimizer updates) -> ``sync_weights(model)``.

- ``HFEngine`` (default, ``rollout.engine=hf``): HF ``generate`` on the training model itself
  (``generate_shared`` when ``train.shared_prompt``). Wake, sleep and sync do nothing: there is
  no second copy.
- ``VLLMEngine`` (``rollout.engine=vllm``): vLLM colocated on the training GPU, in ``vllm_engine.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from PIL import Image

from ..models.adapter import PromptBatch
from .rollout import Rollout, Sampling, generate, generate_shared


class RolloutEngine(Protocol):
    """What samples a GRPO step's completions; the trainer takes one (``train(cfg, engine=...)``)."""

    def wake(self) -> None:
        """Take back the memory given up by ``sleep`` (before generating)."""

    def generate(
        self, model, adapter, prompts: PromptBatch, group_size: int, sampling: Sampling, *,
        problems: list[str], images: list[list[Image.Image]], seed: int,
    ) -> Rollout:
        """``group_size`` completions for each of the P unrepeated ``prompts`` (rows i*G+j).

        ``problems`` and ``images`` are what ``prompts`` were encoded from (an engine with its
        own tokenizer needs them); ``seed`` is the step's sampling seed (the trainer has already
        seeded torch with it)."""

    def sleep(self) -> None:
        """Give memory back while the policy trains."""

    def sync_weights(self, model) -> float | None:
        """Make the engine sample from ``model``'s current weights (after the optimizer updates);
        returns a measured sync gap when it checked one (vLLM), else None."""


class HFEngine:
    """HF ``generate`` on the training model; ``shared_prompt``: each prompt prefilled once."""

    def __init__(self, shared_prompt: bool = True):
        self.shared_prompt = shared_prompt

    def wake(self) -> None:
        pass

    def sleep(self) -> None:
        pass

    def sync_weights(self, model) -> None:
        return None  # generation runs on the policy itself

    def generate(self, model, adapter, prompts, group_size, sampling, *, problems=None, images=None, seed=None) -> Rollout:
        if self.shared_prompt:  # each prompt prefilled once, its G rows decoded from the shared cache
            return generate_shared(model, adapter, prompts, group_size, sampling)
        rollout = generate(model, adapter, adapter.repeat_prompts(prompts, group_size), sampling)
        # The repeated rows were generate's input only; the rollout keeps each prompt once.
        return dataclasses.replace(rollout, prompts=prompts, group_size=group_size)
