"""vLLM's side of a rollout as plain data: the requests sent (prompt text, images, sampling
parameters, seeds) and the outputs turned back into a ``Rollout`` (ids, mask, sampling log-probs),
with the checks that the sampled prompt is the scored one. No vLLM import: these are what
``VLLMEngine`` (vllm_engine.py) sends and receives, and what the stand-in tests check.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..models.adapter import PromptBatch
from .rollout import Rollout, Sampling, finish_rollout


def vllm_requests(adapter, problems: list[str], images: list[list[Image.Image]]) -> list[dict]:
    """One vLLM prompt dict per problem: the templated text and its PIL images (none: text only).

    The text is the adapter's ``prompt_text``, the very string its ``encode_prompts`` tokenises;
    vLLM expands each image placeholder (``<|image_pad|>``) to the image's token count with the
    model's own HF processor, as the adapter's processor does.

    A single image is passed bare and several as a list, the form vLLM's multimodal examples
    and TRL use."""
    requests = []
    for problem, ims in zip(problems, images, strict=True):
        request: dict = {"prompt": adapter.prompt_text(problem, len(ims))}
        if ims:
            request["multi_modal_data"] = {"image": ims[0] if len(ims) == 1 else list(ims)}
        requests.append(request)
    return requests


def allowed_token_ids(adapter) -> list[int]:
    """Every token but the suppressed ones (image placeholders): vLLM's hard mask, as HF's
    ``suppress_tokens``. Bounded by the tokenizer's length, the bound some vLLM versions check;
    the embedding's padding rows beyond it are never valid output anyway."""
    vocab = min(len(adapter.tokenizer), adapter.model.config.get_text_config().vocab_size)
    banned = set(adapter.suppressed_token_ids)
    return [i for i in range(vocab) if i not in banned]


def sampling_kwargs(s: Sampling, group_size: int, eos_ids: list[int], allowed: list[int], seed: int) -> dict:
    """``vllm.SamplingParams`` arguments for one prompt: G samples, every option stated.

    top_k 0 means "off" in the vLLM releases this engine targets (>= 0.22; older ones wanted -1),
    as in ``Sampling``. vLLM gives child j of an n-sample
    request the seed ``seed + j``, so prompt seeds are spaced G apart (``request_seeds``). The
    engine decodes the texts with the adapter's tokenizer, as the HF path does, so vLLM's
    detokeniser is off."""
    return dict(
        n=group_size,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=0.0,
        repetition_penalty=s.repetition_penalty,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=s.max_new_tokens,
        min_tokens=0,
        seed=seed,
        stop_token_ids=list(eos_ids),
        allowed_token_ids=allowed,
        detokenize=False,
        logprobs=0,  # the sampled token's log-prob, after temperature and the mask (logprobs_mode below)
    )


def request_seeds(step_seed: int, n_prompts: int, group_size: int) -> list[int]:
    """Seed of each prompt's request; with vLLM's ``+ j`` per child every completion of the
    step gets its own seed, and steps do not overlap (the step seed is scaled by P*G)."""
    base = step_seed * n_prompts * group_size
    return [base + i * group_size for i in range(n_prompts)]


def check_prompt_ids(prompts: PromptBatch, outputs) -> None:
    """vLLM must have sampled from the very prompt the trainer scores: same token ids."""
    for i, out in enumerate(outputs):
        got = out.prompt_token_ids
        if got is None:
            continue
        expected = prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist()
        if list(got) != expected:
            first = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise RuntimeError(
                f"vLLM encoded prompt {i} as {len(got)} tokens, the adapter as {len(expected)} (first difference at "
                f"token {first}): its completions would be scored under another prompt. Image token counts differ "
                "when vLLM's image processor resizes differently (model.min_pixels / model.max_pixels are passed "
                "to it as mm_processor_kwargs); use rollout.engine=hf."
            )


def rollout_from_outputs(adapter, prompts: PromptBatch, outputs, sampling: Sampling, group_size: int) -> Rollout:
    """vLLM's P ``RequestOutput`` (in prompt order) -> a Rollout whose row i*G+j is prompt i's j-th.

    Completions are right-padded and masked up to and including the first EOS by the same code
    as the HF path (``rollout.finish_rollout``). vLLM keeps the stop token in ``token_ids`` (its
    scheduler appends a token before checking it); a "stop" without one is refused, since a
    missing EOS would silently turn a finished completion into a truncated one."""
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
    eos = set(adapter.eos_token_ids)
    rows: list[list[int]] = []
    logps: list[list[float]] = []
    for i, out in enumerate(outputs):
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) != group_size:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for prompt {i}, expected {group_size}")
        for c in completions:
            ids = list(c.token_ids)
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM completion {c.index} of prompt {i} ended with {c.finish_reason!r}")
            if c.finish_reason == "stop" and (not ids or ids[-1] not in eos):
                raise RuntimeError(f"vLLM completion {c.index} of prompt {i} stopped without an EOS token in its ids")
            rows.append(ids)
            logps.append(sampled_logprobs(c))
    width = max(len(r) for r in rows)
    pad = adapter.pad_token_id
    dev = prompts.input_ids.device
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=dev)
    rollout = finish_rollout(adapter, prompts, ids, sampling, group_size)  # [P*G, Lc]
    if all(lp is not None for lp in logps):
        lp = torch.tensor([r + [0.0] * (width - len(r)) for r in logps], dtype=torch.float32, device=dev)
        rollout.sampler_logp = lp * rollout.completion_mask  # [P*G, Lc], 0 past the completion
    return rollout


def sampled_logprobs(completion) -> list[float] | None:
    """vLLM's log-prob of each sampled token (``logprobs=0`` returns just that one per position),
    or None when the completion carries none."""
    if completion.logprobs is None:
        return None
    return [float(pos[t].logprob) for pos, t in zip(completion.logprobs, completion.token_ids)]
