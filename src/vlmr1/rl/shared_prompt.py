"""Log-probs of G completions per prompt with the prompt (and its images) encoded once.

GRPO scores G completions of the same prompt. The plain path (``completion_logprobs`` on
``adapter.repeat_prompts(prompts, G)``) runs the vision tower and every prompt token G times.
Here the P unrepeated prompts go through the model once with ``use_cache=True``; the resulting
KV cache is expanded along the batch (an index per row, differentiable: the gradients of the G
completions are summed into the one prompt computation), and the completions run on top of it.

Positions are passed explicitly to both forwards, never left to the model: Qwen's multimodal
rotary positions ("mrope", 3 rows: time, height, width) come from the model's own
``get_rope_index`` on the prompts, and completion token k of a prompt with n real tokens sits at
``n + rope_delta + k`` (all 3 rows equal), the rule transformers itself uses when decoding from a
cache. Nothing reads or writes the ``rope_deltas`` that Qwen models keep between calls.

Exactness: per-token log-probs equal the plain path's up to float rounding (tests: <= 1e-5 in
fp32). One deliberate difference: for a batch with no image at all, Qwen's plain forward numbers
positions 0..L-1 through the left padding, while here (and in ``generate``) padding is skipped;
rotary attention only sees position differences, so this is a constant shift per row and the
results agree to rounding.

``prefill`` is the first half on its own (first-token logits, expanded cache, next positions),
so a sampler can decode G completions per prompt from one prompt forward.

Limits:
- Models whose forward takes ``past_key_values``/``position_ids`` with HF's ``DynamicCache``:
  the Qwen-VL families (mrope) and, through the 1-D fallback, decoders with plain rotary
  positions. Qwen3-VL's DeepStack features enter in the prompt forward only, which is where
  its image tokens are.
- Gradient checkpointing: transformers drops the cache in checkpointed layers while training,
  which would silently give completions without their prompt; that is detected and raises.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.adapter import PromptBatch
from .logprobs import selective_log_softmax


@dataclass
class Prefill:
    """The prompts' forward, expanded to one row per completion."""

    first_logits: torch.Tensor  # [N, 1, V] logits at each prompt's last position (predict completion token 0)
    cache: object  # transformers Cache with N rows of Lp prompt positions
    attention_mask: torch.Tensor  # [N, Lp] prompt padding
    next_position: torch.Tensor  # [N] rotary position of completion token 0
    mrope: bool  # positions are Qwen's 3-row mrope (else 1-D)


@functools.cache
def cache_arg() -> str:
    """The forward keyword for a KV cache: transformers 5.24 renamed ``past_key_values`` to ``cache``.

    The old name still works there with a deprecation warning and is announced for removal, while
    older 5.x releases know only the old name; the signature says which this one takes.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    return "cache" if "cache" in inspect.signature(Qwen2_5_VLForConditionalGeneration.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, under either name (see ``cache_arg``)."""
    return getattr(out, cache_arg())


def _rope_index(model):
    """The model's ``get_rope_index`` (Qwen-VL families), searched through DDP/PEFT wrappers."""
    for module in model.modules():
        if hasattr(type(module), "get_rope_index"):
            return module.get_rope_index
    return None


def prompt_positions(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Rotary positions of the prompt tokens and of the first completion token.

    Returns positions [3, P, Lp] (mrope) or [P, Lp], next_position [P], and whether mrope.
    """
    mask = inputs["attention_mask"]
    rope = _rope_index(model)
    if rope is not None and "mm_token_type_ids" in inputs:
        grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
        positions, delta = rope(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], attention_mask=mask, **grids
        )  # [3, P, Lp], [P, 1]
        # delta = (largest prompt position + 1) - real prompt tokens: text continues after the images' extent.
        return positions, mask.sum(1) + delta.view(-1).to(mask.device), True
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # padding skipped, as generate numbers them
    return positions, mask.sum(1), False


def prefill(model, adapter, prompts: PromptBatch, group_size: int | Sequence[int]) -> Prefill:
    """Run the P prompts once (vision tower included) and expand the cache to N rows.

    ``group_size``: G completions per prompt, or one count per prompt (rows of prompt i follow
    those of prompt i-1), so micro-batches that cut through groups work too.
    """
    P = len(prompts)
    counts = [group_size] * P if isinstance(group_size, int) else list(group_size)
    if len(counts) != P or min(counts, default=1) < 1:
        raise ValueError(f"group sizes {counts} do not give every one of the {P} prompts at least one row")
    empty = prompts.input_ids.new_zeros(P, 0)
    inputs = adapter.sequence_inputs(prompts, empty, empty)  # the prompt alone: [P, Lp] + images
    positions, next_position, mrope = prompt_positions(model, inputs)
    inputs["position_ids"] = positions
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    length = prompts.input_ids.shape[1]
    if cache is None or cache.get_seq_length() != length:
        raise RuntimeError(
            f"the prompt forward cached {0 if cache is None else cache.get_seq_length()} of {length} positions: "
            "transformers drops the KV cache under gradient checkpointing in training mode; "
            "turn gradient checkpointing off or use the repeated-prompt path"
        )
    device = prompts.input_ids.device
    rows = torch.repeat_interleave(torch.arange(P, device=device), torch.tensor(counts, device=device))  # [N]
    # Indexing (not expand) so that each row's keys can be extended independently; its backward
    # sums the N rows' gradients into the P prompt rows.
    cache.batch_select_indices(rows)
    return Prefill(out.logits[rows], cache, prompts.attention_mask[rows], next_position[rows], mrope)


def shared_prompt_logprobs(
    model,
    adapter,
    prompts: PromptBatch,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int | Sequence[int],
    temperature: float = 1.0,
    suppress: list[int] | None = None,
    with_entropy: bool = False,
):
    """Log-probs [N, Lc] of ``completion_ids`` [N, Lc] (row i*G+j: prompt i's j-th completion),
    and with ``with_entropy`` their entropies [N, Lc].

    ``prompts`` holds the P unrepeated prompts; ``group_size`` as in ``prefill``. Same numerics
    as ``completion_logprobs`` on the repeated prompts: logits / temperature, ``suppress``
    token ids removed, log-softmax in fp32 chunks.
    """
    pre = prefill(model, adapter, prompts, group_size)
    n, length = completion_ids.shape
    if pre.first_logits.shape[0] != n:
        raise ValueError(f"{n} completion rows for {pre.first_logits.shape[0]} prompt rows (P x group size)")
    logits = pre.first_logits  # [N, 1, V]: predicts completion token 0
    if length > 1:
        # Tokens 0..Lc-2 predict tokens 1..Lc-1; the last token predicts nothing and is not run.
        ids, mask = completion_ids[:, :-1], completion_mask[:, :-1].to(pre.attention_mask)
        # Padding inside a completion does not advance positions (as the model's own numbering).
        offsets = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, Lc-1]
        positions = pre.next_position[:, None] + offsets
        if pre.mrope:
            positions = positions.unsqueeze(0).expand(3, -1, -1)  # text: time = height = width
        out = model(
            input_ids=ids,
            attention_mask=torch.cat([pre.attention_mask, mask], dim=1),  # [N, Lp + Lc - 1]
            position_ids=positions,
            use_cache=True,
            **{cache_arg(): pre.cache},
        )
        logits = torch.cat([logits, out.logits], dim=1)  # [N, Lc, V]
    if temperature != 1.0:
        logits = logits / temperature
    ids = torch.tensor(suppress, device=logits.device) if suppress else None
    return selective_log_softmax(logits, completion_ids, suppress=ids, with_entropy=with_entropy)
