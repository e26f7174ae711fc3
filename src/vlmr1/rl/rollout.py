"""Rollouts with HF ``generate``: every sampling option is passed through explicitly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..models.adapter import PromptBatch
from .algos import completion_mask
from .shared_prompt import cache_arg, prefill


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How completions are drawn. Every log-prob pass over a rollout reads its temperature from
    the ``Sampling`` the rollout records, so ratios and KL refer to the distribution sampled from."""

    max_new_tokens: int
    do_sample: bool = True  # False: greedy (evaluation)
    temperature: float = 1.0
    top_p: float = 1.0  # 1.0 = off
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off

    @classmethod
    def from_config(cls, r) -> "Sampling":
        """The rollout sampling of a ``RolloutConfig``."""
        return cls(
            max_new_tokens=r.max_completion_length,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            repetition_penalty=r.repetition_penalty,
        )


@dataclass
class Rollout:
    """``group_size`` completions for each of P prompts: row i*G+j is prompt i's j-th completion.

    ``prompts`` holds each prompt once, with its images once; ``prompt_rows`` gives the repeated
    rows a forward over some completions needs, built only for those rows. (Carrying the N = P*G
    repeated rows would keep G copies of every image's pixels for the whole step.)
    """

    prompts: PromptBatch  # P = N / group_size rows
    completion_ids: torch.Tensor  # [N, Lc] right-padded
    completion_mask: torch.Tensor  # [N, Lc] 1 up to and including the first EOS
    truncated: torch.Tensor  # [N] bool: no EOS sampled, the completion was cut at max_new_tokens
    texts: list[str]  # [N] decoded completions
    sampling: Sampling  # what the completions were drawn with
    group_size: int = 1  # G
    sampler_logp: torch.Tensor | None = None  # [N, Lc] the sampler's own log-prob of each token (vLLM); None: the sampler is the policy


def prompt_rows(adapter, rollout: Rollout, start: int, stop: int) -> PromptBatch:
    """The prompt of each completion row ``start:stop`` (repeated per group, with its images)."""
    G = rollout.group_size
    first, last = start // G, (stop - 1) // G + 1
    rows = adapter.repeat_prompts(adapter.slice_prompts(rollout.prompts, first, last), G)
    return adapter.slice_prompts(rows, start - first * G, stop - first * G)


def generation_config(s: Sampling, eos_ids: list[int], pad_id: int, suppress: list[int] | None = None) -> GenerationConfig:
    """A generation config that states every sampling option explicitly.

    transformers fills any option left as None from the checkpoint's generation_config.json
    (Qwen2.5-VL ships top_k=1, top_p=0.001, temperature=0.1), which would silently turn
    "no top-k" into greedy decoding. So "off" is spelled as the neutral value, never None.
    """
    # Greedy decoding reads no sampling option; they are left at GenerationConfig's own defaults
    # (top_k 50, min_p None), which transformers neither fills from the checkpoint nor warns
    # about ("generation flags are not valid") on every call.
    sample = s.do_sample
    return GenerationConfig(
        max_new_tokens=s.max_new_tokens,
        min_new_tokens=0,
        do_sample=sample,
        temperature=s.temperature if sample else 1.0,
        top_p=s.top_p if sample else 1.0,
        top_k=s.top_k if sample else 50,  # sampling: 0 disables top-k in transformers
        min_p=0.0 if sample else None,
        typical_p=1.0,
        repetition_penalty=s.repetition_penalty,
        no_repeat_ngram_size=0,
        num_beams=1,
        num_return_sequences=1,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        # Image placeholder tokens in a completion would break the next forward (the model
        # counts them against the image features), so the sampler may never emit them.
        suppress_tokens=list(suppress) if suppress else None,
    )


@torch.no_grad()
def generate(model, adapter, prompts: PromptBatch, sampling: Sampling) -> Rollout:
    """Sample one completion per prompt row (repeat rows G times beforehand for groups)."""
    config = generation_config(sampling, adapter.eos_token_ids, adapter.pad_token_id, adapter.suppressed_token_ids)
    inputs = {"input_ids": prompts.input_ids, "attention_mask": prompts.attention_mask, **prompts.mm_inputs}
    was_training = model.training
    model.eval()
    out = model.generate(**inputs, generation_config=config)
    model.train(was_training)
    return finish_rollout(adapter, prompts, out[:, prompts.input_ids.shape[1] :], sampling)


def finish_rollout(adapter, prompts: PromptBatch, completion_ids: torch.Tensor, sampling: Sampling, group_size: int = 1) -> Rollout:
    """Mask and decode sampled completions [N, Lc]; ``prompts`` are the N / group_size prompts."""
    if completion_ids.shape[1] == 0:  # generate always emits >= 1 token
        raise RuntimeError("generate returned no new tokens")
    mask = completion_mask(completion_ids, adapter.eos_token_ids)
    truncated = ~torch.isin(completion_ids, torch.tensor(adapter.eos_token_ids, device=completion_ids.device)).any(1)
    # Everything after the first EOS becomes padding, so later forwards see clean rows.
    completion_ids = completion_ids.masked_fill(mask == 0, adapter.pad_token_id)
    texts = adapter.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(prompts, completion_ids, mask, truncated, texts, sampling, group_size)


def _logits_processors(s: Sampling, suppress: list[int]) -> LogitsProcessorList:
    """The processors ``generate`` builds from ``generation_config(s)``, in its order."""
    procs = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if suppress:
        procs.append(SuppressTokensLogitsProcessor(suppress))
    if s.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(s.temperature))
    if s.top_k:
        procs.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        procs.append(TopPLogitsWarper(s.top_p))
    return procs


@torch.no_grad()
def generate_shared(model, adapter, prompts: PromptBatch, group_size: int, sampling: Sampling) -> Rollout:
    """``group_size`` completions for each of the P UNREPEATED ``prompts``, prefilling each once.

    ``generate`` on G-times repeated prompts runs every prompt (vision tower included) G times
    in its prefill; here the P prompts run once and the G rows decode from the expanded cache.
    Same processors, same random draws: with the same seed it samples the same tokens as
    ``generate`` on ``adapter.repeat_prompts(prompts, G)`` (tested). Sampling only.
    """
    if not sampling.do_sample:
        raise ValueError("generate_shared samples; use generate for greedy decoding")
    was_training = model.training
    model.eval()
    pre = prefill(model, adapter, prompts, group_size)
    procs = _logits_processors(sampling, adapter.suppressed_token_ids)
    # [N, Lp]: the repetition penalty sees the prompt too; the images are in the cache already.
    ids, mask = prompts.input_ids.repeat_interleave(group_size, dim=0), pre.attention_mask
    eos = torch.tensor(adapter.eos_token_ids, device=ids.device)
    running = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    logits = pre.first_logits[:, -1].float()
    for t in range(sampling.max_new_tokens):
        scores = procs(ids, logits)
        nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)  # [N]
        nxt = torch.where(running, nxt, torch.full_like(nxt, adapter.pad_token_id))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        running &= ~torch.isin(nxt, eos)
        if not running.any() or t == sampling.max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = (pre.next_position + t)[:, None]
        if pre.mrope:
            positions = positions.unsqueeze(0).expand(3, -1, -1)  # text: time = height = width
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg(): pre.cache})
        logits = out.logits[:, -1].float()
    model.train(was_training)
    return finish_rollout(adapter, prompts, ids[:, prompts.input_ids.shape[1] :], sampling, group_size)

