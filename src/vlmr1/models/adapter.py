"""The adapter protocol: everything that differs between model families, and nothing else.

The trainer, data and rewards talk to a model only through an adapter; they never test a
model's name. ``models.loading`` picks the adapter from the checkpoint's ``config.json`` ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image


@dataclass
class PromptBatch:
    """Encoded prompts, left-padded so that completions can be appended on the right."""

    input_ids: torch.Tensor  # [N, Lp]
    attention_mask: torch.Tensor  # [N, Lp]
    mm_inputs: dict[str, torch.Tensor]  # model-specific: pixel tensors, grid sizes, token types
    input_sizes: list[list[tuple[int, int]]] = field(default_factory=list)  # per prompt, per image: (w, h) seen by the model

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "PromptBatch":
        mm = {k: v.to(device) for k, v in self.mm_inputs.items()}
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device), mm, self.input_sizes)


IMAGE_PLACEHOLDER = "<image>"


def user_content(problem: str, n_images: int) -> list[dict]:
    """HF chat ``content`` parts for a user turn: each image where ``problem`` has ``<image>``.

    A problem without placeholders gets its images first, then the text (VLM-R1's layout and
    Qwen's own examples). Text between placeholders is kept verbatim, spaces included, so
    "Before: <image> After: <image>" renders with the words around the right image.
    """
    parts = problem.split(IMAGE_PLACEHOLDER)
    n_placeholders = len(parts) - 1
    if n_placeholders == 0:
        return [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": problem}]
    if n_placeholders != n_images:
        raise ValueError(f"prompt has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders for {n_images} images: {problem[:80]!r}")
    content: list[dict] = []
    for k, text in enumerate(parts):
        if k:
            content.append({"type": "image"})
        if text.strip():
            content.append({"type": "text", "text": text})
    return content


class VLMAdapter(Protocol):
    model: torch.nn.Module
    processor: object
    tokenizer: object
    """The processor's tokenizer: rollouts decode completions with it."""
    vision_prefix: str
    """Parameter-name prefix (in the HF model) of the vision tower. The projector may lie inside
    it (Qwen: ``model.visual.merger.``) or beside it (InternVL: ``model.multi_modal_projector.``)."""
    projector_prefix: str | tuple[str, ...]
    """Parameter-name prefix(es) of the vision-to-language projector(s) (frozen separately); a tuple
    where there are several, e.g. Qwen3-VL's final merger and its DeepStack mergers."""
    box_frame: str
    """"input" (boxes in pixels of the resized model input) or "norm1000" (0-1000 of the image)."""
    reward_overrides: dict[str, str]
    """Reward name -> registered variant this model family needs instead (e.g. another box
    convention); used when ``reward.model_rewards`` is on. Empty for families that need none."""

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, **image_kwargs) -> "VLMAdapter":
        """Model and processor from a local HF folder; ``image_kwargs`` (None = keep the saved value)
        set the image size in the family's own terms, and options of other families raise ValueError."""

    @property
    def eos_token_ids(self) -> list[int]: ...

    @property
    def pad_token_id(self) -> int: ...

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Tokens a completion must never contain (image placeholders): sampling and log-probs drop them."""

    def prompt_text(self, problem: str, n_images: int) -> str:
        """The chat-templated prompt with ``n_images`` image placeholders unexpanded: what
        ``encode_prompts`` tokenises, and what an engine with its own processor (vLLM) expands."""

    def prompt_lengths(self, problems: list[str], image_sizes: list[list[tuple[int, int]]]) -> list[int]:
        """Tokens ``encode_prompts`` would give each prompt (image tokens included) for images of
        these (w, h) sizes, without the images: data loading holds every row to the context."""

    def encode_prompts(self, problems: list[str], images: list[list[Image.Image]]) -> PromptBatch:
        """Chat-format each problem (``prompt_text``) with its images in place and encode a left-padded batch."""

    def repeat_prompts(self, prompts: PromptBatch, times: int) -> PromptBatch:
        """Each prompt ``times`` times consecutively, with its images (for G completions)."""

    def slice_prompts(self, prompts: PromptBatch, start: int, stop: int) -> PromptBatch:
        """Rows ``start:stop`` of a prompt batch, with exactly their images (for micro-batches)."""

    def sequence_inputs(self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> dict:
        """Model forward kwargs for prompt + completion ([N, Lp + Lc]); completion_ids right-padded."""

    def encode_completions(self, texts: list[str]) -> torch.Tensor:
        """Token ids [N, Lc] of target answers, each ending with EOS, right-padded (for SFT)."""

    def save(self, out_dir: str | Path) -> None:
        """Write model and processor in HF format (safetensors)."""


def encoded_prompt_lengths(adapter, problems: list[str], image_sizes: list[list[tuple[int, int]]]) -> list[int]:
    """``prompt_lengths`` for any family: encode each prompt with blank images of the given sizes
    (exact, since the token count depends on an image's size only; costs the image preprocessing)."""
    out = []
    for problem, sizes in zip(problems, image_sizes):
        enc = adapter.encode_prompts([problem], [[Image.new("RGB", size) for size in sizes]])
        out.append(int(enc.attention_mask.sum()))
    return out


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the generation config's EOS ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return sorted({i for i in ids if i is not None} | {tokenizer.eos_token_id})


def encode_answers(tokenizer, texts: list[str], pad_id: int) -> torch.Tensor:
    """Token ids [N, Lc] of target answers, each ending with EOS, right-padded (for SFT)."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


NORM_1000 = (1000, 1000)
"""The frame of models that answer boxes normalised to 0-1000 of the image (Qwen2-VL, Qwen3-VL, InternVL)."""


def box_frames(adapter, prompts: PromptBatch) -> list[tuple[int, int] | None]:
    """Per prompt, the (w, h) frame of the model's box answers, None for a prompt without images.

    Rewards and evaluation map a predicted box from this frame to the original image (the
    ``input_size`` column). Qwen2.5-VL answers in pixels of its resized input; the 0-1000
    families in a fixed 1000 x 1000 frame, whatever the image's size.
    """
    if adapter.box_frame == "input":
        return [sizes[0] if sizes else None for sizes in prompts.input_sizes]
    return [NORM_1000 if sizes else None for sizes in prompts.input_sizes]
